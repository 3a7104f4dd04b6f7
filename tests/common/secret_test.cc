#include "tandem/common/secret.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace tandem {
namespace {

TEST(SecretTest, EqualsComparesWholeSecrets) {
  EXPECT_TRUE(SecretEquals("", ""));
  EXPECT_TRUE(SecretEquals("abc", "abc"));
  EXPECT_FALSE(SecretEquals("abc", "abd"));
  EXPECT_FALSE(SecretEquals("abc", "abcd"));  // a prefix is not the secret
  EXPECT_FALSE(SecretEquals("abcd", "abc"));
  EXPECT_FALSE(SecretEquals("", "a"));
  EXPECT_FALSE(SecretEquals(std::string("a\0b", 3), std::string("a\0c", 3)));
}

TEST(SecretTest, ClusterKeyFromFileEnvironmentOrNone) {
  unsetenv(kClusterKeyEnv);
  auto none = LoadClusterKey("");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());

  setenv(kClusterKeyEnv, "  env-key-0123456789abcdef\n", 1);
  auto env = LoadClusterKey("");
  ASSERT_TRUE(env.ok()) << env.status().ToString();
  EXPECT_EQ(*env, "env-key-0123456789abcdef");

  const std::string file = ::testing::TempDir() + "/cluster.key." + std::to_string(getpid());
  std::ofstream(file) << "file-key-0123456789abcdef\n";
  auto from_file = LoadClusterKey(file);  // the file wins over the variable
  ASSERT_TRUE(from_file.ok()) << from_file.status().ToString();
  EXPECT_EQ(*from_file, "file-key-0123456789abcdef");

  std::ofstream(file) << "short\n";
  auto short_key = LoadClusterKey(file);
  EXPECT_EQ(short_key.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(short_key.status().message().find(file), std::string::npos);
  std::remove(file.c_str());
  auto missing = LoadClusterKey(file);
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);

  setenv(kClusterKeyEnv, "short", 1);
  auto short_env = LoadClusterKey("");
  EXPECT_EQ(short_env.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(short_env.status().message().find(kClusterKeyEnv), std::string::npos);
  unsetenv(kClusterKeyEnv);
}

TEST(SecretTest, NewClusterKeysAreLongAndDistinct) {
  auto a = NewClusterKey();
  auto b = NewClusterKey();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->size(), 64u);
  EXPECT_GE(a->size(), kMinClusterKeyBytes);
  EXPECT_NE(*a, *b);
}

}  // namespace
}  // namespace tandem

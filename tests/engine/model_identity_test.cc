// ModelHash: the checkpoint identity in the KV layout fingerprint covers the config, the weight
// headers and the first bytes of every tensor, and not where the files lie.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tandem/engine/engine.h"
#include "tandem/engine/model_identity.h"
#include "test_model.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::TinyModelSpec;
using testing::WriteTinyModel;

uint64_t HashOf(const fs::path& dir) {
  auto h = ModelHash(dir);
  EXPECT_TRUE(h.ok()) << h.status().ToString();
  return h.ok() ? *h : 0;
}

// Adds 1 to the byte `at` bytes into `tensor`'s data in the safetensors file `file`.
void BumpTensorByte(const fs::path& file, const std::string& tensor, uint64_t at) {
  std::fstream f(file, std::ios::binary | std::ios::in | std::ios::out);
  ASSERT_TRUE(f.good()) << file;
  uint64_t header_len = 0;
  f.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, '\0');
  f.read(header.data(), static_cast<std::streamsize>(header_len));
  const auto offsets =
      nlohmann::json::parse(header).at(tensor).at("data_offsets").get<std::vector<uint64_t>>();
  ASSERT_LT(offsets[0] + at, offsets[1]) << tensor << " is shorter than " << at << " bytes";
  const auto pos = static_cast<std::streamoff>(8 + header_len + offsets[0] + at);
  char c = 0;
  f.seekg(pos);
  f.read(&c, 1);
  c = static_cast<char>(c + 1);
  f.seekp(pos);
  f.write(&c, 1);
  ASSERT_TRUE(f.good());
}

class ModelIdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = TempDir("model_identity");
    WriteTinyModel(root_ / "a", TinyModelSpec{});
    fs::copy(root_ / "a", root_ / "b", fs::copy_options::recursive);
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path root_;
};

TEST_F(ModelIdentityTest, IdenticalCopiesInTwoFoldersHashEqual) {
  EXPECT_EQ(HashOf(root_ / "a"), HashOf(root_ / "b"));
}

// Two fine-tunes of one base: same config, names, dtypes and shapes; other weights.
TEST_F(ModelIdentityTest, OneTensorsFirstBytesChangeTheHash) {
  BumpTensorByte(root_ / "b" / "model.safetensors", "model.layers.1.mlp.down_proj.weight", 0);
  EXPECT_NE(HashOf(root_ / "a"), HashOf(root_ / "b"));
}

TEST_F(ModelIdentityTest, TheConfigChangesTheHash) {
  std::ofstream(root_ / "b" / "config.json", std::ios::app) << "\n";
  EXPECT_NE(HashOf(root_ / "a"), HashOf(root_ / "b"));
}

// The documented limit: only the first kModelIdentitySampleBytes of a tensor are read.
TEST_F(ModelIdentityTest, BytesPastTheSampleAreNotRead) {
  BumpTensorByte(root_ / "b" / "model.safetensors", "model.embed_tokens.weight",
                 kModelIdentitySampleBytes + 100);
  EXPECT_EQ(HashOf(root_ / "a"), HashOf(root_ / "b"));
}

TEST_F(ModelIdentityTest, ShardedCheckpointsCoverEveryShard) {
  for (const char* d : {"s1", "s2"}) {
    const fs::path dir = root_ / d;
    fs::create_directories(dir);
    fs::copy_file(root_ / "a" / "config.json", dir / "config.json");
    testing::WriteSafetensors(dir / "model-00001-of-00002.safetensors",
                              {{"x", testing::F32Tensor({4}, {1, 2, 3, 4})}});
    testing::WriteSafetensors(dir / "model-00002-of-00002.safetensors",
                              {{"y", testing::F32Tensor({2}, {5, 6})}});
    std::ofstream(dir / "model.safetensors.index.json")
        << R"({"weight_map": {"x": "model-00001-of-00002.safetensors",
                              "y": "model-00002-of-00002.safetensors"}})";
  }
  EXPECT_EQ(HashOf(root_ / "s1"), HashOf(root_ / "s2"));
  BumpTensorByte(root_ / "s2" / "model-00002-of-00002.safetensors", "y", 4);
  EXPECT_NE(HashOf(root_ / "s1"), HashOf(root_ / "s2"));
}

TEST_F(ModelIdentityTest, MissingShardIsNotFound) {
  fs::remove(root_ / "b" / "model.safetensors");
  auto h = ModelHash(root_ / "b");
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kNotFound);
  EXPECT_NE(h.status().message().find("model.safetensors"), std::string::npos);
}

// The engine's model_hash, carried in the KV layout fingerprint, is this hash.
TEST_F(ModelIdentityTest, EngineModelHashIsModelHash) {
  BumpTensorByte(root_ / "b" / "model.safetensors", "model.norm.weight", 1);
  EngineOptions eo;
  eo.kv_cache_bytes = int64_t{1} << 20;
  eo.num_threads = 1;
  auto a = Engine::Load(root_ / "a", eo);
  auto b = Engine::Load(root_ / "b", eo);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ((*a)->model_hash(), HashOf(root_ / "a"));
  EXPECT_NE((*a)->model_hash(), (*b)->model_hash());
}

}  // namespace
}  // namespace tandem

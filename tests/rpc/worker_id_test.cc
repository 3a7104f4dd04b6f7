#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "tandem/rpc/worker_registration.h"

namespace tandem {
namespace {

// Two worker processes started without --worker-id must not share an id (the second would
// replace the first in the router's pool): the default names the role, host and process.
TEST(WorkerIdTest, DefaultIdsNameRoleHostAndProcess) {
  const std::string id = DefaultWorkerId("decode");
  EXPECT_EQ(id.rfind("decode-", 0), 0u) << id;
  const std::string pid = "-" + std::to_string(getpid());
  EXPECT_EQ(id.substr(id.size() - pid.size()), pid) << id;
  EXPECT_GT(id.size(), std::string("decode-").size() + pid.size()) << id;  // a host name
}

}  // namespace
}  // namespace tandem

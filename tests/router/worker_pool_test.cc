// WorkerPool's record of what prefill workers can do: a router lets decode workers leave cached
// blocks out of a transfer (Reserve names prompt_token_ids) only while every prefill worker
// registered as honouring TransferTicket.first_block; static workers are assumed to.
#include <gtest/gtest.h>

#include "tandem/router/worker_pool.h"

namespace tandem {
namespace {

v1::RegisterRequest Prefill(const std::string& id, int port, bool first_block) {
  v1::RegisterRequest r;
  r.set_worker_id(id);
  r.set_role(v1::WORKER_ROLE_PREFILL);
  r.set_address("127.0.0.1:" + std::to_string(port));
  r.set_model("m");
  r.mutable_layout()->set_page_size(16);
  r.set_sends_from_first_block(first_block);
  return r;
}

TEST(WorkerPoolTest, PartialSendsOnlyWhileEveryPrefillWorkerHonoursFirstBlock) {
  WorkerPoolOptions o;
  o.prefill_addresses = {"127.0.0.1:1"};  // static: assumed to
  WorkerPool pool(o);
  EXPECT_TRUE(pool.AllPrefillSendFromFirstBlock());
  ASSERT_TRUE(pool.Register(Prefill("new", 2, true)).ok());
  EXPECT_TRUE(pool.AllPrefillSendFromFirstBlock());
  ASSERT_TRUE(pool.Register(Prefill("old", 3, false)).ok());  // an earlier release
  EXPECT_FALSE(pool.AllPrefillSendFromFirstBlock());
  ASSERT_TRUE(pool.Register(Prefill("old", 3, true)).ok());  // upgraded, registered again
  EXPECT_TRUE(pool.AllPrefillSendFromFirstBlock());
}

}  // namespace
}  // namespace tandem

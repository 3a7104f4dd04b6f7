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

v1::RegisterRequest Decode(const std::string& id, int port) {
  v1::RegisterRequest r = Prefill(id, port, true);
  r.set_role(v1::WORKER_ROLE_DECODE);
  return r;
}

// A preferred decode worker (the one holding the prompt's prefix) is taken while it is in
// rotation, not excluded, and at most kAffinitySlack requests busier than the least busy one.
TEST(WorkerPoolTest, PickDecodeTakesThePreferredWorkerWithinTheLoadSlack) {
  WorkerPool pool(WorkerPoolOptions{});
  ASSERT_TRUE(pool.Register(Decode("d1", 11)).ok());
  ASSERT_TRUE(pool.Register(Decode("d2", 12)).ok());
  // Without a preference the pool alternates between idle workers; with one it does not.
  for (int i = 0; i < 4; ++i) {
    auto w = pool.PickDecode(64, {}, "d2");
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->id, "d2") << i;
  }
  auto d2 = pool.PickDecode(64, {}, "d2");
  d2->active.store(WorkerPool::kAffinitySlack);
  EXPECT_EQ(pool.PickDecode(64, {}, "d2")->id, "d2");  // at the slack: still preferred
  d2->active.store(WorkerPool::kAffinitySlack + 1);
  EXPECT_EQ(pool.PickDecode(64, {}, "d2")->id, "d1");  // beyond it: the load decides
  d2->active.store(0);
  EXPECT_EQ(pool.PickDecode(64, {d2.get()}, "d2")->id, "d1");     // excluded (refused it)
  EXPECT_EQ(pool.PickDecode(64, {}, "gone")->id.empty(), false);  // unknown id: ignored
}

// A prefill worker is picked by expected work: its queued uncached tokens plus what this prompt
// would compute there, so the worker likely holding the prompt's prefix wins unless it is busier
// by more than the cached part.
TEST(WorkerPoolTest, PickPrefillWeighsQueuedWorkAgainstTheCachedPrefix) {
  WorkerPool pool(WorkerPoolOptions{});
  ASSERT_TRUE(pool.Register(Prefill("p1", 21, true)).ok());
  ASSERT_TRUE(pool.Register(Prefill("p2", 22, true)).ok());
  const PrefillPreference holds{"p2", /*cached_tokens=*/480, /*tokens=*/512};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(pool.PickPrefill({}, holds)->id, "p2") << i;
  auto p2 = pool.PickPrefill({}, holds);
  p2->queued_work.store(481);  // busier by more than it saves: the other one computes it all
  EXPECT_EQ(pool.PickPrefill({}, holds)->id, "p1");
  p2->queued_work.store(100);
  EXPECT_EQ(pool.PickPrefill({p2.get()}, holds)->id, "p1");  // excluded (it failed the request)
  // No preference: the least queued work.
  p2->queued_work.store(0);
  auto p1 = pool.PickPrefill({p2.get()}, {});
  ASSERT_EQ(p1->id, "p1");
  p1->queued_work.store(10);
  EXPECT_EQ(pool.PickPrefill({}, {})->id, "p2");
}

}  // namespace
}  // namespace tandem

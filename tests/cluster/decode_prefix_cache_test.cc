// The decode worker's prefix cache through a real deployment (router + 1 prefill + 1 or 2 decode
// worker processes on loopback, the default model): in multi-turn chats, a turn's prompt pages
// that the decode worker kept from the previous turn are not shipped again (prefill's
// tandem_kv_pages_not_sent_total), sent + not sent is every page of the prompt, the tokens are
// the single-process engine's and the same with the decode cache off, and pages in use return
// to zero.
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cluster_requests.h"

namespace tandem {
namespace {

using testing::Cluster;
using testing::ClusterProcess;
using testing::ExpectPagesReturnToZero;
using testing::GenerateAll;
using testing::Metric;
using testing::Outcome;
using testing::Reference;

constexpr int kPage = 16;  // the workers' default page size

int64_t Pages(size_t tokens) { return static_cast<int64_t>((tokens + kPage - 1) / kPage); }

// What one run of the chats gave and shipped.
struct ChatRun {
  std::vector<std::vector<GenerationRequest>> turns;   // [turn][chat] the requests sent
  std::vector<std::vector<std::vector<int32_t>>> ids;  // [turn][chat] the tokens received
  std::vector<double> sent, not_sent;                  // [turn] prefill's page counters' deltas
};

// `chats` conversations at once, in lockstep for `turns` turns: a 70-token system prompt (shared
// by all chats, or one of its own per chat), then per turn a user message of its own and the
// model's answer (token ids, as `tandem bench --conversations` sends them).
ChatRun RunChats(Cluster& cluster, int chats, int turns, bool shared_system = true) {
  ClusterProcess& prefill = *cluster.workers("prefill")[0];
  std::mt19937 rng(1616);
  auto random_tokens = [&](int n) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(2 + static_cast<int32_t>(rng() % 20000));
    return t;
  };
  const std::vector<int32_t> system = random_tokens(70);
  std::vector<std::vector<int32_t>> history(chats, system);
  if (!shared_system) {
    for (auto& h : history) h = random_tokens(70);
  }
  ChatRun run;
  for (int turn = 0; turn < turns; ++turn) {
    std::vector<GenerationRequest> reqs;
    for (int c = 0; c < chats; ++c) {
      const std::vector<int32_t> user = random_tokens(11 + 3 * c + turn);
      history[c].insert(history[c].end(), user.begin(), user.end());
      GenerationRequest r;
      r.prompt = history[c];
      r.max_tokens = 7;
      r.ignore_eos = true;
      r.sampling.temperature = (c + turn) % 2 == 0 ? 0.0f : 0.8f;
      r.sampling.seed = 300 + static_cast<uint64_t>(10 * c + turn);
      reqs.push_back(r);
    }
    const double sent0 = Metric(prefill, "tandem_kv_pages_sent_total");
    const double not_sent0 = Metric(prefill, "tandem_kv_pages_not_sent_total");
    const std::vector<Outcome> outs = GenerateAll(cluster.router().grpc, reqs);
    run.sent.push_back(Metric(prefill, "tandem_kv_pages_sent_total") - sent0);
    run.not_sent.push_back(Metric(prefill, "tandem_kv_pages_not_sent_total") - not_sent0);
    run.ids.emplace_back();
    for (int c = 0; c < chats; ++c) {
      EXPECT_TRUE(outs[c].status.ok())
          << "turn " << turn << " chat " << c << ": " << outs[c].status.error_message();
      run.ids.back().push_back(outs[c].ids);
      history[c].insert(history[c].end(), outs[c].ids.begin(), outs[c].ids.end());
    }
    run.turns.push_back(std::move(reqs));
  }
  return run;
}

// The router's --kv-transport: "tcp" or "shm" (the prefill worker writes into the decode
// worker's pages; only the blocks from first_block on).
class ClusterDecodePrefixCacheTest : public ::testing::TestWithParam<const char*> {};

TEST_P(ClusterDecodePrefixCacheTest, LaterTurnsShipOnlyNewPagesWithTheTokensOfTheCacheOff) {
  constexpr int kChats = 3, kTurns = 3;
  const std::vector<std::string> router_flags = {"--kv-transport", GetParam()};
  ChatRun on;
  {
    Cluster cluster;  // decode workers' --prefix-cache defaults to true
    ASSERT_TRUE(cluster.Start(1, 1, router_flags));
    on = RunChats(cluster, kChats, kTurns);
    ClusterProcess& decode = *cluster.workers("decode")[0];
    double hit_pages = 0;
    for (int turn = 0; turn < kTurns; ++turn) {
      SCOPED_TRACE(turn);
      int64_t prompt_pages = 0, held = 0;
      for (int c = 0; c < kChats; ++c) {
        prompt_pages += Pages(on.turns[turn][c].prompt.size());
        // The decode worker holds the full pages of the chat's previous turn: its prompt and
        // the answer's tokens but the last (decoded on CPU: bit-identical K/V). The block of
        // the prompt's last token always travels.
        if (turn > 0) {
          const size_t computed =
              on.turns[turn - 1][c].prompt.size() + on.ids[turn - 1][c].size() - 1;
          held += std::min(computed / kPage, (on.turns[turn][c].prompt.size() - 1) / kPage);
        }
      }
      EXPECT_EQ(on.sent[turn] + on.not_sent[turn], prompt_pages);
      if (turn == 0) {
        // The chats share a 70-token system prompt: its 4 full pages may already be held by
        // the chat that reserved first, whatever the order.
        EXPECT_LE(on.not_sent[turn], 4.0 * (kChats - 1));
      } else {
        EXPECT_EQ(on.not_sent[turn], held) << "a later turn reuses its chat's earlier pages";
        EXPECT_GT(on.not_sent[turn], 0);
        EXPECT_LT(on.sent[turn], prompt_pages);
      }
      hit_pages += on.not_sent[turn];
    }
    EXPECT_EQ(Metric(decode, "tandem_prefix_cache_hit_tokens_total"), hit_pages * kPage);
    EXPECT_GT(Metric(decode, "tandem_kv_pages_cached"), 0);
    ExpectPagesReturnToZero(cluster.workers("prefill"));
    ExpectPagesReturnToZero(cluster.workers("decode"));
  }

  // The single-process engine, every prompt from scratch: the same tokens.
  for (int turn = 0; turn < kTurns; ++turn) {
    const auto want = Reference(on.turns[turn]);
    for (int c = 0; c < kChats; ++c) {
      EXPECT_EQ(on.ids[turn][c], want[c]) << "turn " << turn << " chat " << c;
    }
  }

  // The decode cache off: every page ships, the same prompts give the same tokens.
  Cluster off_cluster;
  ASSERT_TRUE(off_cluster.Start(1, 1, router_flags, {"--prefix-cache", "false"}));
  const ChatRun off = RunChats(off_cluster, kChats, kTurns);
  for (int turn = 0; turn < kTurns; ++turn) {
    SCOPED_TRACE(turn);
    EXPECT_EQ(off.not_sent[turn], 0);
    EXPECT_EQ(off.sent[turn], on.sent[turn] + on.not_sent[turn]);
    for (int c = 0; c < kChats; ++c) {
      EXPECT_EQ(off.turns[turn][c].prompt, on.turns[turn][c].prompt) << "chat " << c;
      EXPECT_EQ(off.ids[turn][c], on.ids[turn][c]) << "chat " << c;
    }
  }
  ExpectPagesReturnToZero(off_cluster.workers("decode"));
}

// Two decode workers: the router sends each chat's next turn back to the decode worker that
// finished its previous turn (PrefixAffinity), so every later turn finds all of its chat's
// earlier pages held there. Without the affinity the pool balances by load and a turn lands on
// the other worker about half the time, shipping everything again. Each chat has a system prompt
// of its own: with a shared one the other worker holds 4 of a chat's 5 pages too, and the pair
// choice may rightly take it when its measured link is faster by more than one page's transfer.
TEST(ClusterDecodeAffinityTest, EachChatsNextTurnGoesToTheWorkerHoldingItsPages) {
  constexpr int kChats = 3, kTurns = 3;
  Cluster cluster;
  ASSERT_TRUE(cluster.Start(1, 2, {"--kv-transport", "tcp"}));
  const ChatRun run = RunChats(cluster, kChats, kTurns, /*shared_system=*/false);
  for (int turn = 1; turn < kTurns; ++turn) {
    SCOPED_TRACE(turn);
    int64_t held = 0;
    for (int c = 0; c < kChats; ++c) {
      const size_t computed =
          run.turns[turn - 1][c].prompt.size() + run.ids[turn - 1][c].size() - 1;
      held += std::min(computed / kPage, (run.turns[turn][c].prompt.size() - 1) / kPage);
    }
    EXPECT_EQ(run.not_sent[turn], held) << "every chat's earlier pages were held where it went";
  }
  const auto want = Reference(run.turns[kTurns - 1]);
  for (int c = 0; c < kChats; ++c) EXPECT_EQ(run.ids[kTurns - 1][c], want[c]) << "chat " << c;
  ExpectPagesReturnToZero(cluster.workers("decode"));
}

INSTANTIATE_TEST_SUITE_P(Transports, ClusterDecodePrefixCacheTest, ::testing::Values("tcp", "shm"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace tandem

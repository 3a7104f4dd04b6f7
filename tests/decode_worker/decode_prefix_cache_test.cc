// The decode worker's prefix cache, in process: a Reserve that names its prompt's token ids takes
// the full blocks a finished request left cached (its prompt and, on CPU, its generated tokens;
// ticket.first_block), the sender ships only the rest, the tokens equal the single-process
// engine's, and every page comes back after finished, released and expired reservations (cached
// pages stay cached, idle and evictable).
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "decode_worker_fixture.h"

namespace tandem {
namespace {

class DecodePrefixCacheTest : public DecodeWorkerTest {
 protected:
  PrefixCache& cache() {
    PrefixCache* pc = server_->engine().prefix_cache();
    EXPECT_NE(pc, nullptr) << "the decode worker's prefix cache is on by default";
    return *pc;
  }

  // Reserve (with token ids) + Prefill + Decode of one request; its tokens, or empty on error.
  std::vector<int32_t> Serve(const std::string& id, const GenerationRequest& r,
                             int32_t* first_block = nullptr) {
    v1::TransferTicket ticket;
    grpc::Status rs = Reserve(id, r.prompt, r.max_tokens, &ticket);
    EXPECT_TRUE(rs.ok()) << rs.error_message();
    if (!rs.ok()) return {};
    EXPECT_EQ(ticket.block_ids_size(), server_->engine().kv_cache().BlocksFor(r.prompt.size()));
    EXPECT_LT(ticket.first_block(), ticket.block_ids_size()) << "one block always arrives";
    if (first_block) *first_block = ticket.first_block();
    auto [first, sent] = Prefill(ticket, r, *sender_);
    EXPECT_TRUE(sent.ok()) << sent.ToString();
    StreamResult out = Decode(ToDecodeRequest(id, r, first));
    EXPECT_TRUE(out.status.ok()) << out.status.error_message();
    return out.tokens;
  }

  static std::vector<int32_t> RandomTokens(std::mt19937& rng, int n) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(2 + static_cast<int32_t>(rng() % 298));
    return t;
  }

  static GenerationRequest Request(std::vector<int32_t> prompt, float temperature, uint64_t seed) {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.max_tokens = 9;
    r.ignore_eos = true;
    r.sampling.temperature = temperature;
    r.sampling.seed = seed;
    return r;
  }
};

TEST_F(DecodePrefixCacheTest, ASecondTurnReceivesOnlyItsNewBlocksAndGivesSingleProcessTokens) {
  std::mt19937 rng(161);
  // Turn 1: 40 tokens, two full pages of 16 and a partial one.
  const GenerationRequest t1 = Request(RandomTokens(rng, 40), 0.0f, 1);
  const auto want1 = Reference({t1});
  int32_t first_block = -1;
  const std::vector<int32_t> answer = Serve("turn1", t1, &first_block);
  EXPECT_EQ(first_block, 0) << "nothing cached yet";
  EXPECT_EQ(answer, want1[0]);
  ASSERT_TRUE(WaitPagesUsed(0));
  // 40 prompt tokens and 8 of the 9 generated ones have K/V (the last was sampled, never fed
  // back): three full blocks, cached (decode rows write the K/V a prefill would, on CPU).
  EXPECT_EQ(cache().stats().cached_blocks, 3);
  EXPECT_EQ(cache().stats().idle_blocks, 3);

  // Turn 2: turn 1's prompt and answer, then the next user message.
  std::vector<int32_t> p2 = t1.prompt;
  p2.insert(p2.end(), answer.begin(), answer.end());
  const std::vector<int32_t> user2 = RandomTokens(rng, 21);
  p2.insert(p2.end(), user2.begin(), user2.end());
  const GenerationRequest t2 = Request(p2, 0.8f, 2);
  const auto want2 = Reference({t2});
  EXPECT_EQ(Serve("turn2", t2, &first_block), want2[0]);
  EXPECT_EQ(first_block, 3) << "turn 1's three full blocks (prompt and answer) are not shipped";
  ASSERT_TRUE(WaitPagesUsed(0));
  const PrefixCacheStats st = cache().stats();
  EXPECT_EQ(st.hit_tokens, 48);
  EXPECT_EQ(st.lookup_tokens, static_cast<int64_t>(t1.prompt.size() + t2.prompt.size()));
  EXPECT_EQ(st.cached_blocks, static_cast<int32_t>((p2.size() + 8) / 16));
  EXPECT_EQ(st.idle_blocks, st.cached_blocks);

  // Turn 2 again, warm all the way: the same tokens, all but the last block taken from the cache.
  EXPECT_EQ(Serve("turn2-again", t2, &first_block), want2[0]);
  EXPECT_EQ(first_block, static_cast<int32_t>((p2.size() - 1) / 16));
  ASSERT_TRUE(WaitPagesUsed(0));
}

TEST_F(DecodePrefixCacheTest, ReleasedAndExpiredReservationsGiveMatchedBlocksBackToTheCache) {
  std::mt19937 rng(162);
  const GenerationRequest warm = Request(RandomTokens(rng, 40), 0.0f, 3);
  ASSERT_FALSE(Serve("warm", warm).empty());
  ASSERT_TRUE(WaitPagesUsed(0));
  ASSERT_EQ(cache().stats().cached_blocks, 3);  // two of the prompt, one of prompt + answer

  // The prompt and other tokens than the answer: the two prompt blocks match.
  std::vector<int32_t> longer = warm.prompt;
  const std::vector<int32_t> more = RandomTokens(rng, 30);
  longer.insert(longer.end(), more.begin(), more.end());

  // Two live reservations share the cached blocks; releasing them gives every page back.
  v1::TransferTicket a, b;
  ASSERT_TRUE(Reserve("a", longer, 10, &a).ok());
  ASSERT_TRUE(Reserve("b", longer, 10, &b).ok());
  EXPECT_EQ(a.first_block(), 2);
  EXPECT_EQ(b.first_block(), 2);
  EXPECT_EQ(std::vector<int32_t>(a.block_ids().begin(), a.block_ids().begin() + 2),
            std::vector<int32_t>(b.block_ids().begin(), b.block_ids().begin() + 2));
  EXPECT_GT(server_->pages().used, 0);
  EXPECT_EQ(cache().stats().idle_blocks, 1) << "the two in use are not evictable";
  ASSERT_TRUE(Release("a").ok());
  ASSERT_TRUE(Release("b").ok());
  ASSERT_TRUE(WaitPagesUsed(0));
  EXPECT_EQ(cache().stats().cached_blocks, 3);
  EXPECT_EQ(cache().stats().idle_blocks, 3);

  // A lease that lapses before any sender started: pages back, the cached ones stay cached.
  v1::TransferTicket c;
  ASSERT_TRUE(Reserve("c", longer, 10, &c, /*lease_ms=*/100).ok());
  EXPECT_EQ(c.first_block(), 2);
  ASSERT_TRUE(WaitState("c", ReservationState::kExpired));
  ASSERT_TRUE(WaitPagesUsed(0));
  EXPECT_EQ(cache().stats().idle_blocks, 3);

  // A Decode call that goes away while waiting for the KV (nothing was sent).
  v1::TransferTicket d;
  ASSERT_TRUE(Reserve("d", longer, 10, &d).ok());
  const StreamResult gone = Decode(ToDecodeRequest("d", Request(longer, 0.0f, 4), 5), 200ms);
  EXPECT_EQ(gone.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_TRUE(WaitPagesUsed(0));
  EXPECT_EQ(cache().stats().idle_blocks, 3);

  // The cached blocks were never written: a request on them still gives the reference tokens.
  const GenerationRequest after = Request(longer, 0.7f, 5);
  int32_t first_block = -1;
  EXPECT_EQ(Serve("after", after, &first_block), Reference({after})[0]);
  EXPECT_EQ(first_block, 2);
  ASSERT_TRUE(WaitPagesUsed(0));
}

TEST_F(DecodePrefixCacheTest, IdleCachedBlocksAreEvictedForAReservationThatNeedsThem) {
  std::mt19937 rng(163);
  ASSERT_FALSE(Serve("warm", Request(RandomTokens(rng, 40), 0.0f, 6)).empty());
  ASSERT_TRUE(WaitPagesUsed(0));
  ASSERT_EQ(cache().stats().cached_blocks, 3);
  // A prompt of every one of the 128 pages: the three idle cached ones are evicted to make
  // room (a reservation takes the prompt's pages).
  const int32_t total = server_->pages().total;
  v1::TransferTicket t;
  ASSERT_TRUE(Reserve("all", RandomTokens(rng, total * 16 - 1), 1, &t).ok());
  EXPECT_EQ(t.first_block(), 0);
  EXPECT_EQ(server_->pages().used, total);
  EXPECT_EQ(cache().stats().evictions, 3);
  EXPECT_EQ(cache().stats().cached_blocks, 0);
  ASSERT_TRUE(Release("all").ok());
  ASSERT_TRUE(WaitPagesUsed(0));
}

TEST_F(DecodePrefixCacheTest, TokenIdsThatAreNotPromptTokensLongAreInvalidArgument) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(kGuard));
  v1::ReserveRequest req;
  req.set_request_id("bad-ids");
  req.set_prompt_tokens(5);
  req.add_prompt_token_ids(7);
  req.add_prompt_token_ids(8);
  req.set_max_tokens(4);
  v1::ReserveResponse resp;
  const grpc::Status s = stub_->Reserve(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("prompt_token_ids"), std::string::npos) << s.error_message();
  EXPECT_EQ(server_->pages().used, 0);
}

TEST_F(DecodePrefixCacheTest, ADecodeCallWithOtherTokensThanReservedIsInvalidArgument) {
  std::mt19937 rng(165);
  const GenerationRequest r = Request(RandomTokens(rng, 30), 0.0f, 8);
  v1::TransferTicket t;
  ASSERT_TRUE(Reserve("other-ids", r.prompt, r.max_tokens, &t).ok());
  GenerationRequest other = r;
  other.prompt[5] ^= 1;
  const StreamResult out = Decode(ToDecodeRequest("other-ids", other, 5));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(out.status.error_message().find("prompt_token_ids"), std::string::npos)
      << out.status.error_message();
  ASSERT_TRUE(Release("other-ids").ok());
  ASSERT_TRUE(WaitPagesUsed(0));
}

TEST_F(DecodePrefixCacheTest, WithoutTokenIdsEveryBlockIsExpected) {
  std::mt19937 rng(164);
  const GenerationRequest r = Request(RandomTokens(rng, 40), 0.0f, 7);
  ASSERT_FALSE(Serve("warm", r).empty());
  ASSERT_TRUE(WaitPagesUsed(0));
  v1::TransferTicket t;
  ASSERT_TRUE(Reserve("no-ids", static_cast<int32_t>(r.prompt.size()), r.max_tokens, &t).ok());
  EXPECT_EQ(t.first_block(), 0);
  auto [first, sent] = Prefill(t, r, *sender_);
  ASSERT_TRUE(sent.ok()) << sent.ToString();
  const StreamResult out = Decode(ToDecodeRequest("no-ids", r, first));
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.tokens, Reference({r})[0]);
  ASSERT_TRUE(WaitPagesUsed(0));
}

}  // namespace
}  // namespace tandem

// The decode worker end to end, in process: a real gRPC server on 127.0.0.1 port 0, a real
// client stub, and the test acting as the prefill worker with its own Engine (same folder) and
// a sending Transceiver. Every RPC has a deadline; every wait is bounded.
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "decode_worker_fixture.h"

namespace tandem {
namespace {

std::vector<GenerationRequest> MakeRequests(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < n; ++i) {
    GenerationRequest r;
    for (int t = 0, len = 1 + rng() % 45; t < len; ++t) r.prompt.push_back(2 + rng() % 298);
    r.max_tokens = 1 + rng() % 24;
    r.ignore_eos = i % 2 == 0;
    r.sampling.temperature = i % 2 == 0 ? 0.0f : 0.9f;  // greedy and seeded
    r.sampling.top_k = i % 4 == 1 ? 20 : 0;
    r.sampling.seed = 77 + i;
    reqs.push_back(r);
  }
  reqs[0].max_tokens = 1;  // the first token alone
  return reqs;
}

TEST_F(DecodeWorkerTest, DisaggregatedTokensEqualSingleProcess) {
  auto reqs = MakeRequests(8, 5);
  auto expected = Reference(reqs);
  std::vector<v1::TransferTicket> tickets(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    grpc::Status s =
        Reserve("r" + std::to_string(i), reqs[i].prompt.size(), reqs[i].max_tokens, &tickets[i]);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(tickets[i].block_ids_size(), prefill_->kv_cache().BlocksFor(reqs[i].prompt.size()));
    EXPECT_EQ(tickets[i].layout().fingerprint(), server_->layout().Fingerprint());
    EXPECT_EQ(tickets[i].endpoint(), server_->kv_endpoint());
  }
  // Prefill every request first, then decode them all at once in one batch.
  std::vector<int32_t> firsts(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto [first, sent] = Prefill(tickets[i], reqs[i], *sender_);
    ASSERT_TRUE(sent.ok()) << sent.ToString();
    firsts[i] = first;
  }
  std::vector<StreamResult> results(reqs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = Decode(ToDecodeRequest("r" + std::to_string(i), reqs[i], firsts[i]));
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].tokens, expected[i]) << "request " << i;
    EXPECT_NE(results[i].finish, v1::FINISH_REASON_UNSPECIFIED);
  }
  EXPECT_TRUE(WaitPagesUsed(0));
}

// OpenAI's rule, which the prefill worker keeps too (tandem/worker/proto_convert.h):
// top_logprobs without logprobs reports nothing; with logprobs every token has an entry and
// every token after the first (the prefill worker reports that one) its alternatives.
TEST_F(DecodeWorkerTest, TopLogprobsComeOnlyWithLogprobs) {
  auto reqs = MakeRequests(2, 31);
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    reqs[i].max_tokens = 6;
    reqs[i].ignore_eos = true;
    const std::string id = "lp" + std::to_string(i);
    v1::TransferTicket ticket;
    grpc::Status s = Reserve(id, reqs[i].prompt.size(), reqs[i].max_tokens, &ticket);
    ASSERT_TRUE(s.ok()) << s.error_message();
    auto [first, sent] = Prefill(ticket, reqs[i], *sender_);
    ASSERT_TRUE(sent.ok()) << sent.ToString();
    v1::DecodeRequest d = ToDecodeRequest(id, reqs[i], first);
    d.set_logprobs(i == 1);
    d.set_top_logprobs(3);
    StreamResult r = Decode(d);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    ASSERT_EQ(r.tokens.size(), 6u);
    EXPECT_EQ(r.logprob_entries, i == 1 ? 6u : 0u);
    EXPECT_EQ(r.top_entries, i == 1 ? 3u * 5 : 0u);
  }
  EXPECT_TRUE(WaitPagesUsed(0));
}

TEST_F(DecodeWorkerTest, DecodeWaitsForTransferThatArrivesLater) {
  auto reqs = MakeRequests(6, 9);
  auto expected = Reference(reqs);
  std::vector<v1::TransferTicket> tickets(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(
        Reserve("w" + std::to_string(i), reqs[i].prompt.size(), reqs[i].max_tokens, &tickets[i])
            .ok());
  }
  // The first token is only known after prefill, so compute it on the prefill engine up
  // front (parity makes it the same), start every Decode call, and only then ship the KV.
  std::vector<int32_t> firsts;
  for (size_t i = 0; i < reqs.size(); ++i) firsts.push_back(expected[i][0]);
  std::vector<StreamResult> results(reqs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i) {
    threads.emplace_back([&, i] {
      results[i] = Decode(ToDecodeRequest("w" + std::to_string(i), reqs[i], firsts[i]));
    });
  }
  // Every Decode call attached and waits for its KV before any of it is sent.
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_TRUE(WaitState("w" + std::to_string(i), ReservationState::kReceiving))
        << "the Decode call of w" << i << " never attached";
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto [first, sent] = Prefill(tickets[i], reqs[i], *sender_);
    EXPECT_TRUE(sent.ok()) << sent.ToString();
    EXPECT_EQ(first, firsts[i]);
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].tokens, expected[i]) << "request " << i;
  }
  EXPECT_TRUE(WaitPagesUsed(0));
}

// 8 prompt tokens (one page), 1900 to generate: a stream that runs until it is cancelled.
GenerationRequest LongGreedyRequest() {
  GenerationRequest r;
  r.prompt = {5, 6, 7, 8, 9, 10, 11, 12};
  r.max_tokens = 1900;
  r.ignore_eos = true;
  r.sampling.temperature = 0.0f;
  return r;
}

TEST_F(DecodeWorkerTest, CancelMidStreamFreesPages) {
  const GenerationRequest r = LongGreedyRequest();
  v1::TransferTicket ticket;
  ASSERT_TRUE(Reserve("c1", r.prompt.size(), r.max_tokens, &ticket).ok());
  EXPECT_EQ(server_->pages().used, 1);  // the prompt's page; the others come as tokens do
  auto [first, sent] = Prefill(ticket, r, *sender_);
  ASSERT_TRUE(sent.ok()) << sent.ToString();
  StreamResult res = Decode(ToDecodeRequest("c1", r, first), kGuard, /*cancel_after_first=*/true);
  EXPECT_EQ(res.status.error_code(), grpc::StatusCode::CANCELLED) << res.status.error_message();
  EXPECT_LT(res.tokens.size(), 1900u);
  EXPECT_TRUE(WaitPagesUsed(0)) << server_->pages().used;
}

// --kv-reserve=full: a reservation takes prompt + max_tokens pages at once (nothing is taken
// later, nothing is preempted), and a cancelled stream gives all of them back.
class DecodeWorkerFullReserveTest : public DecodeWorkerTest {
 protected:
  void Configure(DecodeServerOptions& o) override { o.reservations.reserve_max_tokens = true; }
};

TEST_F(DecodeWorkerFullReserveTest, AReservationTakesPromptAndMaxTokensPagesUpFront) {
  const GenerationRequest r = LongGreedyRequest();
  v1::TransferTicket ticket;
  ASSERT_TRUE(Reserve("f1", r.prompt.size(), r.max_tokens, &ticket).ok());
  EXPECT_EQ(server_->pages().used, 120);  // (8 + 1900) / 16, rounded up
  EXPECT_EQ(ticket.block_ids_size(), 1);  // only the prompt's page travels
  auto [first, sent] = Prefill(ticket, r, *sender_);
  ASSERT_TRUE(sent.ok()) << sent.ToString();
  StreamResult res = Decode(ToDecodeRequest("f1", r, first), kGuard, /*cancel_after_first=*/true);
  EXPECT_EQ(res.status.error_code(), grpc::StatusCode::CANCELLED) << res.status.error_message();
  EXPECT_TRUE(WaitPagesUsed(0)) << server_->pages().used;
}

TEST_F(DecodeWorkerTest, CancelWhileWaitingForTransferFreesPages) {
  // No KV ever comes for these reservations, and their lease outlives the test: only the Decode
  // call going away can free their pages.
  GenerationRequest r;
  r.prompt.assign(20, 3);
  r.max_tokens = 10;
  v1::TransferTicket ticket;
  ASSERT_TRUE(Reserve("c2a", 20, 10, &ticket).ok());
  // A call the client cancels once it attached (which also measures how long attaching takes).
  std::chrono::milliseconds attach_time{0};
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(kGuard));
    const auto start = std::chrono::steady_clock::now();
    auto reader = stub_->Decode(&ctx, ToDecodeRequest("c2a", r, 4));
    EXPECT_TRUE(WaitState("c2a", ReservationState::kReceiving));
    attach_time = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - start);
    ctx.TryCancel();
    v1::DecodeResponse resp;
    while (reader->Read(&resp)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  EXPECT_TRUE(WaitPagesUsed(0)) << server_->pages().used;
  // A call whose own deadline passes while it waits. The deadline leaves it ample time to attach
  // first on this machine: ten times what attaching took above, and at least 300 ms.
  ASSERT_TRUE(Reserve("c2", 20, 10, &ticket).ok());
  const auto deadline = std::max<std::chrono::milliseconds>(300ms, 10 * attach_time);
  StreamResult res = Decode(ToDecodeRequest("c2", r, 4), deadline);
  EXPECT_EQ(res.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitPagesUsed(0)) << server_->pages().used;
}

TEST_F(DecodeWorkerTest, LeaseExpiryWithoutDecodeFreesPages) {
  v1::TransferTicket ticket;
  // Short, so the test waits little for it; long enough that the pages are still held when
  // read right after the Reserve returned.
  ASSERT_TRUE(Reserve("l1", 30, 30, &ticket, /*lease_ms=*/1000).ok());
  EXPECT_EQ(server_->pages().used, 2);  // the prompt's
  EXPECT_GT(ticket.lease_deadline_unix_micros(), 0);
  EXPECT_TRUE(WaitPagesUsed(0)) << server_->pages().used;
  auto st = server_->reservations().state("l1");
  ASSERT_TRUE(st.ok()) << st.status().ToString();
  EXPECT_EQ(*st, ReservationState::kExpired);
  GenerationRequest r;
  r.prompt.assign(30, 3);
  r.max_tokens = 30;
  // The call's own deadline is a hang guard: DEADLINE_EXCEEDED here is the expired lease's.
  StreamResult res = Decode(ToDecodeRequest("l1", r, 4));
  EXPECT_EQ(res.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
}

// The lease bounds the wait for a sender, not the sender's work: a prefill worker that started
// the transfer within the lease keeps the pages however long its prompt then queues, and the
// Decode call that comes after the KV arrived gets a fresh lease to attach.
TEST_F(DecodeWorkerTest, SenderThatStartedWithinTheLeaseKeepsThePagesPastIt) {
  auto reqs = MakeRequests(2, 21);
  auto expected = Reference(reqs);
  v1::TransferTicket ticket;
  // The lease must be short next to the time the prompt queues (that is the point), yet long
  // enough on this machine for what has to happen within it: the sender's start reaching the
  // worker after the Reserve, and the Decode call attaching after the KV arrived. Each is a part
  // of one whole Reserve, Prefill, Decode round, measured first (with a lease it cannot outlive).
  const auto round_start = std::chrono::steady_clock::now();
  ASSERT_TRUE(Reserve("q0", reqs[1].prompt.size(), reqs[1].max_tokens, &ticket).ok());
  auto [first, sent] = Prefill(ticket, reqs[1], *sender_);
  ASSERT_TRUE(sent.ok()) << sent.ToString();
  StreamResult res = Decode(ToDecodeRequest("q0", reqs[1], first));
  ASSERT_TRUE(res.status.ok()) << res.status.error_message();
  EXPECT_EQ(res.tokens, expected[1]);
  const auto round = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - round_start);
  const auto lease = std::max<std::chrono::milliseconds>(300ms, 5 * round);
  const auto queued = 3 * lease;  // well past the lease
  ASSERT_TRUE(WaitPagesUsed(0));

  ASSERT_TRUE(Reserve("q1", reqs[1].prompt.size(), reqs[1].max_tokens, &ticket,
                      static_cast<int32_t>(lease.count()))
                  .ok());
  std::tie(first, sent) = Prefill(ticket, reqs[1], *sender_, /*queued_for=*/queued);
  ASSERT_TRUE(sent.ok()) << sent.ToString();
  // The KV arrived; the Decode call comes after it, inside the new lease.
  EXPECT_TRUE(WaitState("q1", ReservationState::kReady));
  res = Decode(ToDecodeRequest("q1", reqs[1], first));
  EXPECT_TRUE(res.status.ok()) << res.status.error_message();
  EXPECT_EQ(res.tokens, expected[1]);
  EXPECT_TRUE(WaitPagesUsed(0));

  // Without a Decode call, the KV that arrived is dropped once that new lease passes.
  ASSERT_TRUE(Reserve("q2", reqs[0].prompt.size(), reqs[0].max_tokens, &ticket,
                      static_cast<int32_t>(lease.count()))
                  .ok());
  std::tie(first, sent) = Prefill(ticket, reqs[0], *sender_, queued);
  ASSERT_TRUE(sent.ok()) << sent.ToString();
  EXPECT_GT(server_->pages().used, 0);
  EXPECT_TRUE(WaitPagesUsed(0)) << server_->pages().used;
  // The call's own deadline is a hang guard: DEADLINE_EXCEEDED here is the expired lease's.
  res = Decode(ToDecodeRequest("q2", reqs[0], first));
  EXPECT_EQ(res.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST_F(DecodeWorkerTest, ReserveLargerThanCacheIsResourceExhausted) {
  grpc::Status s = Reserve("big", 3000, 100, nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  ASSERT_TRUE(Reserve("half", 1200, 100, nullptr).ok());
  const int32_t used = server_->pages().used;
  s = Reserve("other", 1200, 100, nullptr);  // fits the cache, not what is left of it
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_FALSE(s.error_message().empty());
  EXPECT_EQ(server_->pages().used, used);  // all or nothing
  EXPECT_TRUE(Release("half").ok());
  EXPECT_TRUE(Release("half").ok());  // idempotent
  EXPECT_EQ(Release("never").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(WaitPagesUsed(0));
  EXPECT_EQ(Reserve("bad", 0, 10, nullptr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Reserve("dup", 5, 5, nullptr).error_code(), grpc::StatusCode::OK);
  EXPECT_EQ(Reserve("dup", 5, 5, nullptr).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_TRUE(Release("dup").ok());
  EXPECT_TRUE(WaitPagesUsed(0));
}

TEST_F(DecodeWorkerTest, DecodeOfUnknownIdIsNotFound) {
  GenerationRequest r;
  r.prompt = {3, 4};
  r.max_tokens = 3;
  StreamResult res = Decode(ToDecodeRequest("nobody", r, 5), 5s);
  EXPECT_EQ(res.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(res.messages, 0);
}

TEST_F(DecodeWorkerTest, SenderWithOtherLayoutIsRefusedAndNothingWritten) {
  KvPageLayout other = server_->layout();
  other.model_hash ^= 1;  // other weights
  auto wrong_sender = MakeSender(other);
  ASSERT_NE(wrong_sender, nullptr);
  GenerationRequest r;
  r.prompt = {3, 4, 5, 6, 7};
  r.max_tokens = 4;
  r.sampling.temperature = 0.0f;
  v1::TransferTicket ticket;
  ASSERT_TRUE(Reserve("fp", r.prompt.size(), r.max_tokens, &ticket).ok());
  StreamResult res;
  std::thread decode([&] { res = Decode(ToDecodeRequest("fp", r, 4)); });
  auto [first, sent] = Prefill(ticket, r, *wrong_sender);
  EXPECT_EQ(sent.code(), StatusCode::kFailedPrecondition) << sent.ToString();
  decode.join();
  EXPECT_EQ(res.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << res.status.error_message();
  EXPECT_EQ(server_->transceiver().stats().bytes_received, 0);
  EXPECT_TRUE(WaitPagesUsed(0));
}

TEST_F(DecodeWorkerTest, DrainRefusesNewReservationsAndLetsStreamsFinish) {
  auto reqs = MakeRequests(2, 21);
  reqs[1].max_tokens = 24;
  v1::TransferTicket ticket;
  ASSERT_TRUE(Reserve("d1", reqs[1].prompt.size(), reqs[1].max_tokens, &ticket).ok());
  auto [first, sent] = Prefill(ticket, reqs[1], *sender_);
  ASSERT_TRUE(sent.ok());
  server_->service().SetDraining();
  EXPECT_EQ(Reserve("d2", 5, 5, nullptr).error_code(), grpc::StatusCode::UNAVAILABLE);
  StreamResult res = Decode(ToDecodeRequest("d1", reqs[1], first));
  EXPECT_TRUE(res.status.ok()) << res.status.error_message();
  EXPECT_FALSE(res.tokens.empty());
  server_->Drain(kGuard);  // returns once nothing is in flight
  EXPECT_EQ(server_->pages().used, 0);
}

TEST_F(DecodeWorkerTest, SenderDiesMidTransferEndsDecodeAndFreesPages) {
  GenerationRequest r;
  r.prompt.assign(40, 9);
  r.max_tokens = 8;
  v1::TransferTicket ticket;
  ASSERT_TRUE(Reserve("dead", r.prompt.size(), r.max_tokens, &ticket).ok());
  StreamResult res;
  std::thread decode([&] { res = Decode(ToDecodeRequest("dead", r, 4)); });
  {
    auto sender = MakeSender(server_->layout());
    KvCache& cache = prefill_->kv_cache();
    auto blocks = cache.allocator().Allocate(cache.BlocksFor(r.prompt.size()));
    ASSERT_TRUE(blocks.ok());
    TransferTicket t;
    t.request_id = TransferId("dead");
    t.dest_endpoint = ticket.endpoint();
    t.dest_blocks.assign(ticket.block_ids().begin(), ticket.block_ids().end());
    t.dest_fingerprint = ticket.layout().fingerprint();
    t.token = ticket.transfer_token();
    t.deadline = std::chrono::steady_clock::now() + kGuard;
    KvCachePages pages(cache);
    auto h = sender->StartSend(t, pages, *blocks);
    ASSERT_TRUE(h.ok());
    EXPECT_TRUE(sender->SendLayer(*h, 0).ok());  // one layer of two, then the sender goes away
    for (const auto end = std::chrono::steady_clock::now() + kGuard;
         server_->transceiver().stats().layers_received < 1 &&
         std::chrono::steady_clock::now() < end;) {
      std::this_thread::sleep_for(1ms);
    }
    EXPECT_EQ(server_->transceiver().stats().layers_received, 1);
    sender.reset();
    cache.allocator().Release(*blocks);
  }
  decode.join();
  EXPECT_TRUE(res.status.error_code() == grpc::StatusCode::UNAVAILABLE ||
              res.status.error_code() == grpc::StatusCode::CANCELLED)
      << res.status.error_code() << " " << res.status.error_message();
  EXPECT_TRUE(res.tokens.empty());
  EXPECT_TRUE(WaitPagesUsed(0));
}

TEST_F(DecodeWorkerTest, HealthServingThenNotServingWhileDraining) {
  EXPECT_EQ(HealthStatus(""), 1);
  EXPECT_EQ(HealthStatus(kDecodeServiceName), 1);
  ASSERT_TRUE(Reserve("h1", 10, 10, nullptr).ok());  // a live reservation holds the drain
  // The drain waits for h1 (released below), however long the steps in between take here.
  std::thread drain([&] { server_->Drain(kGuard); });
  // Readiness turns NOT_SERVING as the drain starts.
  int seen = 1;
  for (const auto end = std::chrono::steady_clock::now() + kGuard;
       seen == 1 && std::chrono::steady_clock::now() < end;) {
    std::this_thread::sleep_for(2ms);
    seen = HealthStatus(kDecodeServiceName);
  }
  EXPECT_EQ(seen, 2);
  EXPECT_TRUE(server_->service().draining());
  EXPECT_EQ(Reserve("h2", 10, 10, nullptr).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(Release("h1").ok());
  drain.join();
  EXPECT_EQ(server_->pages().used, 0);
}

}  // namespace
}  // namespace tandem

// DecodeWorkerTest: the decode worker end to end, in process: a real gRPC server on 127.0.0.1
// port 0, a real client stub, and the test acting as the prefill worker with its own Engine (same
// folder) and a sending Transceiver. Every RPC has a deadline; every wait is bounded. Shared by
// the decode worker's test files (each derives its own suite from it).
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <future>

#include "../engine/generator_reference.h"
#include "../engine/test_model.h"
#include "tandem/decode_worker/decode_server.h"
#include "tandem/v1/internal.grpc.pb.h"
#include "tandem/worker/kv_pages.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;

std::chrono::system_clock::time_point In(std::chrono::milliseconds d) {
  return std::chrono::system_clock::now() + d;
}

// Hang guard of RPCs and waits that end by themselves (an answer, a page count reached): they
// return as soon as that happens, so this only bounds a failing run.
constexpr std::chrono::milliseconds kGuard = std::chrono::minutes(2);
// A lease no test outlives: pages it holds come back only by what the test does, never by it.
constexpr int32_t kLongLeaseMs = 3600 * 1000;

struct StreamResult {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;
  int messages = 0;
  size_t logprob_entries = 0;  // TokenLogprobs received
  size_t top_entries = 0;      // alternatives received, over every token
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
};

class DecodeWorkerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::filesystem::path(testing::TempDir("decode_worker"));
    testing::TinyModelSpec spec;
    spec.vocab = 300;
    testing::WriteTinyModel(*dir_, spec);
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  void SetUp() override {
    DecodeServerOptions o;
    o.model_dir = *dir_;
    o.kv_cache_bytes = 512 << 10;  // 128 blocks of 16 tokens
    o.threads = 1;
    o.worker_id = "decode-test";
    o.reservations.reap_interval = 10ms;
    Configure(o);
    auto server = DecodeServer::Start(o);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    ASSERT_EQ(server_->pages().total, 128);

    EngineOptions eo;
    eo.kv_cache_bytes = 8 << 20;
    eo.num_threads = 1;
    auto prefill = Engine::Load(*dir_, eo);
    ASSERT_TRUE(prefill.ok()) << prefill.status().ToString();
    prefill_ = std::move(prefill).value();
    const KvPageLayout layout =
        MakeKvPageLayout(prefill_->kv_cache().geometry(), prefill_->model_hash());
    ASSERT_EQ(layout.Fingerprint(), server_->layout().Fingerprint());
    sender_ = MakeSender(layout);

    auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::DecodeWorker::NewStub(channel);
  }

  void TearDown() override {
    sender_.reset();
    server_.reset();
  }

  // A suite's own server options (called by SetUp before the server starts).
  virtual void Configure(DecodeServerOptions& /*options*/) {}

  static std::unique_ptr<Transceiver> MakeSender(const KvPageLayout& layout) {
    TransceiverOptions to;
    to.layout = layout;
    to.listen = false;
    auto t = Transceiver::Create(to);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return t.ok() ? std::move(t).value() : nullptr;
  }

  grpc::Status Reserve(const std::string& id, int32_t prompt, int32_t max_tokens,
                       v1::TransferTicket* ticket, int32_t lease_ms = kLongLeaseMs) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(kGuard));
    v1::ReserveRequest req;
    req.set_request_id(id);
    req.set_prompt_tokens(prompt);
    req.set_max_tokens(max_tokens);
    req.set_lease_ms(lease_ms);
    v1::ReserveResponse resp;
    grpc::Status s = stub_->Reserve(&ctx, req, &resp);
    if (ticket) *ticket = resp.ticket();
    return s;
  }

  // Reserve naming the prompt's token ids: the decode worker's prefix cache is looked up.
  grpc::Status Reserve(const std::string& id, const std::vector<int32_t>& prompt,
                       int32_t max_tokens, v1::TransferTicket* ticket,
                       int32_t lease_ms = kLongLeaseMs) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(kGuard));
    v1::ReserveRequest req;
    req.set_request_id(id);
    req.set_prompt_tokens(static_cast<int32_t>(prompt.size()));
    for (int32_t t : prompt) req.add_prompt_token_ids(t);
    req.set_max_tokens(max_tokens);
    req.set_lease_ms(lease_ms);
    v1::ReserveResponse resp;
    grpc::Status s = stub_->Reserve(&ctx, req, &resp);
    if (ticket) *ticket = resp.ticket();
    return s;
  }

  grpc::Status Release(const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(kGuard));
    v1::ReleaseRequest req;
    req.set_request_id(id);
    v1::ReleaseResponse resp;
    return stub_->Release(&ctx, req, &resp);
  }

  // Acts as the prefill worker: computes the prompt into its own pages, ships every layer as
  // soon as it is computed (the blocks from the ticket's first_block on), samples the first token.
  // Returns the first token and the send status. `queued_for` > 0 acts as a prompt waiting that
  // long in the prefill queue: the transfer is started at once without local blocks, which are
  // bound only after the wait.
  std::pair<int32_t, Status> Prefill(const v1::TransferTicket& ticket, const GenerationRequest& r,
                                     Transceiver& sender,
                                     std::chrono::milliseconds queued_for = 0ms) {
    KvCache& cache = prefill_->kv_cache();
    TransferTicket t;
    t.request_id = TransferId(ticket.request_id());
    t.dest_endpoint = ticket.endpoint();
    t.dest_blocks.assign(ticket.block_ids().begin() + ticket.first_block(),
                         ticket.block_ids().end());
    t.dest_fingerprint = ticket.layout().fingerprint();
    t.token = ticket.transfer_token();
    t.deadline = std::chrono::steady_clock::now() + kGuard;
    KvCachePages pages(cache);
    StatusOr<SendHandle> h = UnavailableError("not started");
    if (queued_for > 0ms) {
      h = sender.StartSend(t, pages, {});
      std::this_thread::sleep_for(queued_for);
    }
    auto blocks = cache.allocator().Allocate(cache.BlocksFor(r.prompt.size()));
    EXPECT_TRUE(blocks.ok());
    const std::vector<int32_t> sent_blocks(blocks->begin() + ticket.first_block(), blocks->end());
    if (queued_for > 0ms) {
      if (h.ok()) {
        EXPECT_TRUE(sender.BindBlocks(*h, sent_blocks).ok());
      }
    } else {
      h = sender.StartSend(t, pages, sent_blocks);
    }
    EXPECT_TRUE(h.ok()) << h.status().ToString();
    ForwardChunk ch;
    ch.tokens = r.prompt;
    ch.block_table = *blocks;
    ch.want_logits = true;
    std::vector<float> logits;
    Status fw =
        prefill_->runner().Forward(std::span<const ForwardChunk>(&ch, 1), cache, &logits,
                                   [&](int32_t layer) { (void)sender.SendLayer(*h, layer); });
    EXPECT_TRUE(fw.ok()) << fw.ToString();
    SampleResult first =
        Sample(logits, r.sampling, r.prompt, {}, static_cast<int64_t>(r.prompt.size()));
    Status sent = h.ok() ? sender.Wait(*h) : h.status();
    cache.allocator().Release(*blocks);
    return {first.token, sent};
  }

  static v1::DecodeRequest ToDecodeRequest(const std::string& id, const GenerationRequest& r,
                                           int32_t first_token) {
    v1::DecodeRequest d;
    d.set_request_id(id);
    for (int32_t t : r.prompt) d.add_prompt_token_ids(t);
    d.set_first_token_id(first_token);
    d.mutable_sampling()->set_temperature(r.sampling.temperature);
    d.mutable_sampling()->set_top_k(r.sampling.top_k);
    d.mutable_sampling()->set_top_p(r.sampling.top_p);
    d.mutable_sampling()->set_seed(r.sampling.seed);
    d.mutable_sampling()->set_repetition_penalty(r.sampling.repetition_penalty);
    d.mutable_stopping()->set_max_tokens(r.max_tokens);
    d.mutable_stopping()->set_ignore_eos(r.ignore_eos);
    d.set_logprobs(true);
    return d;
  }

  // Runs one Decode call to its end. `cancel_after_first` cancels after the first message.
  StreamResult Decode(const v1::DecodeRequest& req, std::chrono::milliseconds deadline = kGuard,
                      bool cancel_after_first = false) {
    StreamResult out;
    grpc::ClientContext ctx;
    ctx.set_deadline(In(deadline));
    auto reader = stub_->Decode(&ctx, req);
    v1::DecodeResponse resp;
    while (reader->Read(&resp)) {
      ++out.messages;
      out.tokens.insert(out.tokens.end(), resp.token_ids().begin(), resp.token_ids().end());
      out.text += resp.text();
      EXPECT_EQ(resp.logprobs_size(), req.logprobs() ? resp.token_ids_size() : 0);
      out.logprob_entries += resp.logprobs_size();
      for (const v1::TokenLogprobs& lp : resp.logprobs()) out.top_entries += lp.top_size();
      if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) out.finish = resp.finish_reason();
      if (cancel_after_first && out.messages == 1) ctx.TryCancel();
    }
    out.status = reader->Finish();
    return out;
  }

  // grpc.health.v1.Health/Check by hand (no health stubs ship with grpc++): the request is
  // {1: service}, the answer {1: status} with SERVING = 1, NOT_SERVING = 2; -1 on RPC error.
  int HealthStatus(const std::string& service) {
    auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    grpc::GenericStub stub(channel);
    std::string req = {0x0a, static_cast<char>(service.size())};
    req += service;
    grpc::Slice slice(req);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::ClientContext ctx;
    ctx.set_deadline(In(kGuard));
    std::promise<grpc::Status> done;
    stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                   [&](grpc::Status s) { done.set_value(s); });
    auto fut = done.get_future();
    if (fut.wait_for(2 * kGuard) != std::future_status::ready || !fut.get().ok()) return -1;
    std::vector<grpc::Slice> slices;
    if (!response.Dump(&slices).ok()) return -1;
    std::string bytes;
    for (auto& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    if (bytes.empty()) return 0;  // UNKNOWN (default value, not encoded)
    return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : -1;
  }

  // Waits (bounded by a hang guard) until the decode worker's pages in use reach `want`.
  bool WaitPagesUsed(int32_t want, std::chrono::milliseconds limit = kGuard) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (server_->pages().used == want) return true;
      std::this_thread::sleep_for(5ms);
    }
    return server_->pages().used == want;
  }

  // Waits (bounded by a hang guard) until reservation `id` is in state `want`.
  bool WaitState(const std::string& id, ReservationState want,
                 std::chrono::milliseconds limit = kGuard) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (true) {
      auto st = server_->reservations().state(id);
      if (st.ok() && *st == want) return true;
      if (std::chrono::steady_clock::now() >= end) return false;
      std::this_thread::sleep_for(1ms);
    }
  }

  // Single-process reference: every request through Generator::Add.
  std::vector<std::vector<int32_t>> Reference(const std::vector<GenerationRequest>& reqs) {
    return testing_engine::ReferenceTokens(*prefill_, reqs);
  }

  static inline std::filesystem::path* dir_ = nullptr;
  std::unique_ptr<DecodeServer> server_;
  std::unique_ptr<Engine> prefill_;
  std::unique_ptr<Transceiver> sender_;
  std::unique_ptr<v1::DecodeWorker::Stub> stub_;
};

}  // namespace
}  // namespace tandem

// End to end: `tandem serve` (router + prefill + decode as real processes on loopback) against
// the single-process engine (`tandem generate`), bad inputs, cancellation and SIGTERM.
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "serve_harness.h"
#include "tandem/v1/generate.grpc.pb.h"

namespace tandem {
namespace {

using testing::BinDir;
using testing::ModelDir;
using testing::ServeProcess;

// Hang guards: each wait below returns as soon as what it waits for happens (serve printed its
// address, a call ended, a process exited); these only bound a failing run.
constexpr auto kStartTimeout = std::chrono::seconds(300);
constexpr auto kCallGuard = std::chrono::seconds(600);

struct Case {
  std::string prompt;
  bool chat = false;
  int32_t max_tokens = 16;
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  std::string stop;  // one stop string, or none
};

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  bool has_final = false;
  v1::GenerateFinal final;
  int chunks = 0;
};

v1::GenerateRequest MakeRequest(const Case& c) {
  v1::GenerateRequest r;
  if (c.chat) {
    v1::ChatMessage* m = r.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(c.prompt);
  } else {
    r.set_text(c.prompt);
  }
  r.mutable_sampling()->set_temperature(c.temperature);
  r.mutable_sampling()->set_top_k(c.top_k);
  r.mutable_sampling()->set_top_p(c.top_p);
  r.mutable_sampling()->set_seed(c.seed);
  r.mutable_stopping()->set_max_tokens(c.max_tokens);
  if (!c.stop.empty()) r.mutable_stopping()->add_stop(c.stop);
  return r;
}

// Streams one Generate call; `cancel_after_chunks` > 0 cancels once that many chunks arrived.
// `first_chunk` (optional) is set when the first chunk arrives.
Outcome RunGenerate(v1::Tandem::Stub* stub, const v1::GenerateRequest& request,
                    int cancel_after_chunks = 0, std::promise<void>* first_chunk = nullptr) {
  Outcome o;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kCallGuard);
  auto reader = stub->Generate(&ctx, request);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) {
      if (++o.chunks == 1 && first_chunk != nullptr) first_chunk->set_value();
      o.ids.insert(o.ids.end(), msg.chunk().token_ids().begin(), msg.chunk().token_ids().end());
      o.text += msg.chunk().text();
      if (cancel_after_chunks > 0 && o.chunks == cancel_after_chunks) ctx.TryCancel();
    } else if (msg.has_final()) {
      o.has_final = true;
      o.final = msg.final();
    }
  }
  o.status = reader->Finish();
  return o;
}

// The single-process engine's text for `c` (tandem generate prints it plus one newline).
std::string ReferenceText(const Case& c) {
  std::vector<std::string> argv = {BinDir() + "/tandem",
                                   "generate",
                                   "--model",
                                   ModelDir(),
                                   "--max-tokens",
                                   std::to_string(c.max_tokens),
                                   "--temperature",
                                   std::to_string(c.temperature),
                                   "--top-k",
                                   std::to_string(c.top_k),
                                   "--top-p",
                                   std::to_string(c.top_p),
                                   "--seed",
                                   std::to_string(c.seed),
                                   "--threads",
                                   "1",
                                   "--log-level",
                                   "warn"};
  if (c.chat) argv.push_back("--chat");
  if (!c.stop.empty()) {
    argv.push_back("--stop");
    argv.push_back(c.stop);
  }
  argv.push_back(c.prompt);
  int status = -1;
  auto out = testing::RunCapture(argv, kCallGuard, &status);
  if (!out || status != 0) return "<tandem generate failed>";
  if (!out->empty() && out->back() == '\n') out->pop_back();
  return *out;
}

class ServeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* level = std::getenv("TANDEM_TEST_LOG_LEVEL");  // e.g. "info" to debug
    ASSERT_TRUE(
        serve_.Start({"--threads", "1", "--log-level", level ? level : "warn"}, kStartTimeout))
        << "tandem serve did not print its router address";
    channel_ = grpc::CreateChannel(serve_.router_address(), grpc::InsecureChannelCredentials());
    ASSERT_TRUE(channel_->WaitForConnected(std::chrono::system_clock::now() + kStartTimeout));
    stub_ = v1::Tandem::NewStub(channel_);
  }

  ServeProcess serve_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Tandem::Stub> stub_;
};

TEST_F(ServeTest, ConcurrentRequestsMatchTheSingleProcessEngine) {
  // Short outputs: on a shared 2-core machine every decode step of the batch costs ~1 s.
  const std::vector<Case> cases = {
      {"The capital of France is", false, 8, 0.0f, 0, 1.0f, 0, "\n\n"},
      {"What is 2+2?", true, 10},
      {"Once upon a time", false, 8, 0.8f, 0, 1.0f, 42},
      {"Write a haiku about the sea.", true, 10, 0.7f, 40, 1.0f, 7},
      {"def fibonacci(n):", false, 6},
      {"Name three colors.", true, 8, 1.0f, 0, 0.9f, 123},
      {"1, 2, 3, 4,", false, 1},
      {"Hello!", true, 6, 0.5f, 0, 1.0f, 5},
  };
  std::vector<std::future<std::string>> refs;
  for (const Case& c : cases) refs.push_back(std::async(std::launch::async, ReferenceText, c));
  std::vector<std::future<Outcome>> outs;
  for (const Case& c : cases) {
    outs.push_back(std::async(std::launch::async,
                              [this, c] { return RunGenerate(stub_.get(), MakeRequest(c)); }));
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    Outcome o = outs[i].get();
    const std::string ref = refs[i].get();
    SCOPED_TRACE("case " + std::to_string(i) + ": " + cases[i].prompt);
    ASSERT_TRUE(o.status.ok()) << o.status.error_code() << " " << o.status.error_message();
    ASSERT_TRUE(o.has_final);
    EXPECT_EQ(o.text, ref);
    EXPECT_EQ(o.final.usage().completion_tokens(), static_cast<int32_t>(o.ids.size()));
    EXPECT_LE(static_cast<int32_t>(o.ids.size()), cases[i].max_tokens);
    EXPECT_GT(o.final.usage().prompt_tokens(), 0);
    EXPECT_NE(o.final.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
    if (static_cast<int32_t>(o.ids.size()) == cases[i].max_tokens) {
      EXPECT_EQ(o.final.finish_reason(), v1::FINISH_REASON_LENGTH);
    }
    EXPECT_FALSE(o.final.request_id().empty());
  }
}

TEST_F(ServeTest, BadInputsAreInvalidArgumentNamingTheField) {
  struct Bad {
    std::string field;
    v1::GenerateRequest request;
  };
  std::vector<Bad> bad;
  const v1::GenerateRequest ok = MakeRequest({"Hi", false, 4});
  bad.push_back({"text", ok});
  bad.back().request.set_text("");
  bad.push_back({"stopping.max_tokens", ok});
  bad.back().request.mutable_stopping()->set_max_tokens(0);
  bad.push_back({"stopping.max_tokens", ok});
  bad.back().request.mutable_stopping()->set_max_tokens(9000);  // past the 8192 context
  bad.push_back({"sampling.temperature", ok});
  bad.back().request.mutable_sampling()->set_temperature(-1.0f);
  bad.push_back({"sampling.top_p", ok});
  bad.back().request.mutable_sampling()->set_top_p(1.5f);
  bad.push_back({"sampling.presence_penalty", ok});
  bad.back().request.mutable_sampling()->set_presence_penalty(3.0f);
  bad.push_back({"top_logprobs", ok});
  bad.back().request.set_top_logprobs(21);
  bad.push_back({"chat.messages", ok});
  bad.back().request.mutable_chat();
  bad.push_back({"token_ids.ids", ok});
  bad.back().request.mutable_token_ids()->add_ids(1 << 20);
  for (const Bad& b : bad) {
    Outcome o = RunGenerate(stub_.get(), b.request);
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << b.field;
    EXPECT_NE(o.status.error_message().find(b.field), std::string::npos)
        << b.field << ": " << o.status.error_message();
    EXPECT_EQ(o.chunks, 0);
  }
  // The service still works afterwards, and so do Tokenize and ModelInfo.
  EXPECT_TRUE(RunGenerate(stub_.get(), ok).status.ok());
  grpc::ClientContext tctx;
  v1::TokenizeRequest treq;
  treq.set_text("Hello world");
  v1::TokenizeResponse tresp;
  ASSERT_TRUE(stub_->Tokenize(&tctx, treq, &tresp).ok());
  EXPECT_GT(tresp.token_ids_size(), 0);
  grpc::ClientContext mctx;
  v1::ModelInfoResponse minfo;
  ASSERT_TRUE(stub_->ModelInfo(&mctx, v1::ModelInfoRequest(), &minfo).ok());
  EXPECT_EQ(minfo.model(), "SmolLM2-135M-Instruct");
  EXPECT_EQ(minfo.max_context_tokens(), 8192);
  EXPECT_EQ(minfo.vocab_size(), 49152);
  EXPECT_EQ(minfo.prefill_workers(), 1);
  EXPECT_EQ(minfo.decode_workers(), 1);
}

TEST_F(ServeTest, CancellationEndsOneStreamAndTheOthersComplete) {
  v1::GenerateRequest longer = MakeRequest({"Tell me a long story about a dragon.", true, 200});
  longer.mutable_stopping()->set_ignore_eos(true);
  auto cancelled = std::async(std::launch::async, [&] {
    return RunGenerate(stub_.get(), longer, /*cancel_after_chunks=*/3);
  });
  std::vector<std::future<Outcome>> others;
  for (int i = 0; i < 2; ++i) {
    others.push_back(std::async(std::launch::async, [this, i] {
      return RunGenerate(stub_.get(), MakeRequest({"Count: " + std::to_string(i), false, 6}));
    }));
  }
  Outcome c = cancelled.get();
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::CANCELLED) << c.status.error_message();
  EXPECT_FALSE(c.has_final);
  EXPECT_LT(c.ids.size(), 200u);
  for (auto& f : others) {
    Outcome o = f.get();
    EXPECT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_TRUE(o.has_final);
  }
  // The workers freed the cancelled request's pages: a request needing most of the KV cache
  // still fits afterwards (364 pages of 16 tokens per worker with the default 256 MiB).
  // The cancelled request held ~15 pages; this one needs 351 of 364.
  // The release may still be on its way: retry while the pages are short (bounded by a guard).
  Outcome big;
  for (const auto end = std::chrono::steady_clock::now() + kCallGuard;
       std::chrono::steady_clock::now() < end;) {
    big = RunGenerate(stub_.get(), MakeRequest({"Hi", false, 5600}), 1);
    if (big.status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  EXPECT_EQ(big.status.error_code(), grpc::StatusCode::CANCELLED) << big.status.error_message();
}

TEST_F(ServeTest, SigtermStopsEveryProcessAndLetsInFlightStreamsFinish) {
  const std::vector<pid_t> children = testing::ChildPids(serve_.pid());
  ASSERT_EQ(children.size(), 3u);
  std::promise<void> streaming;
  auto streamed = streaming.get_future();
  auto inflight = std::async(std::launch::async, [this, &streaming] {
    return RunGenerate(stub_.get(), MakeRequest({"The sky is", false, 8}), 0, &streaming);
  });
  // SIGTERM once the stream is in flight (its first chunk arrived).
  ASSERT_EQ(streamed.wait_for(kCallGuard), std::future_status::ready);
  int exit_status = -1;
  EXPECT_TRUE(serve_.Stop(std::chrono::seconds(300), &exit_status)) << exit_status;
  for (pid_t p : children) EXPECT_FALSE(testing::ProcessAlive(p)) << "pid " << p;
  Outcome o = inflight.get();
  EXPECT_TRUE(o.status.ok()) << o.status.error_code() << " " << o.status.error_message();
  EXPECT_TRUE(o.has_final);
}

}  // namespace
}  // namespace tandem

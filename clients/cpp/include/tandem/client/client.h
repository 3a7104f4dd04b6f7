// The C++ client of a Tandem router (tandem.v1.Tandem over gRPC).
//
//   auto client = tandem::Client::Connect({.address = "127.0.0.1:50051"});
//   v1::GenerateRequest req = tandem::TextRequest("Hello", {.max_tokens = 32});
//   auto final = (*client)->Generate(req, [](const v1::GenerateChunk& c) {
//     std::cout << c.text() << std::flush;
//     return true;  // false cancels the stream
//   });
//
// Errors are Status values with the server's code and message (INVALID_ARGUMENT names the field,
// RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, UNAUTHENTICATED...). A call
// that fails with UNAVAILABLE before any token arrived is retried (another worker may take it);
// once output was seen it is never retried, so no token is ever delivered twice.
//
// Thread safety: a Client may be shared by any number of threads; each call is independent.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/v1/generate.grpc.pb.h"

namespace tandem {

struct ClientOptions {
  // Router gRPC address, "host:port". Required.
  std::string address;
  // Sent as "authorization: Bearer <key>" when the router requires one. Default: none.
  std::string api_key;
  // Deadline of one call (a whole stream for Generate). Default: 10 min.
  std::chrono::milliseconds timeout{600000};
  // Attempts for a call refused with UNAVAILABLE before any output. Default: 3.
  int32_t max_attempts = 3;
  // Pause before the first retry; doubled for each further one. Default: 100 ms.
  std::chrono::milliseconds retry_backoff{100};
  // PEM text of the CA that signed the router's certificate: the channel speaks TLS and verifies
  // the router against it. Default: none, plaintext.
  std::string tls_ca_pem;
  // PEM client certificate chain and its key, presented with tls_ca_pem (mTLS). Default: none.
  std::string tls_cert_pem;
  std::string tls_key_pem;
};

// Sampling and stopping as the `tandem generate` flags name them. Defaults: greedy, 256 tokens.
struct GenerateParams {
  int32_t max_tokens = 256;
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // Unset: the router picks one (reported in GenerateFinal.seed).
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool logprobs = false;
  int32_t top_logprobs = 0;  // alternatives per token (0-20); needs logprobs
};

// Requests built from params: raw text, a chat (system message optional), or token ids.
v1::GenerateRequest TextRequest(std::string_view text, const GenerateParams& params);
v1::GenerateRequest ChatRequest(std::string_view system, std::string_view user,
                                const GenerateParams& params);
v1::GenerateRequest TokenRequest(const std::vector<int32_t>& ids, const GenerateParams& params);

class Client {
 public:
  // Runs for every chunk, in order, on the calling thread; returning false cancels the stream
  // (Generate then returns CANCELLED).
  using ChunkCallback = std::function<bool(const v1::GenerateChunk& chunk)>;

  // INVALID_ARGUMENT for an empty address. Connects lazily: an unreachable router shows up as
  // UNAVAILABLE from the first call.
  static StatusOr<std::unique_ptr<Client>> Connect(ClientOptions options);

  // Streams one generation; returns its final message (finish reason, usage, timings, seed).
  StatusOr<v1::GenerateFinal> Generate(const v1::GenerateRequest& request,
                                       const ChunkCallback& on_chunk);
  StatusOr<std::vector<int32_t>> Tokenize(std::string_view text, bool add_special_tokens);
  StatusOr<v1::ModelInfoResponse> ModelInfo();

  const ClientOptions& options() const { return options_; }

 private:
  explicit Client(ClientOptions options);
  void Prepare(grpc::ClientContext* ctx) const;
  // Runs `attempt` until it succeeds, fails with anything but UNAVAILABLE, or reports that
  // output was seen (`*delivered`), at most max_attempts times.
  Status WithRetries(const std::function<Status(bool* delivered)>& attempt) const;

  ClientOptions options_;
  std::unique_ptr<v1::Tandem::Stub> stub_;
};

}  // namespace tandem

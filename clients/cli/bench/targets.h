// What `tandem bench` sends requests to. Each Run blocks its calling thread for one request and
// times it from the moment it is sent: first output, every later arrival, the end.
//
//   grpc    a Tandem router (tandem.v1.Tandem/Generate, through tandem_client)
//   http    any OpenAI-compatible server (POST /v1/completions or /v1/chat/completions with
//           stream: true; token counts from the final usage chunk)
//   engine  the single-process engine in this process (one Generator with continuous batching,
//           stepped by one thread): the colocated baseline the disaggregated numbers compare to
//
// Thread safety: Run may be called from many threads at once.
#pragma once

#include <memory>
#include <string>

#include "tandem/common/status.h"
#include "workload.h"

namespace tandem::bench {

class Target {
 public:
  virtual ~Target() = default;
  virtual RequestResult Run(const BenchRequest& request, Clock::time_point run_start) = 0;
  virtual std::string Describe() const = 0;
};

struct TargetOptions {
  std::string api_key;
  // PEM CA file: grpc:// targets use TLS and https:// targets verify the router against it.
  // Default: none (grpc:// plaintext; https:// trusts the system's CAs).
  std::string tls_ca_file;
  double timeout_s = 600;
  // engine: checkpoint folder and compute threads.
  std::string model_dir;
  int32_t threads = 0;
  // engine: reuse cached prompt prefixes (EngineOptions::prefix_cache). Default: true.
  bool prefix_cache = true;
};

// "grpc://HOST:PORT" (or plain HOST:PORT), "http://HOST:PORT", "https://HOST:PORT", "engine"
// (needs model_dir).
StatusOr<std::unique_ptr<Target>> MakeTarget(const std::string& spec, const TargetOptions& options);

}  // namespace tandem::bench

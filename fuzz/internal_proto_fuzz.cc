// The checks every service applies to request bytes from the network before acting on them:
// the router's Generate validation (request_validation.cc, with the default RequestLimits), the
// prefill worker's PrefillRequest conversion (request_convert.cc), and the decode worker's
// DecodeRequest sampling and stopping conversion (worker/src/proto_convert.cc). Input: one byte
// choosing the message, then its serialized bytes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "request_convert.h"
#include "tandem/common/hash.h"
#include "tandem/router/request_validation.h"
#include "tandem/v1/generate.pb.h"
#include "tandem/v1/internal.pb.h"
#include "tandem/worker/proto_convert.h"

namespace tandem {
// worker/src/kv_pages.cc's one-line definition: the rest of that file needs the engine, which
// this target does not link.
uint64_t TransferId(std::string_view request_id) { return Hash64(request_id); }
}  // namespace tandem

namespace {

using namespace tandem;

void Generate(const uint8_t* data, size_t size) {
  v1::GenerateRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  if (!ValidateRequestBounds(req, RequestLimits()).ok()) return;
  if (!ValidateGenerateRequest(req).ok()) return;
  (void)NormalizedSampling(req.sampling());
  if (req.has_token_ids()) {
    std::vector<int32_t> prompt(req.token_ids().ids().begin(), req.token_ids().ids().end());
    (void)ValidatePrompt(prompt, req.stopping().max_tokens(), 8192, 49152);
  }
}

void Prefill(const uint8_t* data, size_t size) {
  static const ModelConfig config = [] {
    ModelConfig c;
    c.vocab_size = 49152;
    c.max_position_embeddings = 8192;
    c.num_layers = 2;
    c.num_kv_heads = 1;
    c.head_dim = 4;
    return c;
  }();
  v1::PrefillRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  ConvertLimits limits;
  limits.config = &config;
  KvGeometry g;
  g.num_layers = 2;
  g.num_kv_heads = 1;
  g.head_dim = 4;
  limits.layout = MakeKvPageLayout(g, 0x1234);
  limits.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  (void)MakePrefillJob(req, limits);
}

void Decode(const uint8_t* data, size_t size) {
  v1::DecodeRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  (void)SamplingForRequest(req.sampling(), req.logprobs(), req.top_logprobs());
  GenerationRequest gen;
  FromProto(req.stopping(), &gen);
}

void Reserve(const uint8_t* data, size_t size) {
  v1::ReserveRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return;
  (void)TransferId(req.request_id());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  switch (data[0] % 4) {
    case 0:
      Generate(data + 1, size - 1);
      break;
    case 1:
      Prefill(data + 1, size - 1);
      break;
    case 2:
      Decode(data + 1, size - 1);
      break;
    default:
      Reserve(data + 1, size - 1);
      break;
  }
  return 0;
}

// The OpenAI-compatible HTTP API's request parser (router/src/http/openai_protocol.cc) and the
// router's checks of each Generate request it yields. Input: one byte choosing completions or
// chat, then the request body.
#include <cstddef>
#include <cstdint>
#include <string>

#include "openai_protocol.h"
#include "tandem/router/request_validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  using namespace tandem;
  const auto kind = (data[0] & 1) ? http::ApiKind::kChat : http::ApiKind::kCompletion;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  http::ProtocolLimits limits;
  limits.model = "SmolLM2-135M-Instruct";
  http::ApiError error;
  auto parsed = http::ParseRequest(kind, body, limits, &error);
  if (!parsed) {
    (void)error.ToJson().dump();
    return 0;
  }
  for (const auto& call : parsed->calls) {
    Status st = ValidateGenerateRequest(call);
    if (!st.ok()) (void)http::ErrorForStatus(st).ToJson();
  }
  return 0;
}

#include "tandem/router/request_validation.h"

#include "tandem/worker/sampling_proto.h"

namespace tandem {

v1::SamplingParameters NormalizedSampling(const v1::SamplingParameters& sampling) {
  v1::SamplingParameters s = sampling;
  if (s.top_p() == 0.0f) s.set_top_p(1.0f);
  if (s.repetition_penalty() == 0.0f) s.set_repetition_penalty(1.0f);
  return s;
}

Status ValidateGenerateRequest(const v1::GenerateRequest& request) {
  switch (request.input_case()) {
    case v1::GenerateRequest::kText:
      if (request.text().empty())
        return InvalidArgumentError("text must not be empty").WithField("text");
      break;
    case v1::GenerateRequest::kTokenIds:
      if (request.token_ids().ids().empty()) {
        return InvalidArgumentError("token_ids.ids must not be empty").WithField("token_ids.ids");
      }
      break;
    case v1::GenerateRequest::kChat:
      if (request.chat().messages().empty()) {
        return InvalidArgumentError("chat.messages must not be empty").WithField("chat.messages");
      }
      break;
    default:
      return InvalidArgumentError("input (text, token_ids or chat) must be set").WithField("input");
  }
  // The workers' own rules (tandem_sampling_proto), so the router refuses exactly what they would.
  if (auto sampling =
          SamplingForRequest(request.sampling(), request.logprobs(), request.top_logprobs());
      !sampling.ok()) {
    return sampling.status();
  }
  if (request.stopping().max_tokens() < 1) {
    return InvalidArgumentError("stopping.max_tokens must be >= 1, got {}",
                                request.stopping().max_tokens())
        .WithField("stopping.max_tokens");
  }
  if (request.top_logprobs() > 0 && !request.logprobs()) {
    // OpenAI's rule, as the HTTP API and the workers keep it: alternatives come with logprobs.
    return InvalidArgumentError("top_logprobs requires logprobs to be set")
        .WithField("top_logprobs");
  }
  return Status::Ok();
}

Status ValidateRequestBounds(const v1::GenerateRequest& request, const RequestLimits& limits) {
  const std::string& id = request.request_id();
  if (static_cast<int64_t>(id.size()) > limits.max_request_id_bytes) {
    return InvalidArgumentError("request_id must be at most {} bytes, got {}",
                                limits.max_request_id_bytes, id.size())
        .WithField("request_id");
  }
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) {
      return InvalidArgumentError("request_id must be printable ASCII without spaces")
          .WithField("request_id");
    }
  }
  const v1::StoppingCriteria& stopping = request.stopping();
  if (stopping.stop_size() > limits.max_stop_strings) {
    return InvalidArgumentError("stopping.stop must hold at most {} strings, got {}",
                                limits.max_stop_strings, stopping.stop_size())
        .WithField("stopping.stop");
  }
  for (int i = 0; i < stopping.stop_size(); ++i) {
    if (static_cast<int64_t>(stopping.stop(i).size()) > limits.max_stop_string_bytes) {
      return InvalidArgumentError(
                 "stopping.stop strings must be at most {} bytes, got {} (string {})",
                 limits.max_stop_string_bytes, stopping.stop(i).size(), i)
          .WithField("stopping.stop");
    }
  }
  if (stopping.stop_token_ids_size() > limits.max_stop_token_ids) {
    return InvalidArgumentError("stopping.stop_token_ids must hold at most {} ids, got {}",
                                limits.max_stop_token_ids, stopping.stop_token_ids_size())
        .WithField("stopping.stop_token_ids");
  }
  int64_t prompt_bytes = 0;
  const char* prompt_field = "text";
  switch (request.input_case()) {
    case v1::GenerateRequest::kText:
      prompt_bytes = static_cast<int64_t>(request.text().size());
      break;
    case v1::GenerateRequest::kChat:
      prompt_field = "chat.messages";
      for (const auto& m : request.chat().messages()) {
        prompt_bytes += static_cast<int64_t>(m.role().size() + m.content().size());
      }
      break;
    default:
      break;
  }
  if (prompt_bytes > limits.max_prompt_bytes) {
    return InvalidArgumentError("{}: the prompt must be at most {} bytes, got {}", prompt_field,
                                limits.max_prompt_bytes, prompt_bytes)
        .WithField(prompt_field);
  }
  return Status::Ok();
}

Status ValidatePrompt(const std::vector<int32_t>& prompt, int32_t max_tokens,
                      int64_t max_context_tokens, int32_t vocab_size) {
  if (prompt.empty())
    return InvalidArgumentError("prompt is empty after tokenization").WithField("text");
  for (int32_t id : prompt) {
    if (id < 0 || id >= vocab_size) {
      return InvalidArgumentError("token_ids.ids: {} is outside the vocabulary [0, {})", id,
                                  vocab_size)
          .WithField("token_ids.ids");
    }
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + max_tokens;
  if (total > max_context_tokens) {
    return InvalidArgumentError(
               "stopping.max_tokens: prompt ({} tokens) + max_tokens ({}) exceeds the context ({})",
               prompt.size(), max_tokens, max_context_tokens)
        .WithField("stopping.max_tokens");
  }
  return Status::Ok();
}

}  // namespace tandem

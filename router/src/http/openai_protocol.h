// The OpenAI-compatible HTTP protocol: request bodies of POST /v1/completions and
// /v1/chat/completions parsed into tandem.v1 Generate requests, and the JSON objects answered
// (whole responses, server-sent-event chunks, errors). No I/O here.
//
// Parameters: max_tokens (chat also max_completion_tokens), temperature, top_p, n, stream,
// stream_options.include_usage, stop (string or list), seed, presence_penalty,
// frequency_penalty, logprobs (completions: 0–5 alternatives; chat: bool with top_logprobs
// 0–20), echo (completions), user (ignored); extensions top_k, min_p, repetition_penalty,
// ignore_eos, stop_token_ids. Unknown fields are ignored; known ones Tandem cannot honour
// (tools, logit_bias, suffix, best_of > n, a non-text response_format) are refused.
// Defaults are OpenAI's: temperature 1, top_p 1, n 1, completions max_tokens 16; chat
// max_tokens as many as fit (the rest of the context), at most ProtocolLimits::chat_max_tokens
// when set.
//
// Thread safety: plain functions over their arguments.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/common/status.h"
#include "tandem/engine/tokenizer.h"
#include "tandem/router/request_limits.h"
#include "tandem/v1/generate.pb.h"

namespace tandem::http {

enum class ApiKind { kCompletion, kChat };

// An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // "" = null
  std::string code;   // "" = null
  nlohmann::json ToJson() const;
};

struct ProtocolLimits {
  // The served model's name (the "model" field must equal it when present).
  std::string model;
  // Cap of chat's default max_tokens; 0 = none (the rest of the context). Default: 0.
  int32_t chat_max_tokens = 0;
  // The router's request bounds: prompts × n (max_choices), and every call's stop strings,
  // stop ids and prompt bytes (ValidateRequestBounds). Defaults: see RequestLimits.
  RequestLimits bounds;
};

// One parsed request. `calls` holds one Generate request per choice: choice index
// = prompt index × n + sample index (completions may carry several prompts).
struct OpenAiRequest {
  ApiKind kind = ApiKind::kCompletion;
  bool stream = false;
  bool include_usage = false;
  int32_t n = 1;
  // Completions: alternatives per token (0–5) when logprobs was given; chat: top_logprobs.
  std::optional<int32_t> logprobs;
  // Completions with echo: each prompt's text, put before its choices' text.
  std::vector<std::string> echo;
  std::vector<v1::GenerateRequest> calls;
  // max_tokens was not given and must be fitted to the prompt (chat): the calls carry 0.
  int32_t fit_max_tokens = 0;
};

// Parses and validates a request body. On error fills `*error` and returns nullopt.
std::optional<OpenAiRequest> ParseRequest(ApiKind kind, const std::string& body,
                                          const ProtocolLimits& limits, ApiError* error);

// "stop" | "length" for a finish reason.
const char* FinishReasonName(v1::FinishReason reason);

// Error for a Generate call that ended with `status` (the router's tandem.v1 field names in
// INVALID_ARGUMENT messages become the API's parameter names).
ApiError ErrorForStatus(const Status& status);

// Accumulates one choice's logprobs in the API's format for the given kind.
class LogprobsBuilder {
 public:
  LogprobsBuilder(ApiKind kind, const Tokenizer* tokenizer, int32_t text_offset)
      : kind_(kind), tokenizer_(tokenizer), offset_(text_offset) {}
  // Adds the entries of `chunk` (token ids with their logprobs).
  void Add(const v1::GenerateChunk& chunk);
  // The entries added since the last Take (for a stream chunk), in the API's format.
  nlohmann::json Take();
  // Every entry (for a whole response).
  nlohmann::json All() const;

 private:
  nlohmann::json Format(size_t from, size_t to) const;

  ApiKind kind_;
  const Tokenizer* tokenizer_;
  int32_t offset_;
  std::vector<int32_t> ids_;
  std::vector<v1::TokenLogprobs> lps_;
  std::vector<int32_t> offsets_;
  size_t taken_ = 0;
};

// The served model as GET /v1/models lists it.
nlohmann::json ModelCard(const std::string& model, int64_t created, int64_t max_context_tokens);

// Serializes for the wire (invalid UTF-8 replaced, never thrown).
std::string Dump(const nlohmann::json& j);

}  // namespace tandem::http

#include "openai_protocol.h"

#include <cmath>
#include <limits>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "tandem/router/request_validation.h"

namespace tandem::http {
namespace {

using json = nlohmann::json;

// A parse failure that unwinds to ParseRequest (inside this file only).
struct Bad {
  std::string param;
  std::string message;
};

[[noreturn]] void Fail(const std::string& param, const std::string& message) {
  throw Bad{param, message};
}

const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> Number(const json& body, const char* name) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) Fail(name, fmt::format("'{}' must be a number", name));
  const double d = v->get<double>();
  if (!std::isfinite(d)) Fail(name, fmt::format("'{}' must be finite", name));
  return d;
}

std::optional<int64_t> Integer(const json& body, const char* name) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) {
      return static_cast<int64_t>(d);
    }
  }
  Fail(name, fmt::format("'{}' must be an integer", name));
}

std::optional<bool> Boolean(const json& body, const char* name) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) Fail(name, fmt::format("'{}' must be a boolean", name));
  return v->get<bool>();
}

double InRange(std::optional<double> v, const char* name, double lo, double hi, double dflt) {
  if (!v) return dflt;
  if (*v < lo || *v > hi)
    Fail(name, fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, *v));
  return *v;
}

int64_t IntInRange(std::optional<int64_t> v, const char* name, int64_t lo, int64_t hi,
                   int64_t dflt) {
  if (!v) return dflt;
  if (*v < lo || *v > hi)
    Fail(name, fmt::format("'{}' must be in [{}, {}], got {}", name, lo, hi, *v));
  return *v;
}

std::vector<int32_t> TokenIds(const json& arr, const char* param) {
  std::vector<int32_t> ids;
  for (const json& t : arr) {
    if (!t.is_number_integer()) Fail(param, "token id lists must hold integers");
    const int64_t id = t.get<int64_t>();
    if (id < 0 || id > INT32_MAX) Fail(param, fmt::format("token id {} is out of range", id));
    ids.push_back(static_cast<int32_t>(id));
  }
  if (ids.empty()) Fail(param, "a token id list must not be empty");
  return ids;
}

// Completions "prompt": a string, a list of strings, a list of ids or a list of id lists.
// Returns one input per prompt (its text, or its ids), each as a GenerateRequest.
// At most `max_prompts` (the request's choice bound), checked as they are read.
std::vector<v1::GenerateRequest> Prompts(const json& body, int32_t max_prompts,
                                         std::vector<std::string>* texts) {
  const json* p = Field(body, "prompt");
  if (p == nullptr) Fail("prompt", "'prompt' is required");
  std::vector<v1::GenerateRequest> out;
  auto check_count = [&] {
    if (static_cast<int64_t>(out.size()) >= max_prompts) {
      Fail("prompt", fmt::format("at most {} prompts per request", max_prompts));
    }
  };
  auto add_text = [&](const json& s) {
    check_count();
    if (s.get_ref<const std::string&>().empty()) Fail("prompt", "'prompt' must not be empty");
    v1::GenerateRequest r;
    r.set_text(s.get<std::string>());
    texts->push_back(r.text());
    out.push_back(std::move(r));
  };
  auto add_ids = [&](const json& a) {
    check_count();
    v1::GenerateRequest r;
    for (int32_t id : TokenIds(a, "prompt")) r.mutable_token_ids()->add_ids(id);
    texts->push_back("");
    out.push_back(std::move(r));
  };
  if (p->is_string()) {
    add_text(*p);
  } else if (p->is_array() && !p->empty() && (*p)[0].is_number()) {
    add_ids(*p);
  } else if (p->is_array() && !p->empty()) {
    for (const json& e : *p) {
      if (e.is_string()) {
        add_text(e);
      } else if (e.is_array()) {
        add_ids(e);
      } else {
        Fail("prompt", "'prompt' lists must hold strings or token id lists");
      }
    }
  } else {
    Fail("prompt", "'prompt' must be a string, a list of strings or token ids, and not empty");
  }
  return out;
}

// Chat "messages": roles system / developer / user / assistant; content a string or a list of
// {"type": "text", "text": ...} parts.
v1::GenerateRequest Messages(const json& body) {
  const json* m = Field(body, "messages");
  if (m == nullptr) Fail("messages", "'messages' is required");
  if (!m->is_array() || m->empty()) Fail("messages", "'messages' must be a non-empty list");
  v1::GenerateRequest r;
  for (size_t i = 0; i < m->size(); ++i) {
    const json& msg = (*m)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!msg.is_object()) Fail(where, fmt::format("'{}' must be an object", where));
    const json* role = Field(msg, "role");
    if (role == nullptr || !role->is_string()) {
      Fail(where + ".role", fmt::format("'{}.role' must be a string", where));
    }
    std::string role_name = role->get<std::string>();
    if (role_name == "developer") role_name = "system";
    if (role_name != "system" && role_name != "user" && role_name != "assistant") {
      Fail(where + ".role",
           fmt::format("'{}.role' must be system, developer, user or assistant, got '{}'", where,
                       role_name));
    }
    std::string text;
    const json* content = Field(msg, "content");
    if (content == nullptr) {
      Fail(where + ".content", fmt::format("'{}.content' is required", where));
    } else if (content->is_string()) {
      text = content->get<std::string>();
    } else if (content->is_array()) {
      for (const json& part : *content) {
        const json* type = part.is_object() ? Field(part, "type") : nullptr;
        const json* t = part.is_object() ? Field(part, "text") : nullptr;
        if (type == nullptr || *type != "text" || t == nullptr || !t->is_string()) {
          Fail(where + ".content", "only text content parts ({\"type\": \"text\"}) are supported");
        }
        text += t->get<std::string>();
      }
    } else {
      Fail(where + ".content", fmt::format("'{}.content' must be a string or a list", where));
    }
    v1::ChatMessage* cm = r.mutable_chat()->add_messages();
    cm->set_role(role_name);
    cm->set_content(std::move(text));
  }
  return r;
}

void Unsupported(const json& body, const char* name, bool allowed_when_empty = true) {
  const json* v = Field(body, name);
  if (v == nullptr) return;
  if (allowed_when_empty && (v->empty() || (v->is_boolean() && !v->get<bool>()))) return;
  Fail(name, fmt::format("'{}' is not supported by this server", name));
}

std::vector<std::string> Stops(const json& body) {
  const json* s = Field(body, "stop");
  std::vector<std::string> out;
  if (s == nullptr) return out;
  if (s->is_string()) {
    out.push_back(s->get<std::string>());
  } else if (s->is_array()) {
    for (const json& e : *s) {
      if (!e.is_string()) Fail("stop", "'stop' lists must hold strings");
      out.push_back(e.get<std::string>());
    }
  } else {
    Fail("stop", "'stop' must be a string or a list of strings");
  }
  for (const auto& e : out) {
    if (e.empty()) Fail("stop", "stop strings must not be empty");
  }
  return out;
}

OpenAiRequest Parse(ApiKind kind, const json& body, const ProtocolLimits& limits) {
  if (!body.is_object()) Fail("", "the request body must be a JSON object");
  OpenAiRequest req;
  req.kind = kind;
  if (const json* model = Field(body, "model")) {
    if (!model->is_string()) Fail("model", "'model' must be a string");
    if (model->get<std::string>() != limits.model) {
      throw ApiError{404,
                     fmt::format("The model '{}' does not exist; this server serves '{}'",
                                 model->get<std::string>(), limits.model),
                     "invalid_request_error", "model", "model_not_found"};
    }
  }
  for (const char* name : {"tools", "functions", "logit_bias", "suffix"}) Unsupported(body, name);
  if (const json* rf = Field(body, "response_format")) {
    const json* type = rf->is_object() ? Field(*rf, "type") : nullptr;
    if (type == nullptr || *type != "text") {
      Fail("response_format", "only response_format {\"type\": \"text\"} is supported");
    }
  }

  std::vector<v1::GenerateRequest> inputs;
  std::vector<std::string> texts;
  if (kind == ApiKind::kCompletion) {
    inputs = Prompts(body, limits.bounds.max_choices, &texts);
  } else {
    inputs.push_back(Messages(body));
  }

  req.stream = Boolean(body, "stream").value_or(false);
  if (const json* so = Field(body, "stream_options")) {
    if (!req.stream) Fail("stream_options", "'stream_options' is only allowed with stream: true");
    if (!so->is_object()) Fail("stream_options", "'stream_options' must be an object");
    req.include_usage = Boolean(*so, "include_usage").value_or(false);
  }
  req.n = static_cast<int32_t>(IntInRange(Integer(body, "n"), "n", 1, 32, 1));
  if (auto best_of = Integer(body, "best_of"); best_of && *best_of != req.n) {
    Fail("best_of", "'best_of' other than n is not supported");
  }

  // Token budget.
  std::optional<int64_t> max_tokens = Integer(body, "max_tokens");
  if (kind == ApiKind::kChat) {
    if (auto mct = Integer(body, "max_completion_tokens")) max_tokens = mct;
  }
  const char* max_name =
      kind == ApiKind::kChat && !Field(body, "max_tokens") ? "max_completion_tokens" : "max_tokens";
  if (max_tokens && (*max_tokens < 1 || *max_tokens > (int64_t{1} << 30))) {
    Fail(max_name, fmt::format("'{}' must be >= 1, got {}", max_name, *max_tokens));
  }
  int32_t budget = 16;
  if (max_tokens) {
    budget = static_cast<int32_t>(*max_tokens);
  } else if (kind == ApiKind::kChat) {
    budget = 0;  // as many as fit (the rest of the context), at most the limit if any
    req.fit_max_tokens =
        limits.chat_max_tokens > 0 ? limits.chat_max_tokens : std::numeric_limits<int32_t>::max();
  }

  // Sampling.
  v1::SamplingParameters s;
  s.set_temperature(
      static_cast<float>(InRange(Number(body, "temperature"), "temperature", 0, 2, 1)));
  const double top_p = InRange(Number(body, "top_p"), "top_p", 0, 1, 1);
  if (top_p <= 0) Fail("top_p", "'top_p' must be in (0, 1]");
  s.set_top_p(static_cast<float>(top_p));
  int64_t top_k = IntInRange(Integer(body, "top_k"), "top_k", -1, INT32_MAX, 0);
  s.set_top_k(top_k < 0 ? 0 : static_cast<int32_t>(top_k));  // -1 = off, as vLLM takes it
  s.set_min_p(static_cast<float>(InRange(Number(body, "min_p"), "min_p", 0, 1, 0)));
  const double rep = InRange(Number(body, "repetition_penalty"), "repetition_penalty", 0, 100, 1);
  if (rep <= 0) Fail("repetition_penalty", "'repetition_penalty' must be > 0");
  s.set_repetition_penalty(static_cast<float>(rep));
  s.set_presence_penalty(
      static_cast<float>(InRange(Number(body, "presence_penalty"), "presence_penalty", -2, 2, 0)));
  s.set_frequency_penalty(static_cast<float>(
      InRange(Number(body, "frequency_penalty"), "frequency_penalty", -2, 2, 0)));
  std::optional<uint64_t> seed;
  if (auto sd = Integer(body, "seed")) seed = static_cast<uint64_t>(*sd);

  v1::StoppingCriteria stopping;
  stopping.set_max_tokens(budget);
  for (auto& stop : Stops(body)) stopping.add_stop(std::move(stop));
  stopping.set_ignore_eos(Boolean(body, "ignore_eos").value_or(false));
  if (const json* ids = Field(body, "stop_token_ids")) {
    if (!ids->is_array()) Fail("stop_token_ids", "'stop_token_ids' must be a list of integers");
    if (!ids->empty()) {
      for (int32_t id : TokenIds(*ids, "stop_token_ids")) stopping.add_stop_token_ids(id);
    }
  }

  // Log-probabilities.
  bool want_logprobs = false;
  int32_t top = 0;
  if (kind == ApiKind::kCompletion) {
    if (auto lp = Integer(body, "logprobs")) {
      want_logprobs = true;
      top = static_cast<int32_t>(IntInRange(lp, "logprobs", 0, 5, 0));
    }
    if (Boolean(body, "echo").value_or(false)) {
      if (want_logprobs) Fail("echo", "'echo' together with 'logprobs' is not supported");
      req.echo = texts;
      for (const auto& t : texts) {
        if (t.empty()) Fail("echo", "'echo' needs text prompts, not token ids");
      }
    }
  } else {
    want_logprobs = Boolean(body, "logprobs").value_or(false);
    if (auto tl = Integer(body, "top_logprobs")) {
      if (!want_logprobs) Fail("top_logprobs", "'top_logprobs' requires 'logprobs': true");
      top = static_cast<int32_t>(IntInRange(tl, "top_logprobs", 0, 20, 0));
    }
  }
  if (want_logprobs) req.logprobs = top;

  const int64_t choices = static_cast<int64_t>(inputs.size()) * req.n;
  if (choices > limits.bounds.max_choices) {
    Fail(req.n > 1 ? "n" : "prompt",
         fmt::format("a request may ask for at most {} choices (prompts x n), got {} x {}",
                     limits.bounds.max_choices, inputs.size(), req.n));
  }
  for (auto& in : inputs) {
    // Stop strings, stop ids and the prompt's size, as the gRPC API checks them.
    v1::GenerateRequest probe = in;
    *probe.mutable_stopping() = stopping;
    if (Status st = ValidateRequestBounds(probe, limits.bounds); !st.ok()) {
      throw ErrorForStatus(st);
    }
  }
  for (auto& in : inputs) {
    for (int32_t j = 0; j < req.n; ++j) {
      v1::GenerateRequest r = in;
      *r.mutable_sampling() = s;
      if (seed) r.mutable_sampling()->set_seed(*seed + static_cast<uint64_t>(j));
      *r.mutable_stopping() = stopping;
      r.set_logprobs(want_logprobs);
      r.set_top_logprobs(top);
      req.calls.push_back(std::move(r));
    }
  }
  return req;
}

std::string TokenText(const Tokenizer* tok, int32_t id) {
  return tok == nullptr ? std::string() : tok->TokenBytes(id);
}

json Bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

}  // namespace

json ApiError::ToJson() const {
  json e = {{"message", message}, {"type", type}};
  e["param"] = param.empty() ? json(nullptr) : json(param);
  e["code"] = code.empty() ? json(nullptr) : json(code);
  return json{{"error", e}};
}

std::optional<OpenAiRequest> ParseRequest(ApiKind kind, const std::string& body,
                                          const ProtocolLimits& limits, ApiError* error) {
  json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    *error = ApiError{400, "The request body is not valid JSON", "invalid_request_error", "",
                      "invalid_json"};
    return std::nullopt;
  }
  try {
    return Parse(kind, parsed, limits);
  } catch (const Bad& b) {
    *error = ApiError{400, b.message, "invalid_request_error", b.param, ""};
  } catch (const ApiError& e) {
    *error = e;
  } catch (const json::exception& e) {
    *error = ApiError{400, fmt::format("bad request body: {}", e.what()), "invalid_request_error",
                      "", ""};
  }
  return std::nullopt;
}

const char* FinishReasonName(v1::FinishReason reason) {
  return reason == v1::FINISH_REASON_LENGTH ? "length" : "stop";
}

namespace {

// The API's name for a tandem.v1 field path (Status::field()); empty when the API has none.
std::string ApiFieldName(const std::string& path) {
  static const std::pair<std::string_view, std::string_view> kNames[] = {
      {"stopping.max_tokens", "max_tokens"},
      {"stopping.stop_token_ids", "stop_token_ids"},
      {"stopping.stop", "stop"},
      {"chat.messages", "messages"},
      {"token_ids.ids", "prompt"},
      {"text", "prompt"},
      {"input", "prompt"},
      {"top_logprobs", "top_logprobs"}};
  for (const auto& [ours, theirs] : kNames) {
    if (path == ours) return std::string(theirs);
  }
  constexpr std::string_view kSampling = "sampling.";  // sampling.<name>: the same name
  if (path.compare(0, kSampling.size(), kSampling) == 0) return path.substr(kSampling.size());
  return "";
}

}  // namespace

ApiError ErrorForStatus(const Status& status) {
  const StatusCode code = status.code();
  ApiError e;
  e.message = status.message();
  // The router's errors carry the tandem.v1 field path; say the API's name, in `param` and in
  // place of the path where the message starts with it.
  if (const std::string& path = status.field(); !path.empty()) {
    e.param = ApiFieldName(path);
    if (!e.param.empty() && e.message.compare(0, path.size(), path) == 0) {
      e.message = e.param + e.message.substr(path.size());
    }
  }
  switch (code) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kFailedPrecondition:  // e.g. no chat template
    case StatusCode::kOutOfRange:
      e.http_status = 400;
      break;
    case StatusCode::kNotFound:
      e.http_status = 404;
      e.type = "not_found_error";
      break;
    case StatusCode::kResourceExhausted:
      e.http_status = 429;
      e.type = "rate_limit_error";
      break;
    case StatusCode::kUnavailable:
      e.http_status = 503;
      e.type = "service_unavailable";
      break;
    case StatusCode::kDeadlineExceeded:
      e.http_status = 504;
      e.type = "timeout";
      break;
    case StatusCode::kUnauthenticated:
      e.http_status = 401;
      e.type = "authentication_error";
      break;
    case StatusCode::kCancelled:
      e.http_status = 499;
      e.type = "cancelled";
      break;
    default:
      e.http_status = 500;
      e.type = "internal_error";
      break;
  }
  return e;
}

void LogprobsBuilder::Add(const v1::GenerateChunk& chunk) {
  for (int i = 0; i < chunk.token_ids_size(); ++i) {
    ids_.push_back(chunk.token_ids(i));
    lps_.push_back(i < chunk.logprobs_size() ? chunk.logprobs(i) : v1::TokenLogprobs());
    offsets_.push_back(offset_);
    offset_ += static_cast<int32_t>(TokenText(tokenizer_, chunk.token_ids(i)).size());
  }
}

json LogprobsBuilder::Take() {
  json j = Format(taken_, ids_.size());
  taken_ = ids_.size();
  return j;
}

json LogprobsBuilder::All() const { return Format(0, ids_.size()); }

json LogprobsBuilder::Format(size_t from, size_t to) const {
  if (kind_ == ApiKind::kChat) {
    json content = json::array();
    for (size_t i = from; i < to; ++i) {
      const std::string t = TokenText(tokenizer_, ids_[i]);
      json top = json::array();
      for (const auto& alt : lps_[i].top()) {
        const std::string at = TokenText(tokenizer_, alt.token_id());
        top.push_back({{"token", at}, {"logprob", alt.logprob()}, {"bytes", Bytes(at)}});
      }
      content.push_back({{"token", t},
                         {"logprob", lps_[i].logprob()},
                         {"bytes", Bytes(t)},
                         {"top_logprobs", top}});
    }
    return json{{"content", content}};
  }
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(),
       text_offset = json::array();
  for (size_t i = from; i < to; ++i) {
    tokens.push_back(TokenText(tokenizer_, ids_[i]));
    token_logprobs.push_back(lps_[i].logprob());
    json top = json::object();
    for (const auto& alt : lps_[i].top())
      top[TokenText(tokenizer_, alt.token_id())] = alt.logprob();
    top_logprobs.push_back(top);
    text_offset.push_back(offsets_[i]);
  }
  return json{{"tokens", tokens},
              {"token_logprobs", token_logprobs},
              {"top_logprobs", top_logprobs},
              {"text_offset", text_offset}};
}

json ModelCard(const std::string& model, int64_t created, int64_t max_context_tokens) {
  return {{"id", model},
          {"object", "model"},
          {"created", created},
          {"owned_by", "tandem"},
          {"max_model_len", max_context_tokens}};
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace tandem::http

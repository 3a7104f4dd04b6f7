// The OpenAI request parser and error mapping (no server: plain functions).
#include "../../router/src/http/openai_protocol.h"

#include <gtest/gtest.h>

#include <limits>

namespace tandem::http {
namespace {

ProtocolLimits Limits() {
  ProtocolLimits l;
  l.model = "SmolLM2-135M-Instruct";
  l.chat_max_tokens = 300;
  return l;
}

OpenAiRequest Ok(ApiKind kind, const std::string& body) {
  ApiError e;
  auto r = ParseRequest(kind, body, Limits(), &e);
  EXPECT_TRUE(r.has_value()) << body << " -> " << e.message;
  return r.value_or(OpenAiRequest{});
}

ApiError Bad(ApiKind kind, const std::string& body) {
  ApiError e;
  auto r = ParseRequest(kind, body, Limits(), &e);
  EXPECT_FALSE(r.has_value()) << body;
  return e;
}

TEST(OpenAiProtocolTest, CompletionDefaultsAreOpenAis) {
  OpenAiRequest r =
      Ok(ApiKind::kCompletion, R"({"model": "SmolLM2-135M-Instruct", "prompt": "hi"})");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].text(), "hi");
  EXPECT_FLOAT_EQ(r.calls[0].sampling().temperature(), 1.0f);
  EXPECT_FLOAT_EQ(r.calls[0].sampling().top_p(), 1.0f);
  EXPECT_FALSE(r.calls[0].sampling().has_seed());
  EXPECT_EQ(r.calls[0].stopping().max_tokens(), 16);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.logprobs.has_value());
  EXPECT_EQ(r.fit_max_tokens, 0);
}

TEST(OpenAiProtocolTest, PromptsAndNGiveOneCallPerChoiceWithConsecutiveSeeds) {
  OpenAiRequest r = Ok(ApiKind::kCompletion,
                       R"({"prompt": ["a", [5, 6, 7]], "n": 3, "seed": 10, "max_tokens": 4,
                           "stop": "x", "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2,
                           "ignore_eos": true, "stop_token_ids": [9], "logprobs": 2})");
  ASSERT_EQ(r.calls.size(), 6u);
  EXPECT_EQ(r.calls[0].text(), "a");
  EXPECT_EQ(r.calls[3].token_ids().ids_size(), 3);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(r.calls[i].sampling().seed(), 10u + i % 3) << i;
    EXPECT_EQ(r.calls[i].stopping().max_tokens(), 4);
    EXPECT_EQ(r.calls[i].stopping().stop(0), "x");
    EXPECT_EQ(r.calls[i].stopping().stop_token_ids(0), 9);
    EXPECT_TRUE(r.calls[i].stopping().ignore_eos());
    EXPECT_EQ(r.calls[i].sampling().top_k(), 5);
    EXPECT_TRUE(r.calls[i].logprobs());
    EXPECT_EQ(r.calls[i].top_logprobs(), 2);
  }
  EXPECT_EQ(r.logprobs, 2);
}

TEST(OpenAiProtocolTest, ChatMessagesAndDefaults) {
  OpenAiRequest r = Ok(ApiKind::kChat, R"({"messages": [
      {"role": "developer", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
      "stream": true, "stream_options": {"include_usage": true},
      "logprobs": true, "top_logprobs": 3})");
  ASSERT_EQ(r.calls.size(), 1u);
  const auto& m = r.calls[0].chat().messages();
  ASSERT_EQ(m.size(), 2);
  EXPECT_EQ(m[0].role(), "system");
  EXPECT_EQ(m[1].content(), "ab");
  EXPECT_EQ(r.calls[0].stopping().max_tokens(), 0);  // fitted by the call
  EXPECT_EQ(r.fit_max_tokens, 300);
  EXPECT_TRUE(r.stream && r.include_usage);
  EXPECT_EQ(r.logprobs, 3);
  // max_completion_tokens is the newer name of max_tokens.
  r = Ok(ApiKind::kChat, R"({"messages": [{"role": "user", "content": "x"}],
                              "max_completion_tokens": 7})");
  EXPECT_EQ(r.calls[0].stopping().max_tokens(), 7);
  EXPECT_EQ(r.fit_max_tokens, 0);
  // No cap (the default): chat's max_tokens is the rest of the context.
  ProtocolLimits uncapped = Limits();
  uncapped.chat_max_tokens = 0;
  ApiError e;
  auto rest = ParseRequest(ApiKind::kChat, R"({"messages": [{"role": "user", "content": "x"}]})",
                           uncapped, &e);
  ASSERT_TRUE(rest.has_value()) << e.message;
  EXPECT_EQ(rest->calls[0].stopping().max_tokens(), 0);
  EXPECT_EQ(rest->fit_max_tokens, std::numeric_limits<int32_t>::max());
}

TEST(OpenAiProtocolTest, BadValuesNameTheirParameter) {
  struct Case {
    ApiKind kind;
    const char* body;
    const char* param;
  } cases[] = {
      {ApiKind::kCompletion, R"({"prompt": "x", "temperature": 2.5})", "temperature"},
      {ApiKind::kCompletion, R"({"prompt": "x", "temperature": "hot"})", "temperature"},
      {ApiKind::kCompletion, R"({"prompt": "x", "top_p": 0})", "top_p"},
      {ApiKind::kCompletion, R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {ApiKind::kCompletion, R"({"prompt": "x", "max_tokens": 1.5})", "max_tokens"},
      {ApiKind::kCompletion, R"({"prompt": "x", "n": 0})", "n"},
      {ApiKind::kCompletion, R"({"prompt": "x", "presence_penalty": 3})", "presence_penalty"},
      {ApiKind::kCompletion, R"({"prompt": "x", "logprobs": 9})", "logprobs"},
      {ApiKind::kCompletion, R"({"prompt": "x", "stop": [1]})", "stop"},
      {ApiKind::kCompletion, R"({"prompt": "x", "stream_options": {}})", "stream_options"},
      {ApiKind::kCompletion, R"({"prompt": "x", "logit_bias": {"5": 1}})", "logit_bias"},
      {ApiKind::kCompletion, R"({"prompt": ""})", "prompt"},
      {ApiKind::kCompletion, R"({"prompt": [[]]})", "prompt"},
      {ApiKind::kCompletion, R"({})", "prompt"},
      {ApiKind::kChat, R"({"messages": []})", "messages"},
      {ApiKind::kChat, R"({"messages": [{"role": "tool", "content": "x"}]})", "messages[0].role"},
      {ApiKind::kChat, R"({"messages": [{"role": "user"}]})", "messages[0].content"},
      {ApiKind::kChat, R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})",
       "top_logprobs"},
      {ApiKind::kChat, R"({"messages": [{"role": "user", "content": "x"}], "tools": [{}]})",
       "tools"},
  };
  for (const auto& c : cases) {
    ApiError e = Bad(c.kind, c.body);
    EXPECT_EQ(e.http_status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << " -> " << e.message;
    EXPECT_FALSE(e.message.empty());
    EXPECT_EQ(e.ToJson()["error"]["param"], c.param);
  }
}

// The router's RequestLimits reach the HTTP API with its parameter names: prompts x n as a
// total, stop strings (count and bytes), stop ids and prompt bytes.
TEST(OpenAiProtocolTest, RequestLimitsNameTheirParameter) {
  ProtocolLimits l = Limits();
  l.bounds.max_choices = 4;
  l.bounds.max_stop_strings = 2;
  l.bounds.max_stop_string_bytes = 3;
  l.bounds.max_stop_token_ids = 1;
  l.bounds.max_prompt_bytes = 5;
  struct Case {
    ApiKind kind;
    const char* body;
    const char* param;
  } cases[] = {
      {ApiKind::kCompletion, R"({"prompt": ["a", "b"], "n": 3})", "n"},
      {ApiKind::kCompletion, R"({"prompt": ["a", "b", "c", "d", "e"]})", "prompt"},
      {ApiKind::kCompletion, R"({"prompt": "a", "stop": ["x", "y", "z"]})", "stop"},
      {ApiKind::kCompletion, R"({"prompt": "a", "stop": "long"})", "stop"},
      {ApiKind::kCompletion, R"({"prompt": "a", "stop_token_ids": [1, 2]})", "stop_token_ids"},
      {ApiKind::kCompletion, R"({"prompt": "123456"})", "prompt"},
      {ApiKind::kChat, R"({"messages": [{"role": "user", "content": "12"}]})", "messages"},
  };
  for (const auto& c : cases) {
    ApiError e;
    EXPECT_FALSE(ParseRequest(c.kind, c.body, l, &e).has_value()) << c.body;
    EXPECT_EQ(e.http_status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << " -> " << e.message;
  }
  ApiError e;
  EXPECT_TRUE(ParseRequest(ApiKind::kCompletion,
                           R"({"prompt": ["a", "b"], "n": 2, "stop": ["x", "yyy"]})", l, &e)
                  .has_value())
      << e.message;
}

TEST(OpenAiProtocolTest, MalformedJsonAndUnknownModel) {
  ApiError e = Bad(ApiKind::kCompletion, "{\"prompt\": ");
  EXPECT_EQ(e.http_status, 400);
  EXPECT_EQ(e.code, "invalid_json");
  EXPECT_TRUE(e.ToJson()["error"]["param"].is_null());
  e = Bad(ApiKind::kChat, R"({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})");
  EXPECT_EQ(e.http_status, 404);
  EXPECT_EQ(e.code, "model_not_found");
  EXPECT_NE(e.message.find("gpt-4o"), std::string::npos);
  e = Bad(ApiKind::kChat, "[1, 2]");
  EXPECT_EQ(e.http_status, 400);
}

TEST(OpenAiProtocolTest, CallErrorsMapToHttpStatusesAndApiNames) {
  EXPECT_EQ(ErrorForStatus(ResourceExhaustedError("queue full")).http_status, 429);
  EXPECT_EQ(ErrorForStatus(UnavailableError("no worker")).http_status, 503);
  EXPECT_EQ(ErrorForStatus(DeadlineExceededError("late")).http_status, 504);
  EXPECT_EQ(ErrorForStatus(UnauthenticatedError("key")).http_status, 401);
  EXPECT_EQ(ErrorForStatus(InternalError("bug")).http_status, 500);
  // The field path travels in the status (Status::field()), never parsed from the message.
  ApiError e = ErrorForStatus(
      InvalidArgumentError(
          "stopping.max_tokens: prompt (3 tokens) + max_tokens (9000) exceeds the context (8192)")
          .WithField("stopping.max_tokens"));
  EXPECT_EQ(e.http_status, 400);
  EXPECT_EQ(e.param, "max_tokens");
  EXPECT_EQ(e.message.rfind("max_tokens: prompt", 0), 0u) << e.message;
  e = ErrorForStatus(
      InvalidArgumentError("sampling.top_k must be >= 0, got -3").WithField("sampling.top_k"));
  EXPECT_EQ(e.param, "top_k");
  EXPECT_EQ(e.message, "top_k must be >= 0, got -3");
  e = ErrorForStatus(InvalidArgumentError("prompt is empty after tokenization").WithField("text"));
  EXPECT_EQ(e.param, "prompt");
  EXPECT_EQ(e.message, "prompt is empty after tokenization");
  e = ErrorForStatus(
      InvalidArgumentError("chat.messages must not be empty").WithField("chat.messages"));
  EXPECT_EQ(e.param, "messages");
  EXPECT_EQ(e.message, "messages must not be empty");
  // A message that merely starts like a field names no parameter.
  e = ErrorForStatus(InvalidArgumentError("sampling.top_k must be >= 0, got -3"));
  EXPECT_EQ(e.http_status, 400);
  EXPECT_TRUE(e.param.empty());
  // A field the API has no name for: no param, the message as it is.
  e = ErrorForStatus(InvalidArgumentError("request_id must be printable").WithField("request_id"));
  EXPECT_TRUE(e.param.empty());
  EXPECT_EQ(e.message, "request_id must be printable");
}

}  // namespace
}  // namespace tandem::http

#include "tandem/router/request_validation.h"

#include <functional>

#include <gtest/gtest.h>

namespace tandem {
namespace {

TEST(RequestValidationTest, NamesTheField) {
  v1::GenerateRequest r;
  r.set_text("hi");
  r.mutable_stopping()->set_max_tokens(4);
  EXPECT_TRUE(ValidateGenerateRequest(r).ok());
  r.mutable_sampling()->set_min_p(2.0f);
  Status st = ValidateGenerateRequest(r);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("sampling.min_p"), std::string::npos);
  EXPECT_EQ(st.field(), "sampling.min_p");
  r.mutable_sampling()->set_min_p(0.0f);
  r.mutable_stopping()->set_max_tokens(0);
  EXPECT_EQ(ValidateGenerateRequest(r).field(), "stopping.max_tokens");
  r.clear_text();
  EXPECT_EQ(ValidateGenerateRequest(r).field(), "input");
  EXPECT_EQ(ValidatePrompt({1, 2, 3}, 8190, 8192, 100).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidatePrompt({1, 2, 3}, 8190, 8192, 100).field(), "stopping.max_tokens");
  EXPECT_EQ(ValidatePrompt({1, 200}, 1, 8192, 100).field(), "token_ids.ids");
  EXPECT_TRUE(ValidatePrompt({1, 2, 3}, 8189, 8192, 100).ok());
}

// OpenAI's rule, as the HTTP API and the workers keep it: alternatives come with logprobs.
TEST(RequestValidationTest, TopLogprobsNeedLogprobs) {
  v1::GenerateRequest r;
  r.set_text("hi");
  r.mutable_stopping()->set_max_tokens(4);
  r.set_top_logprobs(3);
  Status st = ValidateGenerateRequest(r);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("top_logprobs"), std::string::npos) << st.message();
  r.set_logprobs(true);
  EXPECT_TRUE(ValidateGenerateRequest(r).ok());
  r.set_top_logprobs(21);
  EXPECT_EQ(ValidateGenerateRequest(r).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateGenerateRequest(r).field(), "top_logprobs");
}

// RequestLimits: every bound is INVALID_ARGUMENT naming its field, and a request at the bound
// passes.
TEST(RequestValidationTest, BoundsNameTheirField) {
  RequestLimits lim;
  lim.max_stop_strings = 2;
  lim.max_stop_string_bytes = 4;
  lim.max_stop_token_ids = 2;
  lim.max_prompt_bytes = 8;
  lim.max_request_id_bytes = 6;
  v1::GenerateRequest ok;
  ok.set_text("12345678");
  ok.set_request_id("abc-12");
  ok.mutable_stopping()->add_stop("abcd");
  ok.mutable_stopping()->add_stop("x");
  ok.mutable_stopping()->add_stop_token_ids(1);
  ok.mutable_stopping()->add_stop_token_ids(2);
  EXPECT_TRUE(ValidateRequestBounds(ok, lim).ok());
  struct Case {
    const char* field;
    std::function<void(v1::GenerateRequest&)> change;
  } cases[] = {
      {"stopping.stop ", [](auto& r) { r.mutable_stopping()->add_stop("y"); }},
      {"stopping.stop ", [](auto& r) { r.mutable_stopping()->set_stop(1, "abcde"); }},
      {"stopping.stop_token_ids ", [](auto& r) { r.mutable_stopping()->add_stop_token_ids(3); }},
      {"text: ", [](auto& r) { r.set_text("123456789"); }},
      {"chat.messages: ",
       [](auto& r) {
         auto* m = r.mutable_chat()->add_messages();
         m->set_role("user");
         m->set_content("12345");
       }},
      {"request_id ", [](auto& r) { r.set_request_id("abc-123"); }},
      {"request_id ", [](auto& r) { r.set_request_id("a b"); }},
      {"request_id ", [](auto& r) { r.set_request_id("a\nb"); }},
  };
  for (const auto& c : cases) {
    v1::GenerateRequest r = ok;
    c.change(r);
    Status st = ValidateRequestBounds(r, lim);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(st.message().rfind(c.field, 0), 0u) << st.message();
    // The path alone: the field name without the message's separator.
    std::string path = c.field;
    while (!path.empty() && (path.back() == ' ' || path.back() == ':')) path.pop_back();
    EXPECT_EQ(st.field(), path) << st.message();
  }
}

}  // namespace
}  // namespace tandem

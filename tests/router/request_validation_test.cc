#include "tandem/router/request_validation.h"

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
  EXPECT_EQ(ValidatePrompt({1, 2, 3}, 8190, 8192, 100).code(), StatusCode::kInvalidArgument);
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
}

}  // namespace
}  // namespace tandem

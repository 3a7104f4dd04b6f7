#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "tandem/engine/sampling.h"

namespace tandem {
namespace {

void ExpectInvalid(const std::function<void(SamplingParams&)>& edit, const std::string& field) {
  SamplingParams p;
  edit(p);
  const Status s = p.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << field;
  EXPECT_EQ(s.message().rfind(field + " ", 0), 0u) << s.message();
  EXPECT_EQ(s.field(), field);
}

TEST(SamplingParamsTest, DefaultsAreValid) { EXPECT_TRUE(SamplingParams().Validate().ok()); }

TEST(SamplingParamsTest, ErrorsNameTheField) {
  ExpectInvalid([](SamplingParams& p) { p.temperature = -0.5f; }, "temperature");
  ExpectInvalid([](SamplingParams& p) { p.temperature = INFINITY; }, "temperature");
  ExpectInvalid([](SamplingParams& p) { p.top_k = -1; }, "top_k");
  ExpectInvalid([](SamplingParams& p) { p.top_p = 1.5f; }, "top_p");
  ExpectInvalid([](SamplingParams& p) { p.top_p = 0.0f; }, "top_p");
  ExpectInvalid([](SamplingParams& p) { p.min_p = -0.1f; }, "min_p");
  ExpectInvalid([](SamplingParams& p) { p.repetition_penalty = 0.0f; }, "repetition_penalty");
  ExpectInvalid([](SamplingParams& p) { p.presence_penalty = 3.0f; }, "presence_penalty");
  ExpectInvalid([](SamplingParams& p) { p.frequency_penalty = -3.0f; }, "frequency_penalty");
  ExpectInvalid([](SamplingParams& p) { p.top_logprobs = 21; }, "top_logprobs");
}

TEST(SamplingParamsTest, MessageShowsTheValue) {
  SamplingParams p;
  p.top_p = 1.5f;
  EXPECT_EQ(p.Validate().message(), "top_p must be in (0, 1], got 1.5");
}

}  // namespace
}  // namespace tandem

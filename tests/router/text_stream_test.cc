#include "tandem/router/text_stream.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tandem/router/request_validation.h"

namespace tandem {
namespace {

std::unique_ptr<Tokenizer> LoadDefault() {
  auto tok = LoadTokenizer(std::string(TANDEM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct");
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

TEST(TextStreamTest, StopStringCutsTextAndEnds) {
  auto tok = LoadDefault();
  ASSERT_NE(tok, nullptr);
  auto ids = tok->Encode("Hello world, this is it.", false);
  ASSERT_TRUE(ids.ok());
  TextStreamOptions o;
  o.max_tokens = 100;
  o.stop_strings = {"this"};
  TextStream s(*tok, o);
  std::string text;
  TextStream::Finish f = TextStream::Finish::kNone;
  for (int32_t id : *ids) {
    f = s.Add(id, &text);
    if (f != TextStream::Finish::kNone) break;
  }
  EXPECT_EQ(f, TextStream::Finish::kStop);
  EXPECT_EQ(text, "Hello world, ");
}

TEST(TextStreamTest, EosAddsNoTextAndLengthEnds) {
  auto tok = LoadDefault();
  ASSERT_NE(tok, nullptr);
  auto ids = tok->Encode("one two three", false);
  ASSERT_TRUE(ids.ok());
  TextStreamOptions o;
  o.max_tokens = 2;
  o.eos_ids = {2};
  {
    TextStream s(*tok, o);
    std::string text;
    EXPECT_EQ(s.Add((*ids)[0], &text), TextStream::Finish::kNone);
    EXPECT_EQ(s.Add(2, &text), TextStream::Finish::kStop);
    EXPECT_EQ(text, "one");
  }
  {
    TextStream s(*tok, o);
    std::string text;
    EXPECT_EQ(s.Add((*ids)[0], &text), TextStream::Finish::kNone);
    EXPECT_EQ(s.Add((*ids)[1], &text), TextStream::Finish::kLength);
    EXPECT_EQ(text, "one two");
  }
}

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

}  // namespace
}  // namespace tandem

#include "tandem/engine/text_stream.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tandem/engine/tokenizer.h"

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
  TextStream s(tok.get(), o);
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
    TextStream s(tok.get(), o);
    std::string text;
    EXPECT_EQ(s.Add((*ids)[0], &text), TextStream::Finish::kNone);
    EXPECT_EQ(s.Add(2, &text), TextStream::Finish::kStop);
    EXPECT_EQ(text, "one");
  }
  {
    TextStream s(tok.get(), o);
    std::string text;
    EXPECT_EQ(s.Add((*ids)[0], &text), TextStream::Finish::kNone);
    EXPECT_EQ(s.Add((*ids)[1], &text), TextStream::Finish::kLength);
    EXPECT_EQ(text, "one two");
  }
}

}  // namespace
}  // namespace tandem

// SentencePiece tokenizer.model: a small model trained with spm_train on a license text.
#include <cstdlib>

#include <gtest/gtest.h>

#include "tandem/engine/detokenizer.h"
#include "tandem/engine/tokenizer.h"
#include "test_util.h"

namespace tandem {
namespace {

constexpr char kCorpus[] = "/usr/share/common-licenses/GPL-3";

class SentencePieceTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kCorpus) || std::system("command -v spm_train >/dev/null") != 0) {
      GTEST_SKIP() << "spm_train or " << kCorpus << " missing (apt sentencepiece)";
    }
    const std::string cmd = "spm_train --input=" + std::string(kCorpus) +
                            " --model_prefix=" + (dir_.path() / "tokenizer").string() +
                            " --vocab_size=1000 --byte_fallback=true --model_type=" + GetParam() +
                            " --minloglevel=2 >/dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    auto tok = LoadTokenizer(dir_.path());
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tok_ = std::move(tok).value();
  }
  testing::TempDir dir_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_P(SentencePieceTest, EncodeDecode) {
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  auto ids = tok_->Encode("the program", true);
  ASSERT_TRUE(ids.ok());
  ASSERT_FALSE(ids->empty());
  EXPECT_EQ(ids->front(), 1);  // BOS by default, like Llama-2
  EXPECT_EQ(tok_->Decode(*ids, true), "the program");
  EXPECT_EQ(tok_->Decode(*ids, false), "<s> the program");
  auto plain = tok_->Encode("the program", false);
  EXPECT_EQ(plain->size() + 1, ids->size());
  // "</s>" written in the text is the EOS control token.
  auto with_eos = tok_->Encode("end</s>", false);
  ASSERT_TRUE(with_eos.ok());
  EXPECT_EQ(with_eos->back(), 2);
}

TEST_P(SentencePieceTest, ByteFallback) {
  const std::string text = "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80";
  auto ids = tok_->Encode(text, false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(tok_->Decode(*ids, false), text);
  std::string bytes;
  for (int32_t id : *ids) bytes += tok_->TokenBytes(id);
  EXPECT_EQ(bytes, " " + text);  // the dummy prefix "▁" shows as a space
  auto e4 = tok_->TokenToId("<0xE4>");
  ASSERT_TRUE(e4.has_value());
  EXPECT_EQ(tok_->TokenBytes(*e4), "\xE4");
  EXPECT_EQ(tok_->Decode(std::vector<int32_t>{*e4}, false), "\xEF\xBF\xBD");

  IncrementalDetokenizer detok(*tok_);
  std::string streamed;
  for (int32_t id : *ids) streamed += detok.Add(id);
  streamed += detok.Flush();
  EXPECT_EQ(streamed, text);
}

INSTANTIATE_TEST_SUITE_P(ModelTypes, SentencePieceTest, ::testing::Values("bpe", "unigram"));

}  // namespace
}  // namespace tandem

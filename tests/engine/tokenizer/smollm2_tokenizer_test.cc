// The SmolLM2-135M-Instruct tokenizer from the converted model folder, and the incremental
// detokenizer invariant on random id sequences.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include <gtest/gtest.h>

#include "tandem/engine/detokenizer.h"
#include "tandem/engine/tokenizer.h"
#include "test_util.h"

namespace tandem {
namespace {

class SmolLm2Test : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto dir = testing::SmolLm2Dir();
    if (!std::filesystem::exists(dir / "tokenizer.json")) {
      GTEST_SKIP() << dir << " has no tokenizer.json (run tools/setup.sh)";
    }
    auto tok = LoadTokenizer(dir);
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    tok_ = std::move(tok).value();
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(SmolLm2Test, KnownIds) {
  // Reference ids from the Hugging Face `tokenizers` package.
  auto ids = tok_->Encode("Hello world", true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{19556, 905}));
  ids = tok_->Encode("<|im_start|>user\n123<|im_end|>", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, 4093, 198, 33, 34, 35, 2}));
  EXPECT_EQ(tok_->vocab_size(), 49152);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_EQ(tok_->TokenToId("<|im_end|>"), 2);
  EXPECT_TRUE(tok_->IsSpecial(2));
}

TEST_F(SmolLm2Test, RoundTrip) {
  const std::string text =
      "Caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80\n\n\tdef f(x):\n    return x**2  ";
  auto ids = tok_->Encode(text, false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(tok_->Decode(*ids, false), text);
}

TEST_F(SmolLm2Test, DetokenizerInvariantOnRandomIds) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> any_id(0, tok_->vocab_size() - 1);
  std::uniform_int_distribution<int32_t> low_id(0, 300);  // specials and single bytes
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int32_t> ids(1 + trial % 40);
    for (int32_t& id : ids) id = (rng() % 3 == 0) ? low_id(rng) : any_id(rng);
    for (bool skip : {false, true}) {
      IncrementalDetokenizer detok(*tok_, skip);
      std::string streamed;
      for (int32_t id : ids) {
        std::string piece = detok.Add(id);
        // Never half a character: every emitted piece is valid UTF-8 (Encode refuses others).
        EXPECT_TRUE(tok_->Encode(piece, false).ok());
        streamed += piece;
      }
      streamed += detok.Flush();
      ASSERT_EQ(streamed, tok_->Decode(ids, skip)) << "trial " << trial;
    }
  }
}

TEST_F(SmolLm2Test, DetokenizerHoldsBackPartialCharacters) {
  // "中" split into its three byte tokens.
  auto ids = tok_->Encode("\xE4\xB8\xAD", false);
  ASSERT_TRUE(ids.ok());
  std::vector<int32_t> bytes;
  for (unsigned char b : std::string("\xE4\xB8\xAD")) {
    for (int32_t id = 0; id < tok_->vocab_size(); ++id) {
      if (tok_->TokenBytes(id) == std::string(1, static_cast<char>(b))) {
        bytes.push_back(id);
        break;
      }
    }
  }
  ASSERT_EQ(bytes.size(), 3u);
  IncrementalDetokenizer detok(*tok_);
  EXPECT_EQ(detok.Add(bytes[0]), "");
  EXPECT_EQ(detok.Add(bytes[1]), "");
  EXPECT_EQ(detok.Add(bytes[2]), "\xE4\xB8\xAD");
  EXPECT_EQ(detok.Add(bytes[0]), "");
  EXPECT_EQ(detok.Flush(), "\xEF\xBF\xBD");
}

// One 100000-character word: encoding time grows about linearly with the input, not with its
// square. Measured against this machine's own speed, not a fixed budget: the best of several
// interleaved runs of a 10x shorter input (linear: 10x, quadratic: 100x).
TEST_F(SmolLm2Test, LongInputIsFast) {
  const std::string text(100000, 'a'), tenth(10000, 'a');
  auto ids = tok_->Encode(text, false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(tok_->Decode(*ids, false), text);
  auto best = [this](const std::string& t, std::chrono::duration<double>& so_far) {
    const auto start = std::chrono::steady_clock::now();
    EXPECT_TRUE(tok_->Encode(t, false).ok());
    so_far =
        std::min<std::chrono::duration<double>>(so_far, std::chrono::steady_clock::now() - start);
  };
  std::chrono::duration<double> t_long = std::chrono::hours(1), t_short = std::chrono::hours(1);
  for (int run = 0; run < 5; ++run) {
    best(tenth, t_short);
    best(text, t_long);
  }
  std::printf("Encode: 10000 chars %.2f ms, 100000 chars %.2f ms\n", t_short.count() * 1e3,
              t_long.count() * 1e3);
  EXPECT_LT(t_long.count(), 40 * t_short.count()) << "encoding time grows faster than linearly";
}

}  // namespace
}  // namespace tandem

// Byte-level BPE over handcrafted tokenizer.json files, added tokens, U+FFFD and load errors.
#include <functional>

#include <gtest/gtest.h>

#include "tandem/engine/tokenizer.h"
#include "test_util.h"

namespace tandem {
namespace {

using nlohmann::json;
using testing::ByteChar;
using testing::TempDir;

// ids 0..255: the 256 byte-level characters in byte order; then merged tokens.
json TinyByteLevel() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[ByteChar(b)] = b;
  const std::string sp = ByteChar(' ');  // "Ġ"
  vocab["ll"] = 256;
  vocab["he"] = 257;
  vocab["hell"] = 258;
  vocab["hello"] = 259;
  vocab[sp + "w"] = 260;
  vocab[sp + "wo"] = 261;
  json merges = json::array(
      {"l l", "h e", json::array({"he", "ll"}), "hell o", json::array({sp, "w"}), sp + "w o"});
  return {
      {"version", "1.0"},
      {"added_tokens",
       json::array(
           {{{"id", 300},
             {"content", "<|end|>"},
             {"special", true},
             {"normalized", false},
             {"lstrip", false},
             {"rstrip", false},
             {"single_word", false}},
            {{"id", 301},
             {"content", "<tool>"},
             {"special", false},
             {"normalized", false},
             {"lstrip", true},
             {"rstrip", true},
             {"single_word", false}},
            {{"id", 302}, {"content", "<bos>"}, {"special", true}, {"normalized", false}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"special_tokens", {{"<bos>", {{"id", "<bos>"}, {"ids", {302}}, {"tokens", {"<bos>"}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"byte_fallback", false}}}};
}

std::unique_ptr<Tokenizer> Load(const TempDir& dir, const json& j) {
  auto tok = LoadHfTokenizerJson(dir.Write("tokenizer.json", j.dump()));
  EXPECT_TRUE(tok.ok()) << tok.status().ToString();
  return tok.ok() ? std::move(tok).value() : nullptr;
}

std::vector<int32_t> Enc(const Tokenizer& t, std::string_view s, bool special = false) {
  auto ids = t.Encode(s, special);
  EXPECT_TRUE(ids.ok()) << ids.status().ToString();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

TEST(BpeTokenizer, MergesByRankBothForms) {
  TempDir dir;
  auto tok = Load(dir, TinyByteLevel());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(Enc(*tok, "hello"), (std::vector<int32_t>{259}));
  EXPECT_EQ(Enc(*tok, "hello world"), (std::vector<int32_t>{259, 261, 'r', 'l', 'd'}));
  EXPECT_EQ(Enc(*tok, "hell"), (std::vector<int32_t>{258}));
  EXPECT_EQ(Enc(*tok, ""), (std::vector<int32_t>{}));
  EXPECT_EQ(tok->Decode(Enc(*tok, "hello world"), false), "hello world");
  EXPECT_EQ(tok->vocab_size(), 303);
  EXPECT_EQ(tok->TokenToId("hell"), 258);
  EXPECT_EQ(tok->TokenToId("<|end|>"), 300);
  EXPECT_FALSE(tok->TokenToId("nope").has_value());
}

TEST(BpeTokenizer, ByteLevelMapsEveryByte) {
  TempDir dir;
  auto tok = Load(dir, TinyByteLevel());
  ASSERT_NE(tok, nullptr);
  // "é" is C3 A9; "\n" is byte 10; the tab and space run split by the GPT-2 regex.
  EXPECT_EQ(Enc(*tok, "\xC3\xA9\n"), (std::vector<int32_t>{0xC3, 0xA9, '\n'}));
  EXPECT_EQ(tok->TokenBytes(0xC3), "\xC3");
  EXPECT_EQ(tok->TokenBytes(' '), " ");
  EXPECT_EQ(tok->TokenBytes(260), " w");
  EXPECT_EQ(tok->TokenBytes(9999), "");
  const std::string text = "a \t  b\n\n  c \xF0\x9F\x98\x80!";
  EXPECT_EQ(tok->Decode(Enc(*tok, text), false), text);
}

TEST(BpeTokenizer, AddedTokensMatchedFirst) {
  TempDir dir;
  auto tok = Load(dir, TinyByteLevel());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(Enc(*tok, "hello<|end|>hello"), (std::vector<int32_t>{259, 300, 259}));
  // <tool> strips whitespace on both sides.
  EXPECT_EQ(Enc(*tok, "hello  <tool>  hello"), (std::vector<int32_t>{259, 301, 259}));
  EXPECT_TRUE(tok->IsSpecial(300));
  EXPECT_FALSE(tok->IsSpecial(301));
  EXPECT_FALSE(tok->IsSpecial(259));
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{259, 300, 301, 259}, false),
            "hello<|end|><tool>hello");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{259, 300, 301, 259}, true), "hello<tool>hello");
}

TEST(BpeTokenizer, TemplatePostProcessorAddsBos) {
  TempDir dir;
  auto tok = Load(dir, TinyByteLevel());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(Enc(*tok, "hello", true), (std::vector<int32_t>{302, 259}));
  EXPECT_EQ(tok->bos_id(), 302);
  EXPECT_FALSE(tok->eos_id().has_value());
}

TEST(BpeTokenizer, TokenizerConfigGivesBosEos) {
  TempDir dir;
  json j = TinyByteLevel();
  j["post_processor"] = {{"type", "ByteLevel"}};
  dir.Write("tokenizer_config.json", json({{"add_bos_token", true},
                                           {"bos_token", "<bos>"},
                                           {"eos_token", {{"content", "<|end|>"}}}})
                                         .dump());
  auto tok = Load(dir, j);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->bos_id(), 302);
  EXPECT_EQ(tok->eos_id(), 300);
  EXPECT_EQ(Enc(*tok, "hello", true), (std::vector<int32_t>{302, 259}));
  EXPECT_EQ(Enc(*tok, "hello", false), (std::vector<int32_t>{259}));
}

TEST(BpeTokenizer, InvalidUtf8DecodesToReplacementChar) {
  TempDir dir;
  auto tok = Load(dir, TinyByteLevel());
  ASSERT_NE(tok, nullptr);
  const std::string fffd = "\xEF\xBF\xBD";
  // A truncated 3-byte character is one maximal invalid subpart: one U+FFFD (Python "replace").
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{0xE4, 0xB8}, false), fffd);
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{0xE4, 0xB8, 0xAD}, false), "\xE4\xB8\xAD");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{0xFF, 'a', 0x80, 0x80}, false),
            fffd + "a" + fffd + fffd);
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{0xE4, 'a'}, false), fffd + "a");
  EXPECT_FALSE(tok->Encode("bad \xFF utf8", false).ok());
}

TEST(BpeTokenizer, LongRunOfOneCharacter) {
  TempDir dir;
  auto tok = Load(dir, TinyByteLevel());
  ASSERT_NE(tok, nullptr);
  const std::string text(100000, 'l');
  auto ids = Enc(*tok, text);
  ASSERT_EQ(ids.size(), 50000u);
  for (int32_t id : ids) ASSERT_EQ(id, 256);
  const std::string spaces(100000, ' ');
  EXPECT_EQ(tok->Decode(Enc(*tok, spaces + "x" + spaces), false), spaces + "x" + spaces);
}

// Llama-2 style tokenizer.json: Prepend/Replace normalizer, byte fallback, Strip decoder.
TEST(BpeTokenizer, ByteFallbackAndMetaspaceDecoders) {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) vocab[fmt::format("<0x{:02X}>", b)] = 3 + b;
  const std::string ws = "\xE2\x96\x81";  // "▁"
  vocab[ws] = 259;
  vocab["h"] = 260;
  vocab["i"] = 261;
  vocab[ws + "h"] = 262;
  vocab[ws + "hi"] = 263;
  json j = {
      {"added_tokens", json::array({{{"id", 1}, {"content", "<s>"}, {"special", true}},
                                    {{"id", 2}, {"content", "</s>"}, {"special", true}}})},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         json::array({{{"type", "Prepend"}, {"prepend", ws}},
                      {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", ws}}})}}},
      {"pre_tokenizer", nullptr},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         json::array({{{"type", "Replace"}, {"pattern", {{"String", ws}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", json::array({ws + " h", ws + "h i"})},
        {"byte_fallback", true},
        {"unk_token", "<unk>"}}}};
  TempDir dir;
  auto tok = Load(dir, j);
  ASSERT_NE(tok, nullptr);
  // " é" -> "▁" + bytes C3 A9.
  EXPECT_EQ(Enc(*tok, "hi \xC3\xA9"), (std::vector<int32_t>{263, 259, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(tok->Decode(Enc(*tok, "hi \xC3\xA9"), false), "hi \xC3\xA9");
  EXPECT_EQ(tok->TokenBytes(3 + 0xC3), "\xC3");
  EXPECT_EQ(tok->TokenBytes(263), " hi");
  // A lone byte piece decodes to U+FFFD; the first leading space is stripped.
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{263, 3 + 0xC3}, false), "hi\xEF\xBF\xBD");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{1, 263}, false), "<s> hi");
  EXPECT_EQ(tok->Decode(std::vector<int32_t>{1, 263}, true), "hi");
}

TEST(BpeTokenizer, ErrorsNameTheFile) {
  TempDir dir;
  auto missing = LoadHfTokenizerJson(dir.path() / "nope.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("nope.json"), std::string::npos);

  auto bad = LoadHfTokenizerJson(dir.Write("bad.json", "{not json"));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("bad.json"), std::string::npos);

  json j = TinyByteLevel();
  j["model"].erase("vocab");
  auto no_vocab = LoadHfTokenizerJson(dir.Write("novocab.json", j.dump()));
  ASSERT_FALSE(no_vocab.ok());
  EXPECT_NE(no_vocab.status().message().find("novocab.json"), std::string::npos);
  EXPECT_NE(no_vocab.status().message().find("model.vocab"), std::string::npos);

  j = TinyByteLevel();
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  auto bad_regex = LoadHfTokenizerJson(dir.Write("badre.json", j.dump()));
  ASSERT_FALSE(bad_regex.ok());
  EXPECT_NE(bad_regex.status().message().find("badre.json"), std::string::npos);

  auto none = LoadTokenizer(dir.path() / "empty_dir");
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  auto no_model = LoadSentencePieceModel(dir.path() / "tokenizer.model");
  EXPECT_EQ(no_model.status().code(), StatusCode::kNotFound);
}

// Found by fuzz_tokenizer: token ids were read with get<int32_t>, whose conversion of a float
// out of int's range is undefined and which passes a huge id on to tables sized by it (an id of
// INT32_MAX overflowed `max_id + 1`). Ids must now be integers in [0, 2^22).
TEST(BpeTokenizer, TokenIdsMustBeIntegersInRange) {
  TempDir dir;
  auto error_of = [&](json j) {
    auto tok = LoadHfTokenizerJson(dir.Write("tokenizer.json", j.dump()));
    EXPECT_FALSE(tok.ok());
    return tok.ok() ? Status::Ok() : tok.status();
  };
  struct Case {
    const char* where;
    std::function<void(json&)> change;
  } cases[] = {
      {"model.vocab", [](json& j) { j["model"]["vocab"]["huge"] = 2147483647; }},
      {"model.vocab", [](json& j) { j["model"]["vocab"]["float"] = 1.61e118; }},
      {"model.vocab", [](json& j) { j["model"]["vocab"]["neg"] = -1; }},
      {"added_tokens", [](json& j) { j["added_tokens"][0]["id"] = 2147483647; }},
      {"added_tokens", [](json& j) { j["added_tokens"][0]["id"] = 4000000000u; }},
      {"post_processor",
       [](json& j) { j["post_processor"]["special_tokens"]["<bos>"]["ids"][0] = 3.5; }},
  };
  for (const auto& c : cases) {
    json j = TinyByteLevel();
    c.change(j);
    Status st = error_of(j);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << c.where << ": " << st.ToString();
    EXPECT_NE(st.message().find(c.where), std::string::npos) << st.message();
  }
}

}  // namespace
}  // namespace tandem

// Tokenizers: Hugging Face tokenizer.json (byte-level BPE), SentencePiece tokenizer.model, and the
// byte-level BPE vocabulary of a GGUF file.
//
// Thread safety: a loaded Tokenizer is immutable; every const method may be called concurrently.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/status.h"

namespace tandem {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids for `text`. Added/special tokens written literally in `text` (e.g. "<|im_start|>")
  // are matched first, as Hugging Face does. With `add_special_tokens`, the tokenizer's own
  // post-processing applies (e.g. a BOS id prepended when the model's tokenizer asks for it).
  virtual StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                bool add_special_tokens) const = 0;

  // Text for `ids`, equal to Hugging Face `decode(ids, skip_special_tokens=skip_special)`.
  // Invalid UTF-8 sequences decode to U+FFFD, as Hugging Face does.
  virtual std::string Decode(std::span<const int32_t> ids, bool skip_special) const = 0;

  // The raw bytes a token stands for in a decoded stream (may be part of a UTF-8 character).
  // Special tokens give their text. Out-of-range ids give "".
  virtual std::string TokenBytes(int32_t id) const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;

  // The id of a token given by its vocabulary string ("<|im_end|>", "</s>"), if any.
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
};

// Loads `dir/tokenizer.json` when present, else `dir/tokenizer.model`. Reads
// `dir/tokenizer_config.json` (add_bos_token, bos/eos token strings) when present.
// `dir` may instead name a .gguf file (IsGgufPath): LoadGgufTokenizer.
// Errors name the file and the problem.
StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& dir);

// Loads one file directly (tests and tools).
StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizerJson(const std::filesystem::path& file);
StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceModel(const std::filesystem::path& file);
// A GGUF file's tokenizer (tokenizer.ggml.model "gpt2"): the tokenizer.json and
// tokenizer_config.json that tools/gguf_to_hf.py writes, built in memory and read by the same
// parser as LoadHfTokenizerJson, so ids equal the converted folder's. INVALID_ARGUMENT naming the
// file for other tokenizer models.
StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const std::filesystem::path& file);

}  // namespace tandem

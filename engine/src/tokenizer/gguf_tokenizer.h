// The tokenizer of a GGUF file (private to tandem_tokenizer): the tokenizer.json and
// tokenizer_config.json values tools/gguf_to_hf.py would write, built in memory.
#pragma once

#include <nlohmann/json.hpp>

#include "tandem/engine/gguf.h"
#include "tokenizer_config.h"

namespace tandem::tokenizer_internal {

// tokenizer.json for a "gpt2" (byte-level BPE) GGUF vocabulary: BPE over tokenizer.ggml.tokens and
// merges, Digits + ByteLevel pre-tokenizer, ByteLevel post-processor and decoder, token_type 3
// (control) as special added tokens and 4 (user-defined) as plain added tokens, each keeping its
// id. INVALID_ARGUMENT naming the file for another tokenizer.ggml.model, duplicate tokens, a
// token_type list of another length or a malformed merge.
StatusOr<nlohmann::json> GgufTokenizerJson(const GgufFile& gguf);

// add_bos_token / add_eos_token (tokenizer.ggml.*, default false), bos / eos token strings from
// their ids, and tokenizer.chat_template.
StatusOr<TokenizerConfig> GgufTokenizerConfig(const GgufFile& gguf);

}  // namespace tandem::tokenizer_internal

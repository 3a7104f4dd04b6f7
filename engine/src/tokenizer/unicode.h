// UTF-8 and Unicode helpers shared by the tokenizers (private to tandem_tokenizer).
//
// Thread safety: free functions without shared state; NFC uses ICU's immutable singleton.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "tandem/common/status.h"

namespace tandem::tokenizer_internal {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Decodes the code point starting at `s[*pos]` and advances `*pos`. Requires valid UTF-8.
char32_t NextCodePoint(std::string_view s, size_t* pos);
// Appends the UTF-8 encoding of `cp`.
void AppendUtf8(char32_t cp, std::string* out);
// Length in bytes of the (valid) UTF-8 character starting with byte `lead`.
size_t Utf8CharLen(unsigned char lead);

bool IsValidUtf8(std::string_view s);
// `bytes` with every maximal invalid subsequence replaced by U+FFFD: the same result as
// Python's bytes.decode("utf-8", "replace") and Rust's String::from_utf8_lossy.
std::string Utf8Lossy(std::string_view bytes);
// Like Utf8Lossy, but every byte of an invalid sequence becomes its own U+FFFD, as
// SentencePiece does for byte-fallback pieces.
std::string Utf8LossyPerByte(std::string_view bytes);

// Unicode White_Space (Rust char::is_whitespace, Python str.isspace up to a few controls).
bool IsWhitespace(char32_t cp);
// Rust char::is_alphanumeric: Alphabetic or a numeric category (Nd, Nl, No).
bool IsAlphanumeric(char32_t cp);
// Python str.strip(): removes leading and trailing whitespace code points.
std::string_view StripWhitespace(std::string_view s);

// Unicode Normalization Forms C and KC of valid UTF-8 `s` (ICU).
StatusOr<std::string> NormalizeNfc(std::string_view s);
StatusOr<std::string> NormalizeNfkc(std::string_view s);

}  // namespace tandem::tokenizer_internal

// Token ids read from tokenizer JSON (private to tandem_tokenizer).
#pragma once

#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include "tandem/common/status.h"

namespace tandem::tokenizer_internal {

// Largest token id a tokenizer file may use: 16 times the largest vocabularies in use (~262k),
// small enough that tables indexed by id stay bounded.
inline constexpr int64_t kMaxTokenId = (int64_t{1} << 22) - 1;

// `v` as a token id: an integer in [0, kMaxTokenId]; INVALID_ARGUMENT naming `what` otherwise
// (a float, a string, a negative or huge number: nlohmann's get<int32_t> would convert those with
// undefined or implementation-defined results).
inline StatusOr<int32_t> JsonTokenId(const nlohmann::json& v, std::string_view what) {
  if (!v.is_number_integer()) {
    return InvalidArgumentError("{}: a token id must be an integer, got {}", what, v.type_name());
  }
  int64_t id = -1;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    id = u > static_cast<uint64_t>(kMaxTokenId) ? kMaxTokenId + 1 : static_cast<int64_t>(u);
  } else {
    id = v.get<int64_t>();
  }
  if (id < 0 || id > kMaxTokenId) {
    return InvalidArgumentError("{}: token id {} is outside [0, {}]", what, v.dump(), kMaxTokenId);
  }
  return static_cast<int32_t>(id);
}

}  // namespace tandem::tokenizer_internal

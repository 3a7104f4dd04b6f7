// Stable 64-bit content hashing (xxHash64), used for model fingerprints and tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tandem {

uint64_t Hash64(const void* data, size_t size, uint64_t seed = 0);
inline uint64_t Hash64(std::string_view s, uint64_t seed = 0) {
  return Hash64(s.data(), s.size(), seed);
}

}  // namespace tandem

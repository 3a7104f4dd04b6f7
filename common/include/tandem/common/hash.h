// Stable 64-bit content hashing (xxHash64), used for model fingerprints and tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace tandem {

uint64_t Hash64(const void* data, size_t size, uint64_t seed = 0);
inline uint64_t Hash64(std::string_view s, uint64_t seed = 0) {
  return Hash64(s.data(), s.size(), seed);
}

// Hash chains over token ids in fixed-size blocks, so that one key names a whole prefix: the key
// of a block is the hash of its ids seeded with the key of the prefix before it (`parent`; the
// caller's root for the first block). The prefix caches key their pages this way and the router
// its prefix affinity.
inline uint64_t ChainHash(uint64_t parent, std::span<const int32_t> block_ids) {
  return Hash64(block_ids.data(), block_ids.size_bytes(), parent);
}
// The keys of the full `block`-sized blocks of `tokens` (a trailing partial block has none).
std::vector<uint64_t> BlockHashChain(std::span<const int32_t> tokens, size_t block, uint64_t root);

}  // namespace tandem

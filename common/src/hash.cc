#include "tandem/common/hash.h"

#include <xxhash.h>

namespace tandem {

uint64_t Hash64(const void* data, size_t size, uint64_t seed) { return XXH64(data, size, seed); }

std::vector<uint64_t> BlockHashChain(std::span<const int32_t> tokens, size_t block, uint64_t root) {
  std::vector<uint64_t> keys;
  if (block == 0) return keys;
  keys.reserve(tokens.size() / block);
  uint64_t key = root;
  for (size_t start = 0; start + block <= tokens.size(); start += block) {
    key = ChainHash(key, tokens.subspan(start, block));
    keys.push_back(key);
  }
  return keys;
}

}  // namespace tandem

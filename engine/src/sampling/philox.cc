#include "philox.h"

#include "tandem/engine/sampling.h"

namespace tandem {
namespace sampling_internal {

PhiloxCounter Philox4x32x10(PhiloxCounter ctr, PhiloxKey key) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += kPhiloxW0;
      key[1] += kPhiloxW1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * ctr[0];
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * ctr[2];
    const auto hi0 = static_cast<uint32_t>(p0 >> 32);
    const auto lo0 = static_cast<uint32_t>(p0);
    const auto hi1 = static_cast<uint32_t>(p1 >> 32);
    const auto lo1 = static_cast<uint32_t>(p1);
    ctr = {hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0};
  }
  return ctr;
}

}  // namespace sampling_internal

// Counter layout (the GPU sampler must use exactly this):
//   key = {seed & 0xffffffff, seed >> 32}
//   ctr = {counter & 0xffffffff, counter >> 32, lane, 0}
// The result is word 0 of Philox4x32x10(ctr, key), x, mapped to u = (x >> 8) * 2^-24: the top
// 24 bits, so u is exact in fp32 and lies in [0, 1 - 2^-24]. Words 1..3 are unused.
float PhiloxUniform(uint64_t seed, uint64_t counter, uint32_t lane) {
  const sampling_internal::PhiloxKey key = {static_cast<uint32_t>(seed),
                                            static_cast<uint32_t>(seed >> 32)};
  const sampling_internal::PhiloxCounter ctr = {static_cast<uint32_t>(counter),
                                                static_cast<uint32_t>(counter >> 32), lane, 0u};
  const uint32_t x = sampling_internal::Philox4x32x10(ctr, key)[0];
  return static_cast<float>(x >> 8) * 0x1p-24f;
}

}  // namespace tandem

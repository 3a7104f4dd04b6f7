// Philox4x32-10 counter-based generator (Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3", SC'11), bit for bit as Random123's philox4x32_R(10, ctr, key), cuRAND's
// curand_Philox4x32_10 and PyTorch's philox. Private to tandem_sampling; the public entry point
// is PhiloxUniform in tandem/engine/sampling.h.
#pragma once

#include <array>
#include <cstdint>

namespace tandem::sampling_internal {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

// Standard Philox4x32 multipliers and Weyl key increments.
inline constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
inline constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
inline constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
inline constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1

// Ten rounds. One round, with (hi, lo) the halves of a 32x32->64-bit product:
//   (hi0, lo0) = M0 * c0;  (hi1, lo1) = M1 * c2
//   c = {hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0}
// and before every round but the first the key is bumped: k0 += W0, k1 += W1 (mod 2^32).
PhiloxCounter Philox4x32x10(PhiloxCounter ctr, PhiloxKey key);

}  // namespace tandem::sampling_internal

// DType: the one element-type enum of the project — checkpoint tensors, weights as a backend
// stores them, and KV pages (where the numeric value is part of the wire format).
//
// Float types hold one element per "block"; the quantized ones use GGUF's block layouts along a
// row (32 elements per block):
//   q8_0: {f16 d; int8 q[32]}          w = d * q                       (34 bytes)
//   q4_0: {f16 d; uint8 qs[16]}        w = d * (nibble - 8)            (18 bytes)
//   q4_1: {f16 d; f16 m; uint8 qs[16]} w = d * nibble + m              (20 bytes)
// where byte j of qs holds element j in its low nibble and element j + 16 in its high nibble.
//
// Thread safety: plain values and pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tandem/common/status.h"

namespace tandem {

// Never renumber: KV page layouts carry the value on the wire.
enum class DType : uint32_t { kF32 = 0, kF16 = 1, kBF16 = 2, kQ8_0 = 3, kQ4_0 = 4, kQ4_1 = 5 };

// Elements per quantization block along a row (32 for the q types).
inline constexpr int64_t kQuantBlock = 32;

// "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"; "unknown(N)" otherwise.
std::string_view DTypeName(DType d);
// Accepts the names above and "float32", "float16", "bfloat16"; INVALID_ARGUMENT naming the
// value and the accepted names otherwise.
StatusOr<DType> ParseDType(std::string_view name);
// False for a value outside the enum (for instance one read off the wire).
bool IsKnownDType(DType d);
bool IsQuantized(DType d);
// Elements per block: 1 for float types, kQuantBlock for quantized ones; 0 if unknown.
int64_t DTypeBlockElems(DType d);
// Bytes per block: 4, 2, 2, 34, 18, 20; 0 if unknown.
size_t DTypeBlockBytes(DType d);
// Bytes of one element of a float type (4 or 2); 0 for quantized or unknown types.
size_t DTypeSize(DType d);
// Bytes of `elems` elements (a multiple of DTypeBlockElems(d)).
inline size_t DTypeBytes(DType d, int64_t elems) {
  const int64_t b = DTypeBlockElems(d);
  return b == 0 ? 0 : static_cast<size_t>(elems / b) * DTypeBlockBytes(d);
}

}  // namespace tandem

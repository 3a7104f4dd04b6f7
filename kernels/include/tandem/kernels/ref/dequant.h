// Reference conversions between f32 and every storage DType (tandem/common/dtype.h states the
// block layouts). These define what a quantized or 16-bit weight *means*: fast kernels that read
// such weights must produce the f32 value Dequantize gives, exactly.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>

#include "tandem/common/dtype.h"

namespace tandem::kernels::ref {

// IEEE half / bfloat16 bits → f32 (exact).
float HalfToFloat(uint16_t h);
float Bf16ToFloat(uint16_t b);
// f32 → half / bfloat16 bits, round to nearest even (NaN stays NaN).
uint16_t FloatToHalf(float f);
uint16_t FloatToBf16(float f);

// out[0, elems) = the f32 value of each element of `src` (of type `dtype`). `elems` is a
// multiple of DTypeBlockElems(dtype). For the q types: q8_0 d * q, q4_0 d * (nibble - 8),
// q4_1 d * nibble + m, each one f32 multiply (and one add, not fused), d and m widened from f16.
void Dequantize(DType dtype, const void* src, int64_t elems, float* out);

// The inverse for storing: f32 / f16 / bf16 convert (round to nearest even); the q types follow
// ggml's reference quantizers (q8_0: d = amax / 127, q = round(x / d); q4_0: d = max / -8 where
// max is the value of largest magnitude, q = min(15, trunc(x / d + 8.5)); q4_1: d = (max - min) /
// 15, m = min, q = min(15, trunc((x - min) / d + 0.5))). `elems` as above; `out` holds
// DTypeBytes(dtype, elems) bytes.
void Quantize(DType dtype, const float* src, int64_t elems, void* out);

}  // namespace tandem::kernels::ref

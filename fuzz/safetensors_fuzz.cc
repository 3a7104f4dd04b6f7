// The safetensors header parser (engine/src/model/safetensors.cc). Input: a whole file.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tandem/engine/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tensors = tandem::ParseSafetensors(data, size, "fuzz.safetensors");
  if (!tensors.ok()) return 0;
  // Every view must lie inside the input (touch its first and last byte), and its shape must be
  // what its bytes hold: no negative dimension, and elements x dtype size = bytes without
  // overflow.
  volatile uint8_t sink = 0;
  for (const auto& [name, t] : *tensors) {
    uint64_t elems = 1;
    for (int64_t d : t.shape) {
      if (d < 0 || __builtin_mul_overflow(elems, static_cast<uint64_t>(d), &elems)) {
        __builtin_trap();
      }
    }
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(elems, tandem::DTypeSize(t.dtype), &bytes) || bytes != t.num_bytes) {
      __builtin_trap();
    }
    if (t.num_bytes == 0) continue;
    const auto* p = static_cast<const uint8_t*>(t.data);
    sink = sink ^ p[0] ^ p[t.num_bytes - 1];
  }
  return 0;
}

// The safetensors header parser (engine/src/model/safetensors.cc). Input: a whole file.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tandem/engine/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tensors = tandem::ParseSafetensors(data, size, "fuzz.safetensors");
  if (!tensors.ok()) return 0;
  // Every view must lie inside the input: touch its first and last byte.
  volatile uint8_t sink = 0;
  for (const auto& [name, t] : *tensors) {
    if (t.num_bytes == 0) continue;
    const auto* p = static_cast<const uint8_t*>(t.data);
    sink = sink ^ p[0] ^ p[t.num_bytes - 1];
  }
  return 0;
}

// Private to tandem_kvtransfer: fixed-width little-endian fields of the wire formats (layout,
// handshake, shm attach).
#pragma once

#include <bit>
#include <cstddef>
#include <cstring>
#include <string>

namespace tandem::kvtransfer_internal {

static_assert(std::endian::native == std::endian::little, "wire format assumes little-endian");

template <typename T>
void PutField(std::string& out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out.append(buf, sizeof(T));
}

// Reads a T at `p` and moves `p` past it.
template <typename T>
T GetField(const std::byte*& p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  p += sizeof(T);
  return v;
}

}  // namespace tandem::kvtransfer_internal

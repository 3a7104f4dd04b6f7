// KvPageLayout: what one KV page looks like, identically in memory and on the wire.
//
// One page = `page_size` token positions of K then V for ONE layer:
//   page = elem[2][page_size][num_kv_heads][head_dim]   (K at [0], V at [1])
// This matches engine/kv_cache.h; kvtransfer does not depend on the engine, so the worker maps
// its KvLayout onto this struct.
//
// Two workers may exchange pages only if their layouts are compatible (every field equal).
// Fingerprint() is a stable hash of the canonical serialization, carried in transfer tickets;
// CheckCompatible() explains a mismatch by naming the first differing field.
//
// Thread safety: plain value type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "tandem/common/status.h"

namespace tandem {

// Element type of K/V values. The numeric values are part of the wire format: never renumber.
enum class KvDtype : uint32_t { kF32 = 0, kF16 = 1, kBf16 = 2 };

// Bytes per element (4, 2, 2); 0 for an unknown value.
size_t KvDtypeSize(KvDtype dtype);
// "f32", "f16", "bf16", or "unknown(N)".
std::string KvDtypeName(KvDtype dtype);

struct KvPageLayout {
  // Bumped whenever the meaning of a page's bytes changes. Default: 1.
  static constexpr int32_t kCurrentLayoutVersion = 1;
  // Size of Serialize()'s output.
  static constexpr size_t kSerializedSize = 36;

  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t page_size = 16;  // tokens per page. Default: 16.
  KvDtype dtype = KvDtype::kF32;
  int32_t layout_version = kCurrentLayoutVersion;
  uint64_t model_hash = 0;  // identifies the weights (e.g. Hash64 of the checkpoint config).

  // 2 * page_size * num_kv_heads * head_dim * element size.
  size_t PageBytes() const;
  // OK, or INVALID_ARGUMENT naming the first field that is not positive / not a known dtype.
  Status Validate() const;
  // Canonical little-endian serialization (kSerializedSize bytes); the wire format of the layout.
  std::string Serialize() const;
  // Inverse of Serialize(); INVALID_ARGUMENT on a wrong size or magic.
  static StatusOr<KvPageLayout> Parse(std::span<const std::byte> bytes);
  // Hash64 of Serialize(): equal layouts give equal fingerprints on every host.
  uint64_t Fingerprint() const;
  // Human-readable, for error messages:
  // "layers=30 kv_heads=3 head_dim=64 page_size=16 dtype=f32 version=1 model=0x... (24576 B/page)".
  std::string Describe() const;

  bool operator==(const KvPageLayout&) const = default;
};

// OK when `local` and `remote` are identical; otherwise FAILED_PRECONDITION naming the first
// differing field, e.g. "page_size differs: local 16, remote 32". Fields are compared in the
// order layout_version, model_hash, dtype, num_layers, num_kv_heads, head_dim, page_size.
Status CheckCompatible(const KvPageLayout& local, const KvPageLayout& remote);

}  // namespace tandem

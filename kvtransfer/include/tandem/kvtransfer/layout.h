// KvPageLayout: what one KV page looks like, identically in memory and on the wire.
//
// One page = `page_size` token positions of K then V for ONE layer:
//   page = elem[2][page_size][num_kv_heads][head_dim]   (K at [0], V at [1])
// The geometry is common's KvGeometry, the same struct the engine's cache uses.
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

#include "tandem/common/kv_geometry.h"
#include "tandem/common/status.h"

namespace tandem {

// The engine-independent KvGeometry (tandem/common/kv_geometry.h; its dtype is a float DType,
// whose numeric value is part of the wire format) plus what identifies the bytes' meaning.
struct KvPageLayout : KvGeometry {
  // Bumped whenever the meaning of a page's bytes changes. Default: 1.
  static constexpr int32_t kCurrentLayoutVersion = 1;
  // Size of Serialize()'s output.
  static constexpr size_t kSerializedSize = 36;

  int32_t layout_version = kCurrentLayoutVersion;
  uint64_t model_hash = 0;  // identifies the checkpoint (the engine's ModelHash).

  // Largest field values Validate() accepts: far beyond any model, and small enough that
  // PageBytes() and BlockBytes() fit their types.
  static constexpr int32_t kMaxLayers = 4096;
  static constexpr int32_t kMaxKvHeads = 4096;
  static constexpr int32_t kMaxHeadDim = 4096;
  static constexpr int32_t kMaxPageSize = 65536;

  // OK, or INVALID_ARGUMENT naming the first field that is not in [1, its max] / not a known
  // dtype.
  Status Validate() const;
  // Canonical little-endian serialization (kSerializedSize bytes); the wire format of the layout.
  std::string Serialize() const;
  // Inverse of Serialize(); INVALID_ARGUMENT on a wrong size or magic.
  static StatusOr<KvPageLayout> Parse(std::span<const std::byte> bytes);
  // Hash64 of Serialize(): equal layouts give equal fingerprints on every host.
  uint64_t Fingerprint() const;
  // Human-readable, for error messages:
  // "layers=30 kv_heads=3 head_dim=64 page_size=16 dtype=f32 version=1 model=0x... (24576 B/page)";
  // "(invalid B/page)" for a layout Validate() refuses (e.g. a peer's, in an error message).
  std::string Describe() const;

  bool operator==(const KvPageLayout&) const = default;
};

// The wire layout of pages with `geometry` for the checkpoint identified by `model_hash`, at the
// current layout version. Both ends of a transfer build theirs this way.
KvPageLayout MakeKvPageLayout(const KvGeometry& geometry, uint64_t model_hash);

// OK when `local` and `remote` are identical; otherwise FAILED_PRECONDITION naming the first
// differing field, e.g. "page_size differs: local 16, remote 32". Fields are compared in the
// order layout_version, model_hash, dtype, num_layers, num_kv_heads, head_dim, page_size.
Status CheckCompatible(const KvPageLayout& local, const KvPageLayout& remote);

}  // namespace tandem

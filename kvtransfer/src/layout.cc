#include "tandem/kvtransfer/layout.h"

#include <cstring>

#include "tandem/common/hash.h"
#include "wire.h"

namespace tandem {

using kvtransfer_internal::GetField;
using kvtransfer_internal::PutField;

namespace {

constexpr uint32_t kLayoutMagic = 0x4C564B54;  // "TKVL"

// The dtype for messages, with the raw value when it is not one this build knows.
std::string DtypeForMessage(DType dtype) {
  if (IsKnownDType(dtype)) return std::string(DTypeName(dtype));
  return fmt::format("unknown({})", static_cast<uint32_t>(dtype));
}

}  // namespace

Status KvPageLayout::Validate() const {
  // Upper bounds far beyond any model, small enough that PageBytes() and BlockBytes() cannot
  // overflow (a layout may come from a peer's handshake).
  auto in_range = [](const char* field, int32_t v, int32_t max) {
    return v > 0 && v <= max ? Status::Ok()
                             : InvalidArgumentError("{} must be in [1, {}], got {}", field, max, v);
  };
  TANDEM_RETURN_IF_ERROR(in_range("num_layers", num_layers, kMaxLayers));
  TANDEM_RETURN_IF_ERROR(in_range("num_kv_heads", num_kv_heads, kMaxKvHeads));
  TANDEM_RETURN_IF_ERROR(in_range("head_dim", head_dim, kMaxHeadDim));
  TANDEM_RETURN_IF_ERROR(in_range("page_size", page_size, kMaxPageSize));
  if (DTypeSize(dtype) == 0) return InvalidArgumentError("dtype is {}", DtypeForMessage(dtype));
  if (layout_version <= 0) {
    return InvalidArgumentError("layout_version must be > 0, got {}", layout_version);
  }
  return Status::Ok();
}

std::string KvPageLayout::Serialize() const {
  std::string out;
  out.reserve(kSerializedSize);
  PutField<uint32_t>(out, kLayoutMagic);
  PutField<int32_t>(out, layout_version);
  PutField<int32_t>(out, num_layers);
  PutField<int32_t>(out, num_kv_heads);
  PutField<int32_t>(out, head_dim);
  PutField<int32_t>(out, page_size);
  PutField<uint32_t>(out, static_cast<uint32_t>(dtype));
  PutField<uint64_t>(out, model_hash);
  return out;
}

StatusOr<KvPageLayout> KvPageLayout::Parse(std::span<const std::byte> bytes) {
  if (bytes.size() != kSerializedSize) {
    return InvalidArgumentError("serialized layout has {} bytes, expected {}", bytes.size(),
                                kSerializedSize);
  }
  const std::byte* p = bytes.data();
  if (GetField<uint32_t>(p) != kLayoutMagic)
    return InvalidArgumentError("serialized layout: bad magic");
  KvPageLayout l;
  l.layout_version = GetField<int32_t>(p);
  l.num_layers = GetField<int32_t>(p);
  l.num_kv_heads = GetField<int32_t>(p);
  l.head_dim = GetField<int32_t>(p);
  l.page_size = GetField<int32_t>(p);
  l.dtype = static_cast<DType>(GetField<uint32_t>(p));
  l.model_hash = GetField<uint64_t>(p);
  return l;
}

uint64_t KvPageLayout::Fingerprint() const { return Hash64(Serialize()); }

std::string KvPageLayout::Describe() const {
  return fmt::format(
      "layers={} kv_heads={} head_dim={} page_size={} dtype={} version={} model={:#018x} "
      "({} B/page)",
      num_layers, num_kv_heads, head_dim, page_size, DtypeForMessage(dtype), layout_version,
      model_hash, Validate().ok() ? fmt::format("{}", PageBytes()) : std::string("invalid"));
}

KvPageLayout MakeKvPageLayout(const KvGeometry& geometry, uint64_t model_hash) {
  KvPageLayout l;
  static_cast<KvGeometry&>(l) = geometry;
  l.layout_version = KvPageLayout::kCurrentLayoutVersion;
  l.model_hash = model_hash;
  return l;
}

Status CheckCompatible(const KvPageLayout& local, const KvPageLayout& remote) {
  auto differs = [](std::string_view field, const auto& l, const auto& r) {
    return FailedPreconditionError("{} differs: local {}, remote {}", field, l, r);
  };
  if (local.layout_version != remote.layout_version) {
    return differs("layout_version", local.layout_version, remote.layout_version);
  }
  if (local.model_hash != remote.model_hash) {
    return differs("model_hash", fmt::format("{:#018x}", local.model_hash),
                   fmt::format("{:#018x}", remote.model_hash));
  }
  if (local.dtype != remote.dtype) {
    return differs("dtype", DtypeForMessage(local.dtype), DtypeForMessage(remote.dtype));
  }
  if (local.num_layers != remote.num_layers) {
    return differs("num_layers", local.num_layers, remote.num_layers);
  }
  if (local.num_kv_heads != remote.num_kv_heads) {
    return differs("num_kv_heads", local.num_kv_heads, remote.num_kv_heads);
  }
  if (local.head_dim != remote.head_dim)
    return differs("head_dim", local.head_dim, remote.head_dim);
  if (local.page_size != remote.page_size) {
    return differs("page_size", local.page_size, remote.page_size);
  }
  return Status::Ok();
}

}  // namespace tandem

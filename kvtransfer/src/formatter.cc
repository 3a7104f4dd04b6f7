#include "tandem/kvtransfer/formatter.h"

#include <cstring>

#include "tandem/common/logging.h"
#include "wire.h"

namespace tandem {

using kvtransfer_internal::GetField;
using kvtransfer_internal::PutField;
namespace {

// Handshake wire format: serialized layout, u64 layout fingerprint, u64 ticket fingerprint,
// u32 pages per layer.
constexpr size_t kHandshakeBytes = KvPageLayout::kSerializedSize + 8 + 8 + 4;

// Collects pages into spans, merging a page that starts where the previous span ends.
template <typename Span>
StatusOr<std::vector<Span>> CollectSpans(const PageAccessor& pages, const KvPageLayout& layout,
                                         size_t page_bytes, int32_t layer,
                                         std::span<const int32_t> blocks) {
  if (layer < 0 || layer >= layout.num_layers) {
    return InvalidArgumentError("layer {} out of range [0, {})", layer, layout.num_layers);
  }
  std::vector<Span> spans;
  spans.reserve(blocks.size());
  for (int32_t block : blocks) {
    std::span<std::byte> page = pages.Page(layer, block);
    if (page.size() != page_bytes || page.data() == nullptr) {
      return InvalidArgumentError("page (layer {}, block {}) has {} bytes, layout needs {}", layer,
                                  block, page.size(), page_bytes);
    }
    if (!spans.empty() && spans.back().data() + spans.back().size() == page.data()) {
      spans.back() = Span(spans.back().data(), spans.back().size() + page.size());
    } else {
      spans.emplace_back(page.data(), page.size());
    }
  }
  return spans;
}

}  // namespace

PagesAt::PagesAt(std::byte* base, const KvPageLayout& layout, int32_t num_blocks)
    : base_(base),
      page_bytes_(layout.PageBytes()),
      num_layers_(layout.num_layers),
      num_blocks_(num_blocks) {}

std::span<std::byte> PagesAt::Page(int32_t layer, int32_t block) const {
  if (layer < 0 || layer >= num_layers_ || block < 0 || block >= num_blocks_) return {};
  return {base_ + (size_t(layer) * size_t(num_blocks_) + size_t(block)) * page_bytes_, page_bytes_};
}

HostPageBuffer::HostPageBuffer(const KvPageLayout& layout, int32_t num_blocks)
    : data_(new std::byte[PagesAt::Bytes(layout, num_blocks)]()),
      pages_(data_.get(), layout, num_blocks) {}

Formatter::Formatter(const KvPageLayout& layout)
    : layout_(layout), fingerprint_(layout.Fingerprint()), page_bytes_(layout.PageBytes()) {
  TANDEM_CHECK(layout.Validate().ok());
}

std::string Formatter::EncodeHandshake(uint64_t ticket_fingerprint, uint32_t num_pages) const {
  std::string out = layout_.Serialize();
  PutField<uint64_t>(out, fingerprint_);
  PutField<uint64_t>(out, ticket_fingerprint);
  PutField<uint32_t>(out, num_pages);
  return out;
}

Status Formatter::CheckHandshake(std::span<const std::byte> handshake,
                                 size_t expected_pages) const {
  if (handshake.size() != kHandshakeBytes) {
    return FailedPreconditionError("layout handshake has {} bytes, expected {} (protocol version?)",
                                   handshake.size(), kHandshakeBytes);
  }
  auto remote_or = KvPageLayout::Parse(handshake.first(KvPageLayout::kSerializedSize));
  if (!remote_or.ok()) {
    return FailedPreconditionError("unreadable layout handshake: {}", remote_or.status().message());
  }
  const KvPageLayout& remote = *remote_or;
  const std::byte* p = handshake.data() + KvPageLayout::kSerializedSize;
  const uint64_t remote_fp = GetField<uint64_t>(p);
  const uint64_t ticket_fp = GetField<uint64_t>(p);
  const uint32_t pages = GetField<uint32_t>(p);
  if (remote_fp != remote.Fingerprint()) {
    return FailedPreconditionError("layout handshake fingerprint {:#x} does not match its layout",
                                   remote_fp);
  }
  Status s = CheckCompatible(layout_, remote);
  if (!s.ok()) {
    return FailedPreconditionError("KV layout mismatch: {} (local: {}; remote: {})", s.message(),
                                   layout_.Describe(), remote.Describe());
  }
  if (ticket_fp != fingerprint_) {
    return FailedPreconditionError(
        "ticket fingerprint {:#018x} is not this receiver's layout fingerprint {:#018x} ({})",
        ticket_fp, fingerprint_, layout_.Describe());
  }
  if (pages != expected_pages) {
    return InvalidArgumentError("sender has {} pages per layer, receiver reserved {}", pages,
                                expected_pages);
  }
  return Status::Ok();
}

StatusOr<std::vector<std::span<const std::byte>>> Formatter::SendSpans(
    const PageAccessor& pages, int32_t layer, std::span<const int32_t> blocks) const {
  return CollectSpans<std::span<const std::byte>>(pages, layout_, page_bytes_, layer, blocks);
}

StatusOr<std::vector<std::span<std::byte>>> Formatter::ReceiveSpans(
    const PageAccessor& pages, int32_t layer, std::span<const int32_t> blocks) const {
  return CollectSpans<std::span<std::byte>>(pages, layout_, page_bytes_, layer, blocks);
}

}  // namespace tandem

// Formatter: the middle KV transfer layer. Turns one layer of a request's pages into wire
// spans (sender) or destination spans (receiver), and runs the layout handshake. It is the
// only code that knows how pages sit on the wire:
//
//   layer message payload = page(layer, blocks[0]) ‖ page(layer, blocks[1]) ‖ ...
//
// Sender and receiver block ids differ (the receiver reserved its own blocks): both sides list
// their blocks in token order, and the sender's i-th page lands in the receiver's i-th block.
// Pages adjacent in memory are merged into one span, so a contiguous run costs one iovec.
//
// Handshake (before any page byte moves): the sender sends EncodeHandshake(); the receiver
// runs CheckHandshake() against its own layout and answers accept or reject. A mismatch is
// FAILED_PRECONDITION naming the first differing field.
//
// Thread safety: a Formatter is immutable after construction; all methods are const and may
// be called concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/kvtransfer/layout.h"

namespace tandem {

// Where a worker's pages live. The engine's KvCache is adapted to this by the worker.
// Page() must return exactly layout.PageBytes() bytes that stay valid (and are not moved) for
// as long as any transfer using the accessor is in progress. Called from kvtransfer's I/O
// threads, so it must be safe to call concurrently (plain address arithmetic is).
class PageAccessor {
 public:
  virtual ~PageAccessor() = default;
  virtual std::span<std::byte> Page(int32_t layer, int32_t block) const = 0;
};

// num_layers x num_blocks pages laid out like the engine's KvCache (pages of one layer
// contiguous in block order) at `base`, in memory someone else owns: host, shared or device
// memory (the addresses are only computed, never read). Page() is empty for a layer or block out
// of range.
class PagesAt final : public PageAccessor {
 public:
  PagesAt(std::byte* base, const KvPageLayout& layout, int32_t num_blocks);
  std::span<std::byte> Page(int32_t layer, int32_t block) const override;
  int32_t num_blocks() const { return num_blocks_; }
  // num_layers * num_blocks * page bytes: the size of such a pool.
  static size_t Bytes(const KvPageLayout& layout, int32_t num_blocks) {
    return layout.PageBytes() * size_t(layout.num_layers) * size_t(num_blocks);
  }
  size_t bytes() const { return page_bytes_ * size_t(num_layers_) * size_t(num_blocks_); }

 private:
  std::byte* base_;
  size_t page_bytes_;
  int32_t num_layers_;
  int32_t num_blocks_;
};

// Owns num_layers x num_blocks pages laid out as PagesAt's, zero-initialised. For tests,
// benchmarks and host staging buffers.
class HostPageBuffer final : public PageAccessor {
 public:
  HostPageBuffer(const KvPageLayout& layout, int32_t num_blocks);
  std::span<std::byte> Page(int32_t layer, int32_t block) const override {
    return pages_.Page(layer, block);
  }
  int32_t num_blocks() const { return pages_.num_blocks(); }
  std::span<std::byte> bytes() const { return {data_.get(), pages_.bytes()}; }

 private:
  std::unique_ptr<std::byte[]> data_;
  PagesAt pages_;
};

class Formatter {
 public:
  // `layout` must be valid (KvPageLayout::Validate()).
  explicit Formatter(const KvPageLayout& layout);

  const KvPageLayout& layout() const { return layout_; }
  uint64_t fingerprint() const { return fingerprint_; }
  size_t page_bytes() const { return page_bytes_; }
  // Payload bytes of one layer message carrying `num_pages` pages.
  size_t LayerBytes(size_t num_pages) const { return num_pages * page_bytes_; }

  // Sender: handshake payload = local layout + its fingerprint + the fingerprint the ticket
  // says the receiver has + the number of pages per layer.
  std::string EncodeHandshake(uint64_t ticket_fingerprint, uint32_t num_pages) const;
  // Receiver: OK to accept; FAILED_PRECONDITION naming the first differing field (from the
  // receiver's point of view: "local" = receiver), or when the ticket's fingerprint is not
  // ours; INVALID_ARGUMENT if the page count differs from `expected_pages`.
  Status CheckHandshake(std::span<const std::byte> handshake, size_t expected_pages) const;

  // Sender: the layer's pages of `blocks`, in order, as wire spans (adjacent pages merged).
  // INVALID_ARGUMENT for a bad layer or a page of the wrong size.
  StatusOr<std::vector<std::span<const std::byte>>> SendSpans(
      const PageAccessor& pages, int32_t layer, std::span<const int32_t> blocks) const;
  // Receiver: destination spans for the layer's pages of `blocks`, in order.
  StatusOr<std::vector<std::span<std::byte>>> ReceiveSpans(const PageAccessor& pages, int32_t layer,
                                                           std::span<const int32_t> blocks) const;

 private:
  KvPageLayout layout_;
  uint64_t fingerprint_;
  size_t page_bytes_;
};

}  // namespace tandem

// Private to tandem_kvtransfer: the nccl data plane. One 2-rank communicator per (sender,
// receiver) connection, rank 0 the sender:
//
//   sender → kNcclInit{token of a registered request, unique id}   (right after connecting)
//   both   → NcclLink::Join, then WaitReady (non-blocking init, polled with a deadline)
//   receiver → kNcclInit (empty: joined) | kAbort(why) and the connection closes
//
// Then the usual control protocol; a kLayer frame carries no payload but announces that the
// layer's pages follow on the communicator: the sender issues one grouped send of the layer's
// pages right after the frame, the receiver's reader posts the matching grouped receive when it
// reads the frame (into the request's pages, or a scratch page for a layer it drops), so NCCL's
// in-order matching follows the control connection's order. The receiver acks after its
// receive completed. Every wait is polled with a deadline; a deadline, an error or
// RequestAbort() aborts the communicator (ncclCommAbort), after which no page is touched, and
// the connection is failed with it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "tandem/common/status.h"
#include "tandem/kvtransfer/connection.h"
#include "tandem/kvtransfer/nccl_api.h"

namespace tandem::kvtransfer_internal {

class NcclLink {
 public:
  // Rank 0: a fresh unique id (to send in kNcclInit).
  static StatusOr<NcclUniqueId> NewId(const NcclApi& api);
  // Starts joining the communicator of `id` as `rank`; WaitReady finishes.
  static StatusOr<std::unique_ptr<NcclLink>> Join(const NcclApi& api, const NcclUniqueId& id,
                                                  int rank);
  ~NcclLink();
  NcclLink(const NcclLink&) = delete;
  NcclLink& operator=(const NcclLink&) = delete;

  // Blocks until both ranks joined. DEADLINE_EXCEEDED / UNAVAILABLE (the link is broken then).
  Status WaitReady(Deadline deadline);
  // One layer's pages, as one group, and waits until they moved. Any error breaks the link.
  // Spans may hold several adjacent pages (the Formatter merges them on one side only): each
  // goes as page_bytes-sized messages, so both sides issue the same messages.
  Status Send(std::span<const ConstByteSpan> pages, size_t page_bytes, Deadline deadline);
  Status Recv(std::span<const ByteSpan> pages, size_t page_bytes, Deadline deadline);
  // Receives `pages` pages of `page_bytes` into a scratch page (a layer nobody wants).
  Status Discard(uint32_t pages, size_t page_bytes, Deadline deadline);

  // From any thread: the wait in progress (or the next one) aborts the communicator and fails.
  void RequestAbort() { abort_requested_ = true; }
  bool broken() const { return comm_ == nullptr; }
  const NcclApi& api() const { return api_; }

 private:
  NcclLink(const NcclApi& api, NcclApi::Comm comm, NcclApi::Stream stream, int rank)
      : api_(api), comm_(comm), stream_(stream), peer_(1 - rank) {}
  // Waits for the stream (or, before the link is ready, the init) to finish.
  Status Poll(Deadline deadline, bool init, const char* what);
  Status Fail(Status status);  // aborts the communicator; returns `status`
  template <typename Span, typename Op>
  Status Group(std::span<const Span> pages, size_t page_bytes, Deadline deadline, Op op,
               const char* what);
  std::string Error(int result) const;

  const NcclApi& api_;
  NcclApi::Comm comm_;  // nullptr once aborted
  NcclApi::Stream stream_;
  const int peer_;
  void* scratch_ = nullptr;  // Discard's page (api memory)
  size_t scratch_bytes_ = 0;
  std::atomic<bool> abort_requested_{false};
};

// kNcclInit payload from the sender: the request's token (8 bytes, little-endian), then the id.
std::string EncodeNcclInit(uint64_t token, const NcclUniqueId& id);
// INVALID_ARGUMENT when the payload has the wrong size.
StatusOr<std::pair<uint64_t, NcclUniqueId>> DecodeNcclInit(std::span<const std::byte> payload);

}  // namespace tandem::kvtransfer_internal

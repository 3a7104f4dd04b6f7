#include "nccl_plane.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

namespace tandem::kvtransfer_internal {

namespace {

bool Ok(int r) { return r == kNcclSuccess || r == kNcclInProgress; }

// Short waits first (a layer of a small model moves in microseconds), then up to 1 ms.
void Backoff(int spin) {
  if (spin < 64) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(std::min(1000, 20 * (spin - 63))));
  }
}

}  // namespace

std::string NcclLink::Error(int result) const {
  return fmt::format("{} ({})", api_.error_string(result), result);
}

StatusOr<NcclUniqueId> NcclLink::NewId(const NcclApi& api) {
  NcclUniqueId id;
  if (const int r = api.get_unique_id(&id); r != kNcclSuccess) {
    return UnavailableError("nccl ({}): no unique id: {} ({})", api.name, api.error_string(r), r);
  }
  return id;
}

StatusOr<std::unique_ptr<NcclLink>> NcclLink::Join(const NcclApi& api, const NcclUniqueId& id,
                                                   int rank) {
  NcclApi::Stream stream = nullptr;
  if (const int r = api.stream_create(&stream); r != kNcclSuccess) {
    return UnavailableError("nccl ({}): no stream: {} ({})", api.name, api.error_string(r), r);
  }
  NcclApi::Comm comm = nullptr;
  if (const int r = api.comm_init_rank(&comm, 2, id, rank); !Ok(r)) {
    if (comm != nullptr) api.comm_abort(comm);
    api.stream_destroy(stream);
    return UnavailableError("nccl ({}): cannot join as rank {}: {} ({})", api.name, rank,
                            api.error_string(r), r);
  }
  return std::unique_ptr<NcclLink>(new NcclLink(api, comm, stream, rank));
}

NcclLink::~NcclLink() {
  if (comm_ != nullptr) api_.comm_abort(comm_);
  if (scratch_ != nullptr) api_.mem_free(scratch_);
  if (stream_ != nullptr) api_.stream_destroy(stream_);
}

Status NcclLink::Fail(Status status) {
  if (comm_ != nullptr) {
    api_.comm_abort(comm_);
    comm_ = nullptr;
  }
  return status;
}

Status NcclLink::Poll(Deadline deadline, bool init, const char* what) {
  for (int spin = 0;; ++spin) {
    if (comm_ == nullptr) return UnavailableError("nccl {}: the communicator was aborted", what);
    if (abort_requested_) {
      return Fail(CancelledError("nccl {}: aborted (connection ended)", what));
    }
    int async = kNcclSuccess;
    const int r = api_.comm_get_async_error(comm_, &async);
    if (!Ok(r) || !Ok(async)) {
      return Fail(UnavailableError("nccl {}: {}", what, Error(Ok(r) ? async : r)));
    }
    int done = async;
    if (!init && async == kNcclSuccess) done = api_.stream_query(stream_);
    if (done == kNcclSuccess) return Status::Ok();
    if (!Ok(done)) return Fail(UnavailableError("nccl {}: stream: {}", what, Error(done)));
    if (std::chrono::steady_clock::now() >= deadline) {
      return Fail(DeadlineExceededError("nccl {}: not done by its deadline", what));
    }
    Backoff(spin);
  }
}

Status NcclLink::WaitReady(Deadline deadline) { return Poll(deadline, /*init=*/true, "init"); }

// One group of page-sized messages (`op`: the api's send or recv), then waits for it.
template <typename Span, typename Op>
Status NcclLink::Group(std::span<const Span> pages, size_t page_bytes, Deadline deadline, Op op,
                       const char* what) {
  if (comm_ == nullptr) return UnavailableError("nccl {}: the communicator was aborted", what);
  int r = api_.group_start();
  for (size_t i = 0; Ok(r) && i < pages.size(); ++i) {
    for (size_t at = 0; Ok(r) && at < pages[i].size(); at += page_bytes) {
      r = op(pages[i].data() + at, std::min(page_bytes, pages[i].size() - at), peer_, comm_,
             stream_);
    }
  }
  const int end = api_.group_end();
  if (!Ok(r) || !Ok(end))
    return Fail(UnavailableError("nccl {}: {}", what, Error(Ok(r) ? end : r)));
  return Poll(deadline, /*init=*/false, what);
}

Status NcclLink::Send(std::span<const ConstByteSpan> pages, size_t page_bytes, Deadline deadline) {
  return Group(pages, page_bytes, deadline, api_.send, "send");
}

Status NcclLink::Recv(std::span<const ByteSpan> pages, size_t page_bytes, Deadline deadline) {
  return Group(pages, page_bytes, deadline, api_.recv, "recv");
}

Status NcclLink::Discard(uint32_t pages, size_t page_bytes, Deadline deadline) {
  if (comm_ == nullptr) return UnavailableError("nccl recv: the communicator was aborted");
  if (scratch_bytes_ < page_bytes) {
    if (scratch_ != nullptr) api_.mem_free(scratch_);
    scratch_ = nullptr;
    scratch_bytes_ = 0;
    if (const int r = api_.mem_alloc(&scratch_, page_bytes); r != kNcclSuccess) {
      return Fail(
          ResourceExhaustedError("nccl: no scratch page of {} bytes: {}", page_bytes, Error(r)));
    }
    scratch_bytes_ = page_bytes;
  }
  // One page at a time: each receive overwrites the scratch page, and they run in order.
  for (uint32_t i = 0; i < pages; ++i) {
    ByteSpan span(static_cast<std::byte*>(scratch_), page_bytes);
    TANDEM_RETURN_IF_ERROR(Recv({&span, 1}, page_bytes, deadline));
  }
  return Status::Ok();
}

std::string EncodeNcclInit(uint64_t token, const NcclUniqueId& id) {
  std::string out(8 + sizeof(id.bytes), '\0');
  for (size_t i = 0; i < 8; ++i) out[i] = static_cast<char>(token >> (8 * i));
  std::memcpy(out.data() + 8, id.bytes, sizeof(id.bytes));
  return out;
}

StatusOr<std::pair<uint64_t, NcclUniqueId>> DecodeNcclInit(std::span<const std::byte> payload) {
  NcclUniqueId id;
  if (payload.size() != 8 + sizeof(id.bytes)) {
    return InvalidArgumentError("kNcclInit has {} bytes, expected {}", payload.size(),
                                8 + sizeof(id.bytes));
  }
  uint64_t token = 0;
  for (size_t i = 0; i < 8; ++i) token |= static_cast<uint64_t>(payload[i]) << (8 * i);
  std::memcpy(id.bytes, payload.data() + 8, sizeof(id.bytes));
  return std::make_pair(token, id);
}

}  // namespace tandem::kvtransfer_internal

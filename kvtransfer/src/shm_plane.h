// Private to tandem_kvtransfer: the shm data plane (see shared_pages.h for the idea).
//
// Per sender connection (a Unix socket to the receiver's shm listener):
//   receiver → kAttach{fingerprint, num_blocks, page_bytes, pool_bytes} with two descriptors:
//              the page pool's memfd and a fresh one-page memfd holding this connection's
//              ShmLease. Then the usual control protocol; a kLayer carries no payload: the
//              sender copied the layer into the receiver's pages before sending it.
//
// Who may write a receiver page: only the sender, only between kAccept and the end of the
// request, and the receiver hands pages back to their owner only once no copy into them can
// still happen:
//   * the request completed (every layer copied and announced), or
//   * the sender confirmed an abort: it answers every kAbort from the receiver with a kAbort
//     "fence" queued behind its copies (one writer thread per connection, in order), and it
//     checks that the request is still live before each copy; or
//   * the connection is gone or the fence is late (io_timeout): the receiver sets the lease's
//     `revoked` and waits until `writing` no longer names the request (or the sender process has
//     exited). Sender: writing = id; if (revoked) skip; copy; writing = 0. Both sides use
//     sequentially consistent atomics, so at least one of them sees the other's store
//     (Dekker): a copy that has not started by then never starts.
//
// cuda_ipc is the same protocol over a device pool: kAttach also carries the receiver's device id
// after the fixed fields, the pool descriptor is the POSIX handle of exportable device memory,
// the sender maps it with DeviceIpc::Import and copies with DeviceIpc::Copy, which returns once
// the bytes landed, so `writing` still brackets every copy. The lease stays host memory.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "tandem/common/device_ipc.h"
#include "tandem/common/status.h"
#include "tandem/kvtransfer/connection.h"
#include "tandem/kvtransfer/formatter.h"
#include "tandem/kvtransfer/shared_pages.h"

namespace tandem::kvtransfer_internal {

struct ShmLease {
  std::atomic<uint64_t> writing;  // request whose pages the sender is copying now; 0 = none
  std::atomic<uint32_t> revoked;  // set by the receiver: no more copies on this connection
};
static_assert(std::atomic<uint64_t>::is_always_lock_free, "the lease is shared between processes");

// An mmap'ed range, unmapped on destruction.
class Mapping {
 public:
  Mapping() = default;
  Mapping(void* base, size_t bytes) : base_(static_cast<std::byte*>(base)), bytes_(bytes) {}
  ~Mapping();
  Mapping(Mapping&& o) noexcept
      : base_(std::exchange(o.base_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept;
  std::byte* data() const { return base_; }
  size_t size() const { return bytes_; }

 private:
  std::byte* base_ = nullptr;
  size_t bytes_ = 0;
};

// Receiver: a fresh lease (memfd, mapped, zeroed). The caller closes the fd once sent.
StatusOr<std::pair<int, Mapping>> CreateLease();
inline ShmLease* LeaseOf(const Mapping& m) { return reinterpret_cast<ShmLease*>(m.data()); }

// Receiver: the kAttach payload for `pool`; `device_id` (cuda_ipc: DeviceIpc::device_id) follows
// the fixed fields when not empty.
std::string EncodeAttach(uint64_t fingerprint, const SharedPagePool& pool, size_t page_bytes,
                         std::string_view device_id = {});

// The sender's view of one receiver's shared pool: host memory (shm) or device memory
// (cuda_ipc: `device` mapped through `ipc`).
struct ShmAttachment {
  Mapping pool;
  std::unique_ptr<DeviceMapping> device;
  DeviceIpc* ipc = nullptr;
  Mapping lease;
  int32_t num_blocks = 0;
  size_t page_bytes = 0;
  std::string peer_device;  // cuda_ipc: the receiver's device id
  std::byte* base() const { return device ? device->base() : pool.data(); }
};

// Sender: reads the kAttach frame (and its descriptors) from a fresh shm connection and maps
// the pool and the lease; with `device` (cuda_ipc) the pool is imported as device memory.
// FAILED_PRECONDITION when the receiver's page size or pool size do not fit `formatter`'s
// layout, or its pool cannot be imported on this device; UNAVAILABLE for a protocol error.
StatusOr<std::unique_ptr<ShmAttachment>> AttachShm(Connection& conn, const Formatter& formatter,
                                                   Deadline deadline, DeviceIpc* device = nullptr);

// Sender: copies one layer's pages local_blocks[i] → the receiver's dest_blocks[i] under the
// lease (device to device for cuda_ipc: `src` then names device pages). UNAVAILABLE when the
// receiver revoked the connection; INVALID_ARGUMENT for a block out of range or a source page of
// the wrong size.
Status CopyLayerShm(ShmAttachment& shm, uint64_t request_id, const PageAccessor& src, int32_t layer,
                    std::span<const int32_t> local_blocks, std::span<const int32_t> dest_blocks,
                    int32_t num_layers);

// Receiver: OK when the pages of `blocks` in `pages` are those pages of the shared pool (a
// sender can only write there; checked on the first and the last layer); else
// FAILED_PRECONDITION.
Status CheckPagesInPool(const SharedPagePool& pool, const PageAccessor& pages,
                        std::span<const int32_t> blocks, int32_t num_layers, size_t page_bytes);

}  // namespace tandem::kvtransfer_internal

// Connection: moves framed messages between two peers. The lowest of the three KV transfer
// layers (Connection / Formatter / Transceiver); it knows nothing about pages.
//
// A message is a fixed header (MessageHeader, 32 bytes on the wire) followed by `length`
// payload bytes. Many requests are multiplexed over one connection: the header names the
// request, and the receiver decides where each payload goes after reading its header:
//
//   MessageHeader h = ReceiveHeader(deadline);          // learn request, kind, layer, length
//   ReceivePayload({dst spans...}, deadline);           // scatter straight into the pages
//
// Payloads move with vectored I/O (sendmsg / readv): no copy beyond the kernel's.
//
// Failure contract:
//   * every blocking call takes a deadline and returns DEADLINE_EXCEEDED when it passes;
//   * peer closed / reset → UNAVAILABLE ("peer 127.0.0.1:4242 closed the connection");
//   * a call that fails after part of a frame moved leaves the stream unusable: broken() turns
//     true, the socket is shut down and every later call returns UNAVAILABLE. A deadline that
//     passes before any byte of a frame moved leaves the connection usable.
//   * Shutdown() wakes every blocked call (they return CANCELLED); the destructor closes the fd.
//
// Thread safety: Send may be called from many threads (whole frames never interleave).
// ReceiveHeader / ReceivePayload / DiscardPayload must be called from one reader thread at a
// time. Shutdown, broken and peer may be called from any thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/kvtransfer/kv_tls.h"

namespace tandem {

using Deadline = std::chrono::steady_clock::time_point;
// A deadline that never passes (for idle reader loops that are woken by Shutdown()).
inline constexpr Deadline kNoDeadline = Deadline::max();

using ConstByteSpan = std::span<const std::byte>;
using ByteSpan = std::span<std::byte>;

struct MessageHeader {
  uint64_t request_id = 0;
  uint16_t kind = 0;        // meaning is up to the layer above
  int32_t layer = -1;       // -1 when not about a layer
  uint32_t page_count = 0;  // pages in the payload (0 for control messages)
  uint64_t length = 0;      // payload bytes that follow the header
};

class Connection {
 public:
  virtual ~Connection() = default;

  // Sends `header` followed by the concatenation of `payload` (whose total size must equal
  // header.length, else INVALID_ARGUMENT). Returns once every byte is handed to the kernel.
  virtual Status Send(const MessageHeader& header, std::span<const ConstByteSpan> payload,
                      Deadline deadline) = 0;
  // Reads the next header. FAILED_PRECONDITION if the previous payload was not fully consumed.
  virtual StatusOr<MessageHeader> ReceiveHeader(Deadline deadline) = 0;
  // Reads the next sum(size) payload bytes of the current message into `dest`, in order.
  // May be called several times per message; asking for more than remains is INVALID_ARGUMENT.
  virtual Status ReceivePayload(std::span<const ByteSpan> dest, Deadline deadline) = 0;
  // Reads and drops `bytes` payload bytes of the current message.
  virtual Status DiscardPayload(uint64_t bytes, Deadline deadline) = 0;
  // Payload bytes of the current message not read yet.
  virtual uint64_t payload_remaining() const = 0;

  // Wakes blocked calls and makes every later call fail; idempotent. Does not close the fd.
  virtual void Shutdown() = 0;
  virtual bool broken() const = 0;
  // "host:port" of the other end (a Unix socket's path for ConnectUnix / ListenUnix).
  virtual const std::string& peer() const = 0;

  // Unix-socket connections only (descriptor passing, same host):
  // Send() with descriptors `fds` attached to the frame's first byte (SCM_RIGHTS; the caller
  // keeps its own copies). UNIMPLEMENTED on TCP.
  virtual Status SendWithFds(const MessageHeader& header, std::span<const ConstByteSpan> payload,
                             std::span<const int> fds, Deadline deadline);
  // Descriptors that arrived with frames read so far, now owned by the caller (empty if none).
  virtual std::vector<int> TakeFds() { return {}; }
  // Process id of the other end (SO_PEERCRED), or 0 when unknown (TCP).
  virtual int peer_pid() const { return 0; }
  // User id of the other end's process (SO_PEERCRED), or -1 when unknown (TCP).
  virtual int64_t peer_uid() const { return -1; }
};

class Listener {
 public:
  virtual ~Listener() = default;
  // Next incoming connection; DEADLINE_EXCEEDED if none came in time, CANCELLED after Close().
  virtual StatusOr<std::unique_ptr<Connection>> Accept(Deadline deadline) = 0;
  // Stops accepting; a blocked Accept returns within ~100 ms. Safe from any thread.
  virtual void Close() = 0;
  virtual int port() const = 0;
};

// Listens on host:port (port 0 picks a free port; see Listener::port()).
// UNAVAILABLE if the address cannot be bound, INVALID_ARGUMENT for an unparsable host.
// With `tls` (which must serve: kv_tls.h) every accepted connection speaks TLS.
StatusOr<std::unique_ptr<Listener>> ListenTcp(const std::string& host, int port,
                                              std::shared_ptr<const KvTls> tls = nullptr);
// Connects to host:port. UNAVAILABLE when refused/unreachable, DEADLINE_EXCEEDED on timeout.
// With `tls` (which must dial) the connection speaks TLS and verifies the peer against its CA and
// `host`; the handshake runs with the first Send or Receive.
StatusOr<std::unique_ptr<Connection>> ConnectTcp(const std::string& host, int port,
                                                 Deadline deadline,
                                                 std::shared_ptr<const KvTls> tls = nullptr);

// Unix-domain stream sockets: the same framing, plus descriptor passing. `path` is a file
// system path, or "@name" for Linux's abstract namespace (nothing on disk to clean up).
// A listener on a file path unlinks it when destroyed. Listener::port() is 0.
StatusOr<std::unique_ptr<Listener>> ListenUnix(const std::string& path);
StatusOr<std::unique_ptr<Connection>> ConnectUnix(const std::string& path, Deadline deadline);

}  // namespace tandem

// Transceiver: the top KV transfer layer. Runs each request's transfer asynchronously, with a
// deadline, and reports one Status per request. One object per worker serves both roles:
//
// Receiver (decode worker):
//   ExpectTransfer(id, pages, my_blocks, deadline, done)   // the reservation, BEFORE the ticket
//   ... done(Status) runs once: OK when every layer arrived, else the error.
// Sender (prefill worker):
//   h = StartSend(ticket, pages, my_blocks)   // ticket from the receiver: endpoint, its blocks,
//                                              // its layout fingerprint, deadline
//   (or StartSend(ticket, pages, {}) while the request still queues for pages, then
//    BindBlocks(h, my_blocks) once they are allocated: the receiver learns at once that a live
//    sender owns the request)
//   SendLayer(h, layer) as each layer is computed (never blocks: queued to the I/O thread)
//   Wait(h) → OK once the receiver acknowledged every layer, else the error; or, instead of a
//   thread blocked in Wait, StartSend(..., done) and done(Status) runs once when it ends.
//
// Protocol per request over the peer connection (kinds in src/transceiver_impl.h):
//   sender → kStart(its remaining time, the request's token, handshake)
//                               receiver → kAccept | kAbort(FAILED_PRECONDITION ...)
//   sender → kLayer(pages) ...  receiver → kLayerAck per layer
//   either → kAbort(status) on cancel / deadline / error.
// No page byte is sent before kAccept. Layer messages of one request may interleave with
// other requests' messages on the same connection.
// Authentication: the receiver registers each request with a random token (ExpectTransfer) that
// travels to the sender only inside the ticket (through the router's gRPC calls, which need the
// cluster key). A kStart with another token is refused UNAUTHENTICATED without touching the
// request, and so is a kAbort for a request not yet started; after kStart only the sender's
// own connection can feed or abort the request. A stranger who can reach the port and guesses
// request ids can therefore neither write KV into reserved pages nor end someone's transfer.
//
// State machines (each request ends in exactly one terminal state; the page owner is told
// exactly once, and only after no I/O thread touches its pages any more):
//   receive: kReserved → kReceiving → kComplete | kFailed | kCancelled
//   send:    kHandshaking → kStreaming → kComplete | kFailed | kCancelled
//   Terminal causes: deadline (DEADLINE_EXCEEDED), Cancel() on either side (CANCELLED; the
//   other side gets CANCELLED via kAbort), peer death or connection loss (UNAVAILABLE),
//   layout mismatch (FAILED_PRECONDITION on both sides), bad input (INVALID_ARGUMENT).
//   Deadlines: the ticket's deadline bounds the whole send. The receiver's ExpectTransfer
//   deadline is a start-by deadline (a lease): a registration that never got a kStart only
//   learns of a dead or absent sender from it. Once kStart arrived the request is tied to that
//   connection and fails with it, and its deadline becomes the sender's (sent in kStart) plus
//   one io_timeout: a sender that is alive but slow (queued, computing) keeps it.
//
// Threading model:
//   * one listener thread (accepts receiver-side connections);
//   * per inbound connection, one reader thread: reads headers, scatters layer payloads
//     straight into the reserved pages (readv), sends acks. Inbound connections are capped
//     (options.max_connections, max_pending_connections) and timed out (handshake_timeout,
//     idle_timeout): a connection over a cap is closed at the accept, before any thread;
//   * per outbound peer (one TCP connection per receiver endpoint, created lazily on the first
//     StartSend to it, reused by later requests): one writer thread (connects, then drains the
//     send queue with gathered writes straight from the pages) and one reader thread (acks);
//   * one service thread: enforces deadlines, runs `done` callbacks, joins dead peers' threads.
//   A dead connection is dropped; the next StartSend to that endpoint reconnects.
// All public methods are thread-safe. `done` callbacks run on the service thread, outside any
// lock: keep them short; they may call back into the Transceiver.
//
// Transports (the data plane; the control messages above are the same for all of them), chosen
// by the scheme of the ticket's endpoint:
//   "host:port"     tcp: layer payloads travel in the kLayer frames and the receiver's reader
//                   scatters them into its pages.
//   "nccl:host:port" nccl: the control messages go over tcp to host:port, and each connection
//                   also joins a 2-rank NCCL communicator (options.nccl) whose unique id the
//                   sender sends first; a kLayer frame carries no payload and the layer's pages
//                   follow as one grouped send, which the receiver's reader matches with a
//                   grouped receive into the pages (src/nccl_plane.h). A deadline or a dead
//                   peer aborts the communicator (after which no page is touched) and the
//                   connection with it.
//   "shm:<socket>"  shm (same host): the receiver's pool is a memfd (options.shm_pool), passed
//                   once per connection over the Unix socket <socket>; the sender copies each
//                   layer into the receiver's pages and the kLayer frame carries no payload.
//                   The receiver hands pages back only once no copy into them can happen any
//                   more (the request completed, the sender confirmed an abort, or the
//                   connection's lease was revoked and no copy is in flight): see
//                   src/shm_plane.h. ExpectTransfer for a request that arrives over shm must
//                   use pages of that pool (else the sender's kStart is refused).
//   "cuda_ipc:<socket>" cuda_ipc (same host, GPU workers): shm with device memory. The
//                   receiver's pool is exportable device memory (options.device_pool, its fd a
//                   POSIX handle of the CUDA virtual memory API) that the sender imports through
//                   options.device_ipc; the sender copies each layer device to device (its own
//                   pages are device memory too) and announces it once the copy completed. The
//                   same leases and fences as shm; ExpectTransfer must use the device pool's
//                   pages.
//
// Ownership: the caller keeps each PageAccessor (and its pages) alive, and must not reuse the
// pages, until the request's `done` ran (receiver) or Wait returned (sender). The destructor
// cancels every active request (their `done` callbacks run before it returns) and joins all
// threads; it closes all sockets.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "tandem/common/device_ipc.h"
#include "tandem/common/status.h"
#include "tandem/kvtransfer/connection.h"
#include "tandem/kvtransfer/formatter.h"
#include "tandem/kvtransfer/kv_tls.h"
#include "tandem/kvtransfer/layout.h"
#include "tandem/kvtransfer/nccl_api.h"
#include "tandem/kvtransfer/shared_pages.h"

namespace tandem {

class Metrics;

struct TransceiverOptions {
  // This worker's page layout. Required.
  KvPageLayout layout;
  // Accept incoming transfers (receiver role). Default: true.
  bool listen = true;
  // Address to listen on and the one put in endpoint(). Default: "127.0.0.1".
  std::string listen_host = "127.0.0.1";
  // 0 picks a free port. Default: 0.
  int listen_port = 0;
  // Host put in endpoint() instead of listen_host (a reachable name when listen_host is a
  // wildcard such as 0.0.0.0). Default: "" (listen_host).
  std::string advertise_host;
  // Longest wait to open a connection to a receiver (also bounded by the ticket deadline).
  // Default: 2 s.
  std::chrono::milliseconds connect_timeout{2000};
  // Longest wait for one frame to move once started, independent of request deadlines so that a
  // request expiring mid-frame does not break the connection other requests share. Default: 5 s.
  std::chrono::milliseconds io_timeout{5000};
  // Receiver role, shm transport: the shared page pool that same-host senders write into. When
  // set, the transceiver also listens on `shm_socket` and shm_endpoint() names it. Must outlive
  // the transceiver. Default: none (tcp only).
  std::optional<SharedPagePool> shm_pool;
  // Unix socket for shm senders: a path, or "@name" (abstract). Default:
  // "@tandem-kv-<pid>-<tcp port>".
  std::string shm_socket;
  // Receiver role, cuda_ipc transport: the exportable device page pool same-host senders copy
  // into (fd: its POSIX handle; base: this process's device address of it). Needs device_ipc.
  // When set, the transceiver also listens on `device_socket` and cuda_ipc_endpoint() names it.
  // Default: none.
  std::optional<SharedPagePool> device_pool;
  // Unix socket for cuda_ipc senders. Default: "@tandem-kv-dev-<pid>-<tcp port>".
  std::string device_socket;
  // Both roles, cuda_ipc transport: imports receivers' pools and copies device to device
  // (tandem/engine/cuda_runner.h: CreateCudaDeviceIpc); must outlive the transceiver. A sender
  // needs one to start a transfer to a "cuda_ipc:" endpoint, and then reads its pages as device
  // memory. Default: none.
  DeviceIpc* device_ipc = nullptr;
  // TLS on the TCP connections (tcp, and nccl's control connection; see kv_tls.h): a receiver
  // whose KvTls serves() accepts only TLS; a sender whose KvTls dials() speaks TLS to every
  // receiver and verifies it. Default: none (plaintext).
  std::shared_ptr<const KvTls> tls;
  // Both roles, nccl transport: the NCCL to use (LoadNcclLibrary, or FakeNcclApi on CPU hosts;
  // see nccl_api.h); must outlive the transceiver. A receiver with one also accepts nccl
  // senders on its tcp listener and nccl_endpoint() names it; a sender needs one to start a
  // transfer to a "nccl:" endpoint. Default: none.
  const NcclApi* nccl = nullptr;
  // Receiver role, bounds on inbound connections (either transport). A connection is
  // "pending" from its accept until it proves it is a sender: a kStart (or kAbort) carrying a
  // registered request's token. Over the connection cap a new connection is closed at once,
  // the reason logged; at the pending cap the pending connection accepted first is closed to
  // make room for the new one (a sender hands in its token as soon as it connects, so idle
  // strangers go first and cannot lock senders out for the handshake timeout).
  // Pending connections at most. Default: 16.
  int32_t max_pending_connections = 16;
  // Inbound connections at most (pending included). Default: 256.
  int32_t max_connections = 256;
  // A pending connection is closed this long after its accept. Default: 10 s.
  std::chrono::milliseconds handshake_timeout{10000};
  // A connection with no transfer in progress that sent nothing this long is closed (the
  // sender reconnects on its next transfer). Default: 5 min.
  std::chrono::milliseconds idle_timeout{300000};
  // Receives tandem_kv_connections{state} and tandem_kv_connections_closed_total{reason}
  // (reasons: over_limit, over_pending_limit (cap 0), evicted_pending, handshake_timeout,
  // idle_timeout, peer_closed, no_thread, shutdown, peer_uid and attach_failed (shm),
  // nccl_init_failed). Must outlive the transceiver. Default: none.
  Metrics* metrics = nullptr;
};

// Given by the receiver (decode worker) to the sender (prefill worker).
struct TransferTicket {
  uint64_t request_id = 0;
  std::string dest_endpoint;         // receiver's endpoint(): "host:port" (tcp),
                                     // shm_endpoint(): "shm:<unix socket>" (shm) or
                                     // nccl_endpoint(): "nccl:host:port" (nccl),
                                     // cuda_ipc_endpoint(): "cuda_ipc:<socket>"
  std::vector<int32_t> dest_blocks;  // receiver's reserved blocks, in token order
  uint64_t dest_fingerprint = 0;     // receiver's KvPageLayout::Fingerprint()
  Deadline deadline{};               // the whole transfer, all layers acknowledged
  uint64_t token = 0;                // the receiver's secret for the request (ExpectTransfer)
};

// A random request token (the kernel's CSPRNG); never 0.
uint64_t NewTransferToken();

struct TransceiverStats {
  int64_t active_sends = 0;     // send requests not yet finished
  int64_t active_receives = 0;  // receive registrations not yet finished
  int64_t outbound_connections = 0;
  int64_t inbound_connections = 0;
  int64_t pending_connections = 0;    // inbound, not through the handshake yet
  int64_t refused_connections = 0;    // cumulative: closed at accept, over a cap
  int64_t timed_out_connections = 0;  // cumulative: handshake or idle timeout
  int64_t layers_sent = 0;            // cumulative, acknowledged by the receiver
  int64_t layers_received = 0;        // cumulative
  int64_t bytes_received = 0;         // cumulative page bytes (either transport)
  int64_t fencing = 0;                // ended shm receives still waiting until no copy can land
};

namespace kvtransfer_internal {
struct SendState;
}

// Names one StartSend. Copyable; stays valid (and Wait keeps answering) after the request ends.
class SendHandle {
 public:
  SendHandle() = default;
  bool valid() const { return state_ != nullptr; }
  uint64_t request_id() const;

 private:
  friend class Transceiver;
  std::shared_ptr<kvtransfer_internal::SendState> state_;
};

class Transceiver {
 public:
  // Called once per ExpectTransfer (and per StartSend given one) with the final status.
  using DoneCallback = std::function<void(const Status&)>;

  // INVALID_ARGUMENT for a bad layout; UNAVAILABLE if it cannot listen.
  static StatusOr<std::unique_ptr<Transceiver>> Create(TransceiverOptions options);
  ~Transceiver();
  Transceiver(const Transceiver&) = delete;
  Transceiver& operator=(const Transceiver&) = delete;

  // "host:port" that senders connect to (empty when options.listen is false).
  const std::string& endpoint() const;
  // "shm:<unix socket>" for same-host senders (empty without options.shm_pool).
  const std::string& shm_endpoint() const;
  // "nccl:host:port" for nccl senders (empty without options.nccl or listen).
  const std::string& nccl_endpoint() const;
  // "cuda_ipc:<unix socket>" for same-host GPU senders (empty without options.device_pool).
  const std::string& cuda_ipc_endpoint() const;
  const KvPageLayout& layout() const;
  uint64_t fingerprint() const;

  // --- Sender role ---
  // Starts a transfer: local_blocks[i] goes to ticket.dest_blocks[i]. Returns at once; the
  // connection and handshake happen on the I/O thread. Empty `local_blocks` defers them to
  // BindBlocks (the handshake still goes out now). `done`, if set, runs exactly once with the
  // request's final status (what Wait returns), on the service thread, once no I/O thread reads
  // its pages any more — so a sender needs no thread that only waits. Not called when StartSend
  // fails. INVALID_ARGUMENT for mismatched block lists or a bad endpoint, ALREADY_EXISTS if this
  // request id is already sending here.
  StatusOr<SendHandle> StartSend(TransferTicket ticket, const PageAccessor& pages,
                                 std::vector<int32_t> local_blocks, DoneCallback done = nullptr);
  // Gives a transfer started without local blocks its blocks (before the first SendLayer).
  // INVALID_ARGUMENT when the count differs from the ticket's or a page has the wrong size,
  // FAILED_PRECONDITION when blocks were already given, the request's error if it ended.
  Status BindBlocks(const SendHandle& handle, std::vector<int32_t> local_blocks);
  // Queues one computed layer (each layer in [0, num_layers) exactly once, any order); layers
  // queued before the receiver accepted are held until it does. Never blocks on I/O. Returns the
  // request's error if it already ended, INVALID_ARGUMENT for a bad or repeated layer,
  // FAILED_PRECONDITION before BindBlocks.
  Status SendLayer(const SendHandle& handle, int32_t layer);
  // Blocks until the request ends: OK when every layer was acknowledged, else the error.
  // Bounded by the ticket deadline (plus at most io_timeout for a frame in flight).
  Status Wait(const SendHandle& handle);
  // Seconds during which some layer of this request was on its way: from an I/O thread starting
  // to put it on the wire (copying it into shm / device pages, writing its frame, sending it
  // over NCCL) until the receiver acknowledged it, the receiver's own work on it included (a tcp
  // receiver scattering the frame into its pages); final once it ended. Its bytes over these
  // seconds is the link's speed for it, whatever the compute around it did: time with no layer
  // in flight (waiting for the next layer's compute) does not count.
  double WireSeconds(const SendHandle& handle) const;

  // --- Receiver role ---
  // Registers where request `request_id`'s pages go: the sender's i-th page of each layer is
  // written to pages.Page(layer, local_blocks[i]). Must be called before the ticket is handed
  // to the sender (a kStart for an unknown request is rejected with NOT_FOUND). `start_by`: the
  // sender must start (kStart) before it, else DEADLINE_EXCEEDED; after that the sender's
  // deadline applies. `done` runs exactly once. `token`: the secret the sender must present
  // (TransferTicket::token; production draws a random one per request, NewTransferToken).
  // INVALID_ARGUMENT for empty blocks / wrong page sizes, ALREADY_EXISTS for a request id
  // already registered.
  Status ExpectTransfer(uint64_t request_id, const PageAccessor& pages,
                        std::vector<int32_t> local_blocks, Deadline start_by, DoneCallback done,
                        uint64_t token = 0);

  // Ends the request (either role) promptly with CANCELLED and tells the peer, which ends its
  // side with CANCELLED. NOT_FOUND if no active request has this id.
  Status Cancel(uint64_t request_id);

  TransceiverStats stats() const;

  class Impl;

 private:
  explicit Transceiver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem

// Private to tandem_kvtransfer: Transceiver internals shared by transceiver.cc (API, lifecycle,
// service thread) and transceiver_io.cc (listener, inbound reader, peer writer/reader).
//
// Locking: one mutex (Impl::mu_) guards every field below except the Connection objects'
// own I/O, which happens outside the lock. A request's pages are touched by an I/O thread only
// while its `busy` count is raised; a request is "finished" (owner told) only when it is
// terminal AND busy == 0, so pages are never written after the owner got them back.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "nccl_plane.h"
#include "shm_plane.h"
#include "tandem/kvtransfer/transceiver.h"

namespace tandem {
namespace kvtransfer_internal {

// Message kinds (MessageHeader::kind). Wire values: never renumber.
// kAttach: the first frame on an shm connection (shm_plane.h); kNcclInit: the first frame each
// way on an nccl connection (nccl_plane.h).
enum class Kind : uint16_t {
  kStart = 1,
  kAccept = 2,
  kLayer = 3,
  kLayerAck = 4,
  kAbort = 5,
  kAttach = 6,
  kNcclInit = 7
};
// Control payloads (kStart handshake, kAbort status) are small; anything larger is a
// protocol error. A kStart payload is the sender's remaining time (u64 microseconds, little
// endian) followed by the Formatter's handshake.
constexpr uint64_t kMaxControlBytes = 64 * 1024;

std::string EncodeStatus(const Status& status);
Status DecodeStatus(std::span<const std::byte> bytes);
// kAbort payload: the request's token (8 bytes, little-endian; 0 from a receiver), then the
// status. DecodeAbort: UNAVAILABLE "malformed" for fewer than 8 bytes.
std::string EncodeAbort(uint64_t token, const Status& status);
std::pair<uint64_t, Status> DecodeAbort(std::span<const std::byte> bytes);

enum class SendPhase { kHandshaking, kStreaming, kComplete, kFailed, kCancelled };
enum class RecvPhase { kReserved, kReceiving, kComplete, kFailed, kCancelled };

struct Peer;
struct Inbound;

struct SendState {
  TransferTicket ticket;
  const PageAccessor* pages = nullptr;
  std::vector<int32_t> local_blocks;  // empty until BindBlocks when started without them
  int32_t num_layers = 0;
  SendPhase phase = SendPhase::kHandshaking;
  Status status;
  std::vector<bool> requested;  // SendLayer called for this layer
  std::vector<int32_t> held;    // layers requested before kAccept
  int32_t acked = 0;
  int busy = 0;               // I/O threads reading this request's pages
  double wire_seconds = 0.0;  // Transceiver::WireSeconds
  int32_t in_flight = 0;      // layers put on the wire and not yet acknowledged
  std::chrono::steady_clock::time_point in_flight_since;  // when in_flight last left 0
  bool finished = false;                                  // terminal and released to Wait()
  Peer* peer = nullptr;                                   // cleared when terminal
  std::condition_variable cv;                             // signalled when finished
  Transceiver::DoneCallback done;  // optional; runs on the service thread once finished

  bool terminal() const {
    return phase == SendPhase::kComplete || phase == SendPhase::kFailed ||
           phase == SendPhase::kCancelled;
  }
};

struct WorkItem {
  Kind kind;
  std::shared_ptr<SendState> req;  // kStart / kLayer
  uint64_t request_id = 0;
  int32_t layer = -1;
  Status abort_status;  // kAbort
};

// One outbound connection to a receiver endpoint, shared by all requests to it.
struct Peer {
  std::string endpoint;
  std::string host;
  int port = 0;
  std::string shm_socket;              // shm / cuda_ipc transport: the receiver's Unix socket
  bool device = false;                 // cuda_ipc: the pool is device memory (DeviceIpc)
  std::unique_ptr<ShmAttachment> shm;  // set by the writer once attached
  bool nccl = false;                   // nccl transport: the writer joins `link` after connecting
  std::unique_ptr<NcclLink> link;      // set (under the lock) once joined
  std::unique_ptr<Connection> conn;    // set by the writer once connected
  std::deque<WorkItem> queue;
  std::condition_variable queue_cv;
  bool dead = false;
  std::unordered_map<uint64_t, std::shared_ptr<SendState>> requests;
  std::thread writer;
  std::thread reader;
  std::atomic<int> live_threads{0};  // decremented as each thread's very last action
};

struct RecvState {
  uint64_t id = 0;
  const PageAccessor* pages = nullptr;
  std::vector<int32_t> blocks;
  Deadline deadline{};  // start-by until kStart, then the sender's deadline + io_timeout
  uint64_t token = 0;   // what the sender's kStart (or pre-start kAbort) must carry
  Transceiver::DoneCallback done;
  RecvPhase phase = RecvPhase::kReserved;
  Status status;
  std::vector<bool> arrived;
  int32_t num_arrived = 0;
  int busy = 0;
  bool finished = false;
  std::shared_ptr<Inbound> conn;  // the sender's connection, from kStart on; cleared when terminal
  // shm: the sender writes the pages itself. Until `fenced`, a terminal request keeps its pages
  // (see shm_plane.h): `fence_conn` is the sender's connection, `fence_deadline` when to stop
  // waiting for its confirmation and revoke, `revoked_at` when the revocation started.
  bool fenced = true;
  std::shared_ptr<Inbound> fence_conn;
  Deadline fence_deadline{};
  Deadline revoked_at = kNoDeadline;

  bool terminal() const {
    return phase == RecvPhase::kComplete || phase == RecvPhase::kFailed ||
           phase == RecvPhase::kCancelled;
  }
};

// One accepted connection from a sender.
struct Inbound {
  ~Inbound();
  std::unique_ptr<Connection> conn;
  std::thread reader;
  bool dead = false;
  std::atomic<bool> exited{false};
  bool shm = false;  // came in on the shm or cuda_ipc listener: the sender writes pages itself
  const SharedPagePool* pool = nullptr;  // shm / cuda_ipc: the pool this connection shares
  std::unique_ptr<NcclLink> nccl;        // the sender's kNcclInit joined us (set under the lock)
  Mapping lease;                         // shm: this connection's ShmLease
  int pidfd = -1;                        // shm: the sender process (readable once it exited), or -1
  bool handshaken = false;               // sent a registered request's token (else "pending")
  Deadline handshake_by{};               // pending: closed at this time
};

// kAbort messages to send to senders once the lock is released.
struct Outbox {
  std::vector<std::tuple<std::shared_ptr<Inbound>, uint64_t, Status>> aborts;
};

}  // namespace kvtransfer_internal

class Transceiver::Impl {
 public:
  using SendState = kvtransfer_internal::SendState;
  using RecvState = kvtransfer_internal::RecvState;
  using Peer = kvtransfer_internal::Peer;
  using Inbound = kvtransfer_internal::Inbound;
  using Outbox = kvtransfer_internal::Outbox;
  using NcclLink = kvtransfer_internal::NcclLink;

  explicit Impl(TransceiverOptions options);
  ~Impl();
  Status Start();

  // API (see transceiver.h).
  StatusOr<SendHandle> StartSend(TransferTicket ticket, const PageAccessor& pages,
                                 std::vector<int32_t> local_blocks, DoneCallback done);
  Status BindBlocks(const SendHandle& handle, std::vector<int32_t> local_blocks);
  Status SendLayer(const SendHandle& handle, int32_t layer);
  Status Wait(const SendHandle& handle);
  double WireSeconds(const SendHandle& handle);
  Status ExpectTransfer(uint64_t request_id, const PageAccessor& pages,
                        std::vector<int32_t> local_blocks, Deadline start_by, DoneCallback done,
                        uint64_t token);
  Status Cancel(uint64_t request_id);
  TransceiverStats stats() const;

  const TransceiverOptions options_;
  const Formatter formatter_;
  std::string endpoint_;
  std::string shm_endpoint_;
  std::string cuda_ipc_endpoint_;
  std::string nccl_endpoint_;

 private:
  // INVALID_ARGUMENT unless every page of `blocks` has the layout's size.
  Status CheckSendBlocks(uint64_t id, const PageAccessor& pages,
                         const std::vector<int32_t>& blocks) const;

  // transceiver_io.cc: thread bodies. They take raw pointers: the objects outlive the threads.
  bool IsDevicePool(const SharedPagePool* pool) const {
    return options_.device_pool && pool == &*options_.device_pool;
  }
  // `pool`: the shared pool of the shm or cuda_ipc listener (null for tcp).
  void ListenLoop(Listener* listener, const SharedPagePool* pool);
  // shm / cuda_ipc: sends the attach frame (`pool` + a fresh lease) on a new connection.
  Status AttachInbound(Inbound& in, const SharedPagePool& pool);
  // Checks `pool` against the layout and listens for its senders on Unix socket `*socket`
  // ("@tandem-kv-<prefix><pid>-<tcp port>" when empty: `*socket` names it then).
  StatusOr<std::unique_ptr<Listener>> ListenShared(const char* option, const SharedPagePool& pool,
                                                   std::string_view prefix, std::string* socket);
  void InboundLoop(Inbound* in);
  // nccl: the sender's kNcclInit (already read: `payload`): checks its token against a
  // registered request, joins the communicator and answers. Not OK: the connection must close.
  Status AcceptNccl(Inbound& in, const MessageHeader& h, std::span<const std::byte> payload);
  // nccl, sender: sends kNcclInit for the request at the head of the queue, joins, reads the
  // answer.
  StatusOr<std::unique_ptr<NcclLink>> JoinNccl(Peer& peer, Connection& conn, Deadline deadline);
  // nccl, receiver: receives and drops a layer of `pages` pages nobody wants.
  Status DiscardNccl(NcclLink& link, uint32_t pages);
  void PeerWriterLoop(Peer* peer);
  void PeerReaderLoop(Peer* peer);
  void ServiceLoop();

  // State transitions; "Locked" = mu_ held.
  void FailSendLocked(std::shared_ptr<SendState> st, Status status, bool tell_peer);
  void CompleteSendLocked(std::shared_ptr<SendState> st);
  void MaybeFinishSendLocked(SendState& st);
  void FailRecvLocked(std::shared_ptr<RecvState> st, Status status, bool tell_peer, Outbox* out);
  void CompleteRecvLocked(std::shared_ptr<RecvState> st);
  void MaybeFinishRecvLocked(RecvState& st);
  void FailPeerLocked(Peer* peer, const Status& status);
  // `reason`: tandem_kv_connections_closed_total's label.
  void FailInboundLocked(Inbound* in, const Status& status, Outbox* out,
                         const char* reason = "peer_closed");
  // Inbound connections by state into the gauges; one closed for `reason` into the counter.
  void RefreshConnectionGaugesLocked();
  void CountClosed(const char* reason);
  void ExpireLocked(Outbox* out);
  // shm: starts the revocation of `in`'s lease (idempotent), and finishes ended requests whose
  // pages no copy can reach any more; `force` releases what is left (shutdown).
  void RevokeLocked(Inbound& in);
  void CheckFencesLocked(bool force);
  bool SenderExited(const Inbound& in) const;
  void ReapLocked();
  void SendAborts(Outbox& out);
  Deadline IoDeadline() const { return std::chrono::steady_clock::now() + options_.io_timeout; }

  std::unique_ptr<Listener> listener_;
  std::thread listen_thread_;
  std::unique_ptr<Listener> shm_listener_;
  std::thread shm_listen_thread_;
  std::unique_ptr<Listener> device_listener_;
  std::thread device_listen_thread_;
  std::thread service_thread_;

  mutable std::mutex mu_;
  std::condition_variable service_cv_;
  bool stopping_ = false;      // no new requests or connections
  bool service_stop_ = false;  // service thread exits after draining callbacks
  std::unordered_map<uint64_t, std::shared_ptr<SendState>> sends_;
  std::unordered_map<uint64_t, std::shared_ptr<RecvState>> receives_;
  std::unordered_map<std::string, std::shared_ptr<Peer>> peers_;  // live outbound peers
  std::vector<std::shared_ptr<Peer>> dead_peers_;                 // waiting to be joined
  std::vector<std::shared_ptr<Inbound>> inbound_;
  std::deque<std::pair<DoneCallback, Status>> completions_;
  std::vector<std::shared_ptr<RecvState>> fencing_;  // ended shm receives, not yet fenced
  int64_t layers_sent_ = 0;
  int64_t layers_received_ = 0;
  int64_t bytes_received_ = 0;
  int64_t refused_connections_ = 0;
  int64_t timed_out_connections_ = 0;
};

}  // namespace tandem

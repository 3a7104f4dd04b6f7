// Transceiver I/O threads: listener, inbound (receiver-side) reader, and the per-peer
// (sender-side) writer and reader. See transceiver.h for the threading model.
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <system_error>

#include "tandem/common/logging.h"
#include "transceiver_impl.h"

namespace tandem {

using namespace kvtransfer_internal;  // NOLINT: private implementation file

namespace {

MessageHeader Header(Kind kind, uint64_t id, int32_t layer = -1, uint32_t pages = 0,
                     uint64_t length = 0) {
  MessageHeader h;
  h.kind = static_cast<uint16_t>(kind);
  h.request_id = id;
  h.layer = layer;
  h.page_count = pages;
  h.length = length;
  return h;
}

Status SendControl(Connection& conn, Kind kind, uint64_t id, std::string_view payload,
                   Deadline deadline) {
  ConstByteSpan span(reinterpret_cast<const std::byte*>(payload.data()), payload.size());
  return conn.Send(Header(kind, id, -1, 0, payload.size()), {&span, 1}, deadline);
}

// Reads a small control payload.
StatusOr<std::vector<std::byte>> ReadControl(Connection& conn, const MessageHeader& h,
                                             Deadline deadline) {
  if (h.length > kMaxControlBytes) {
    return UnavailableError("protocol error from {}: control message kind {} has {} bytes",
                            conn.peer(), h.kind, h.length);
  }
  std::vector<std::byte> buf(h.length);
  ByteSpan span(buf.data(), buf.size());
  TANDEM_RETURN_IF_ERROR(conn.ReceivePayload({&span, 1}, deadline));
  return buf;
}

// kStart payload: the sender's remaining time (8 bytes), the request's token (8 bytes), then
// the handshake (see transceiver_impl.h); integers little-endian.
constexpr size_t kStartPrefixBytes = 16;

uint64_t LoadLe64(std::span<const std::byte> bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  return v;
}

std::string EncodeStart(Deadline sender_deadline, uint64_t token, const std::string& handshake) {
  const auto left = std::chrono::duration_cast<std::chrono::microseconds>(
      sender_deadline - std::chrono::steady_clock::now());
  const uint64_t micros = static_cast<uint64_t>(std::max<int64_t>(0, left.count()));
  std::string out(kStartPrefixBytes, '\0');
  for (size_t i = 0; i < 8; ++i) {
    out[i] = static_cast<char>(micros >> (8 * i));
    out[8 + i] = static_cast<char>(token >> (8 * i));
  }
  return out + handshake;
}

// The request's token from a kStart payload (which must hold the prefix).
uint64_t StartToken(std::span<const std::byte> payload) { return LoadLe64(payload.subspan(8)); }

// The sender's remaining time from a kStart payload (which must hold the prefix).
std::chrono::microseconds StartRemaining(std::span<const std::byte> payload) {
  const uint64_t micros = LoadLe64(payload);
  // Bounded so that a corrupt value cannot overflow the deadline arithmetic (about 11 days).
  return std::chrono::microseconds(std::min<uint64_t>(micros, uint64_t{1} << 40));
}

Status Prefixed(const Status& s, std::string_view who) {
  return Status(s.code(), fmt::format("{}: {}", who, s.message()));
}

}  // namespace

void Transceiver::Impl::SendAborts(Outbox& out) {
  for (auto& [in, id, status] : out.aborts) {
    Status s = SendControl(*in->conn, Kind::kAbort, id, EncodeAbort(0, status), IoDeadline());
    if (!s.ok()) TLOG_DEBUG("req={} abort to {} not sent: {}", id, in->conn->peer(), s.ToString());
  }
  out.aborts.clear();
}

// ---------------------------------------------------------------------------------------------
// Receiver side.

Status Transceiver::Impl::AttachInbound(Inbound& in, const SharedPagePool& pool) {
  // The page pool's descriptor gives whoever holds it every request's KV, read and write. Only
  // a process of this worker's own user gets it: one that could read this process's memory
  // anyway (ptrace, /proc/<pid>/mem). Abstract Unix sockets have no file permissions.
  if (const int64_t uid = in.conn->peer_uid(); uid >= 0 && uid != int64_t{::geteuid()}) {
    return UnauthenticatedError(
        "shm sender {} (pid {}) runs as uid {}, this worker as uid {}: the KV page pool is "
        "shared only with processes of the same user",
        in.conn->peer(), in.conn->peer_pid(), uid, ::geteuid());
  }
  TANDEM_ASSIGN_OR_RETURN(auto lease, CreateLease());
  const bool device = IsDevicePool(&pool);
  const std::string payload =
      EncodeAttach(formatter_.fingerprint(), pool, formatter_.page_bytes(),
                   device ? std::string_view(options_.device_ipc->device_id()) : "");
  ConstByteSpan span(reinterpret_cast<const std::byte*>(payload.data()), payload.size());
  const int fds[2] = {pool.fd, lease.first};
  Status s = in.conn->SendWithFds(Header(Kind::kAttach, 0, -1, 0, payload.size()), {&span, 1}, fds,
                                  IoDeadline());
  ::close(lease.first);
  TANDEM_RETURN_IF_ERROR(s);
  in.shm = true;
  in.pool = &pool;
  in.lease = std::move(lease.second);
  if (in.conn->peer_pid() > 0) {
    in.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, in.conn->peer_pid(), 0));
  }
  return Status::Ok();
}

Status Transceiver::Impl::AcceptNccl(Inbound& in, const MessageHeader& h,
                                     std::span<const std::byte> payload) {
  if (options_.nccl == nullptr) {
    return FailedPreconditionError("receiver {} has no NCCL (--nccl-library); use tcp", endpoint_);
  }
  if (in.nccl) return UnavailableError("protocol error: a second kNcclInit");
  TANDEM_ASSIGN_OR_RETURN(auto init, DecodeNcclInit(payload));
  {
    // Nothing is joined for a stranger: the sender proves it holds a live request's ticket.
    std::lock_guard<std::mutex> lock(mu_);
    auto it = receives_.find(h.request_id);
    if (it == receives_.end() || it->second->token != init.first) {
      return UnauthenticatedError("receiver {}: kNcclInit for req={} from {}: {}", endpoint_,
                                  h.request_id, in.conn->peer(),
                                  it == receives_.end() ? "no such transfer" : "wrong token");
    }
    in.handshaken = true;
    RefreshConnectionGaugesLocked();
  }
  TANDEM_ASSIGN_OR_RETURN(auto link, NcclLink::Join(*options_.nccl, init.second, /*rank=*/1));
  NcclLink* joined = link.get();
  {
    std::lock_guard<std::mutex> lock(mu_);
    in.nccl = std::move(link);  // from now on FailInboundLocked can abort the wait below
    if (in.dead) joined->RequestAbort();
  }
  return joined->WaitReady(IoDeadline());
}

StatusOr<std::unique_ptr<NcclLink>> Transceiver::Impl::JoinNccl(Peer& peer, Connection& conn,
                                                                Deadline deadline) {
  // The request the connection was opened for vouches for it (its token).
  uint64_t id = 0, token = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const WorkItem& item : peer.queue) {
      if (item.req && !item.req->terminal()) {
        id = item.request_id;
        token = item.req->ticket.token;
        break;
      }
    }
  }
  if (id == 0) return CancelledError("no live request left to open the connection for");
  TANDEM_ASSIGN_OR_RETURN(NcclUniqueId uid, NcclLink::NewId(*options_.nccl));
  TANDEM_ASSIGN_OR_RETURN(auto link, NcclLink::Join(*options_.nccl, uid, /*rank=*/0));
  TANDEM_RETURN_IF_ERROR(
      SendControl(conn, Kind::kNcclInit, id, EncodeNcclInit(token, uid), deadline));
  TANDEM_ASSIGN_OR_RETURN(MessageHeader h, conn.ReceiveHeader(deadline));
  TANDEM_ASSIGN_OR_RETURN(auto answer, ReadControl(conn, h, deadline));
  if (h.kind == static_cast<uint16_t>(Kind::kAbort)) return DecodeAbort(answer).second;
  if (h.kind != static_cast<uint16_t>(Kind::kNcclInit)) {
    return UnavailableError("protocol error: answer to kNcclInit has kind {}", h.kind);
  }
  TANDEM_RETURN_IF_ERROR(link->WaitReady(deadline));
  return link;
}

Status Transceiver::Impl::DiscardNccl(NcclLink& link, uint32_t pages) {
  // The sender's frame says how many pages follow; more than any pool holds is a lie.
  constexpr uint32_t kMaxPages = 1 << 20;
  if (pages > kMaxPages) {
    return UnavailableError("protocol error: a layer of {} pages (at most {})", pages, kMaxPages);
  }
  return link.Discard(pages, formatter_.page_bytes(), IoDeadline());
}

void Transceiver::Impl::ListenLoop(Listener* listener, const SharedPagePool* pool) {
  while (true) {
    auto conn_or = listener->Accept(kNoDeadline);
    if (!conn_or.ok()) {
      if (conn_or.status().code() == StatusCode::kCancelled) return;
      TLOG_WARN("kv listener {}: {}", endpoint_, conn_or.status().ToString());
      std::unique_lock<std::mutex> lock(mu_);
      if (stopping_) return;
      service_cv_.wait_for(lock, std::chrono::milliseconds(100));  // do not spin on EMFILE
      continue;
    }
    auto in = std::make_shared<Inbound>();
    in->conn = std::move(conn_or).value();
    in->handshake_by = std::chrono::steady_clock::now() + options_.handshake_timeout;
    {
      // Checked and counted together: the tcp and shm listeners both add here.
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;  // the connection closes as `in` goes away
      int32_t live = 0, pending = 0;
      Inbound* oldest_pending = nullptr;
      for (const auto& p : inbound_) {
        if (p->dead) continue;
        ++live;
        if (p->handshaken) continue;
        ++pending;
        if (oldest_pending == nullptr || p->handshake_by < oldest_pending->handshake_by) {
          oldest_pending = p.get();
        }
      }
      // At the pending cap the connection that has waited longest without a handshake makes
      // room: a sender sends its handshake as soon as it connects, so connections that hold a
      // slot without one (a stranger's, a stuck peer's) go first and cannot lock senders out
      // for the handshake timeout.
      if (live < options_.max_connections && pending >= options_.max_pending_connections &&
          oldest_pending != nullptr) {
        TLOG_WARN(
            "kv {}: closing the connection from {}: no handshake yet, and {} connections wait "
            "for theirs (--kv-max-pending-connections={}); the longest waiting makes room for "
            "{}",
            endpoint_, oldest_pending->conn->peer(), pending, options_.max_pending_connections,
            in->conn->peer());
        Outbox unused;
        FailInboundLocked(oldest_pending,
                          UnavailableError("closed to make room: no handshake, pending cap {}",
                                           options_.max_pending_connections),
                          &unused, "evicted_pending");
        --live;
        --pending;
      }
      const char* refuse = live >= options_.max_connections              ? "over_limit"
                           : pending >= options_.max_pending_connections ? "over_pending_limit"
                                                                         : nullptr;
      if (refuse != nullptr) {
        TLOG_WARN(
            "kv {}: refused a connection from {} ({}): {} open, {} of them before the "
            "handshake; limits --kv-max-connections={} --kv-max-pending-connections={}",
            endpoint_, in->conn->peer(), refuse, live, pending, options_.max_connections,
            options_.max_pending_connections);
        ++refused_connections_;
        CountClosed(refuse);
        continue;
      }
      inbound_.push_back(in);  // holds its place under the caps from now on
      RefreshConnectionGaugesLocked();
    }
    Status attached = pool != nullptr ? AttachInbound(*in, *pool) : Status::Ok();
    std::lock_guard<std::mutex> lock(mu_);
    if (!attached.ok()) {
      TLOG_WARN("kv {}: sender not attached: {}",
                IsDevicePool(pool) ? cuda_ipc_endpoint_ : shm_endpoint_, attached.ToString());
      Outbox unused;
      FailInboundLocked(
          in.get(), attached, &unused,
          attached.code() == StatusCode::kUnauthenticated ? "peer_uid" : "attach_failed");
      in->exited = true;
      continue;
    }
    if (stopping_) {
      Outbox unused;
      FailInboundLocked(in.get(), CancelledError("shutting down"), &unused);
      in->exited = true;
      return;
    }
    TLOG_DEBUG("kv {}: sender {} connected", endpoint_, in->conn->peer());
    try {
      in->reader = std::thread([this, p = in.get()] { InboundLoop(p); });
    } catch (const std::system_error& e) {
      TLOG_WARN("kv {}: no thread for the connection from {}: {}", endpoint_, in->conn->peer(),
                e.what());
      Outbox unused;
      FailInboundLocked(in.get(), UnavailableError("no thread"), &unused, "no_thread");
      in->exited = true;
    }
  }
}

void Transceiver::Impl::InboundLoop(Inbound* in) {
  Connection& conn = *in->conn;
  const std::string who = fmt::format("sender {}", conn.peer());
  auto fail_connection = [&](const Status& s) {
    Outbox out;
    std::lock_guard<std::mutex> lock(mu_);
    FailInboundLocked(in, UnavailableError("{} disconnected: {}", who, s.message()), &out);
  };
  while (true) {
    Deadline until;
    {
      std::lock_guard<std::mutex> lock(mu_);
      until = in->handshaken ? std::chrono::steady_clock::now() + options_.idle_timeout
                             : in->handshake_by;
    }
    auto h_or = conn.ReceiveHeader(until);
    if (!h_or.ok()) {
      if (h_or.status().code() == StatusCode::kDeadlineExceeded && !conn.broken()) {
        std::lock_guard<std::mutex> lock(mu_);
        // Idle, but a transfer in progress on it (a sender still computing): it stays.
        const bool busy = std::any_of(receives_.begin(), receives_.end(), [&](const auto& r) {
          return r.second->conn.get() == in && !r.second->terminal();
        });
        if (in->handshaken && busy) continue;
        const std::string why =
            in->handshaken
                ? fmt::format("no transfer and nothing sent for {} ms (--kv-idle-timeout-ms)",
                              options_.idle_timeout.count())
                : fmt::format("no handshake within {} ms (--kv-handshake-timeout-ms)",
                              options_.handshake_timeout.count());
        TLOG_WARN("kv {}: closing the connection from {}: {}", endpoint_, conn.peer(), why);
        ++timed_out_connections_;
        Outbox unused;
        FailInboundLocked(in, DeadlineExceededError("{}: {}", who, why), &unused,
                          in->handshaken ? "idle_timeout" : "handshake_timeout");
        break;
      }
      fail_connection(h_or.status());
      break;
    }
    const MessageHeader h = *h_or;
    const Kind kind = static_cast<Kind>(h.kind);
    Outbox out;
    if (kind == Kind::kNcclInit) {
      auto payload = ReadControl(conn, h, IoDeadline());
      Status joined = payload.ok() ? AcceptNccl(*in, h, *payload) : payload.status();
      Status s = joined.ok() ? SendControl(conn, Kind::kNcclInit, h.request_id, {}, IoDeadline())
                             : SendControl(conn, Kind::kAbort, h.request_id, EncodeAbort(0, joined),
                                           IoDeadline());
      if (!joined.ok() || !s.ok()) {
        const Status& why = joined.ok() ? s : joined;
        TLOG_WARN("kv {}: nccl sender {} not joined: {}", endpoint_, conn.peer(), why.ToString());
        std::lock_guard<std::mutex> lock(mu_);
        FailInboundLocked(in, UnavailableError("{}: nccl: {}", who, why.message()), &out,
                          "nccl_init_failed");
        break;
      }
      continue;
    }
    if (kind == Kind::kStart || kind == Kind::kAbort) {
      auto payload = ReadControl(conn, h, IoDeadline());
      if (!payload.ok()) {
        fail_connection(payload.status());
        break;
      }
      Status reply;
      bool accept = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = receives_.find(h.request_id);
        std::shared_ptr<RecvState> st = it == receives_.end() ? nullptr : it->second;
        if (kind == Kind::kAbort) {
          // shm: the sender's kAbort follows its last copy for the request (the fence).
          for (auto& f : std::vector(fencing_)) {
            if (f->fence_conn.get() == in && f->id == h.request_id) {
              f->fenced = true;
              MaybeFinishRecvLocked(*f);
            }
          }
          // From the request's sender, or for a request no sender has started yet (a sender
          // that cancels before its kStart went out still sends the kAbort) when it carries
          // the request's token.
          auto [token, status] = DecodeAbort(*payload);
          if (st &&
              (st->conn.get() == in || (st->phase == RecvPhase::kReserved && token == st->token))) {
            if (!in->handshaken) {
              in->handshaken = true;
              RefreshConnectionGaugesLocked();
            }
            if (st->conn.get() == in) st->fenced = true;
            FailRecvLocked(st, Prefixed(status, who), false, &out);
          }
          continue;
        }
        // Until the token matched, nothing here touches the request: whoever sent this may be
        // a stranger (a malformed or wrong kStart is answered, the reservation stays).
        if (!in->handshaken && st && payload->size() >= kStartPrefixBytes &&
            StartToken(*payload) == st->token) {
          in->handshaken = true;  // a sender: it had the ticket
          RefreshConnectionGaugesLocked();
        }
        if (payload->size() < kStartPrefixBytes) {
          reply = InvalidArgumentError("receiver {}: req={}: kStart has {} bytes", endpoint_,
                                       h.request_id, payload->size());
        } else if (!st) {
          reply = NotFoundError("receiver {}: no transfer expected for req={}", endpoint_,
                                h.request_id);
        } else if (StartToken(*payload) != st->token) {
          reply = UnauthenticatedError("receiver {}: req={}: wrong transfer token from {}",
                                       endpoint_, h.request_id, who);
          TLOG_WARN("{}", reply.message());
        } else if (st->phase != RecvPhase::kReserved) {
          reply = Status(
              StatusCode::kAlreadyExists,
              fmt::format("receiver {}: req={} is already receiving", endpoint_, h.request_id));
        } else if (Status s = formatter_.CheckHandshake(
                       std::span<const std::byte>(*payload).subspan(kStartPrefixBytes),
                       st->blocks.size());
                   !s.ok()) {
          reply = Prefixed(s, fmt::format("receiver {} refused req={}", endpoint_, h.request_id));
          FailRecvLocked(st, reply, false, &out);
        } else if (Status p = in->shm ? CheckPagesInPool(*in->pool, *st->pages, st->blocks,
                                                         formatter_.layout().num_layers,
                                                         formatter_.page_bytes())
                                      : Status::Ok();
                   !p.ok()) {
          const bool device = IsDevicePool(in->pool);
          reply = Prefixed(p, fmt::format("receiver {} refused req={} over {}",
                                          device ? cuda_ipc_endpoint_ : shm_endpoint_, h.request_id,
                                          device ? "cuda_ipc" : "shm"));
          FailRecvLocked(st, reply, false, &out);
        } else {
          // A live sender owns the request now: its deadline replaces the start-by one.
          st->deadline =
              std::chrono::steady_clock::now() + StartRemaining(*payload) + options_.io_timeout;
          service_cv_.notify_one();
          st->phase = RecvPhase::kReceiving;
          st->fenced = !in->shm;
          st->conn = *std::find_if(inbound_.begin(), inbound_.end(),
                                   [&](const auto& p) { return p.get() == in; });
          accept = true;
        }
      }
      Status s = accept ? SendControl(conn, Kind::kAccept, h.request_id, {}, IoDeadline())
                        : SendControl(conn, Kind::kAbort, h.request_id, EncodeAbort(0, reply),
                                      IoDeadline());
      if (!s.ok()) {
        fail_connection(s);
        break;
      }
      continue;
    }
    if (kind != Kind::kLayer) {
      fail_connection(UnavailableError("protocol error: unexpected message kind {}", h.kind));
      break;
    }
    // A layer: scatter it straight into the reserved pages, or drop it. tcp: the pages are the
    // frame's payload; nccl: they follow on the communicator; shm: they are already there.
    const bool inline_pages = !in->shm && !in->nccl;
    std::shared_ptr<RecvState> st;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = receives_.find(h.request_id);
      if (it != receives_.end() && it->second->conn.get() == in &&
          it->second->phase == RecvPhase::kReceiving) {
        st = it->second;
        const size_t n = st->blocks.size();
        Status bad;
        if (h.layer < 0 || h.layer >= static_cast<int32_t>(st->arrived.size())) {
          bad = InvalidArgumentError("req={}: layer {} out of range", st->id, h.layer);
        } else if (st->arrived[h.layer]) {
          bad = InvalidArgumentError("req={}: layer {} sent twice", st->id, h.layer);
        } else if (h.page_count != n || h.length != (inline_pages ? formatter_.LayerBytes(n) : 0)) {
          bad = InvalidArgumentError("req={}: layer {} has {} pages / {} bytes, expected {} / {}",
                                     st->id, h.layer, h.page_count, h.length, n,
                                     inline_pages ? formatter_.LayerBytes(n) : 0);
        }
        if (!bad.ok()) {
          FailRecvLocked(st, bad, /*tell_peer=*/true, &out);
          st = nullptr;
        } else {
          ++st->busy;
        }
      }
    }
    bool ack = false;
    if (st == nullptr) {
      SendAborts(out);
      Status s = in->nccl ? DiscardNccl(*in->nccl, h.page_count)
                          : conn.DiscardPayload(h.length, IoDeadline());
      if (!s.ok()) {
        fail_connection(s);
        break;
      }
      continue;
    }
    // shm: the sender already copied the layer into the pages; nothing to read.
    StatusOr<std::vector<ByteSpan>> spans = std::vector<ByteSpan>();
    if (!in->shm) spans = formatter_.ReceiveSpans(*st->pages, h.layer, st->blocks);
    Status s = !spans.ok() && in->nccl ? DiscardNccl(*in->nccl, h.page_count)
               : !spans.ok()           ? conn.DiscardPayload(h.length, IoDeadline())
               : in->shm               ? Status::Ok()
               : in->nccl ? in->nccl->Recv(*spans, formatter_.page_bytes(), IoDeadline())
                          : conn.ReceivePayload(*spans, IoDeadline());
    {
      std::lock_guard<std::mutex> lock(mu_);
      --st->busy;
      if (!spans.ok()) {
        FailRecvLocked(st, spans.status(), /*tell_peer=*/true, &out);
      } else if (s.ok() && !st->terminal()) {
        st->arrived[h.layer] = true;
        ++st->num_arrived;
        ++layers_received_;
        bytes_received_ += static_cast<int64_t>(formatter_.LayerBytes(st->blocks.size()));
        ack = true;
        if (st->num_arrived == static_cast<int32_t>(st->arrived.size())) CompleteRecvLocked(st);
      }
      if (!s.ok()) {
        FailInboundLocked(in, UnavailableError("{} disconnected: {}", who, s.message()), &out);
      }
      MaybeFinishRecvLocked(*st);
    }
    if (!s.ok()) break;
    SendAborts(out);
    if (ack) {
      Status a = conn.Send(Header(Kind::kLayerAck, h.request_id, h.layer), {}, IoDeadline());
      if (!a.ok()) {
        fail_connection(a);
        break;
      }
    }
  }
  in->exited = true;  // last action: the service thread may join now
}

// ---------------------------------------------------------------------------------------------
// Sender side.

void Transceiver::Impl::PeerWriterLoop(Peer* peer) {
  const Deadline connect_by = std::chrono::steady_clock::now() + options_.connect_timeout;
  const bool shm = !peer->shm_socket.empty();
  auto conn_or = shm ? ConnectUnix(peer->shm_socket, connect_by)
                     : ConnectTcp(peer->host, peer->port, connect_by,
                                  options_.tls && options_.tls->dials() ? options_.tls : nullptr);
  StatusOr<std::unique_ptr<ShmAttachment>> attached = std::unique_ptr<ShmAttachment>();
  if (conn_or.ok() && shm) {
    attached =
        AttachShm(**conn_or, formatter_, connect_by, peer->device ? options_.device_ipc : nullptr);
  }
  StatusOr<std::unique_ptr<NcclLink>> link = std::unique_ptr<NcclLink>();
  if (conn_or.ok() && peer->nccl) {
    // Joining may take longer than a TCP connect (NCCL's bootstrap): one frame's time.
    link = JoinNccl(*peer, **conn_or, std::max(connect_by, IoDeadline()));
    if (!link.ok()) attached = link.status();
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (!conn_or.ok() || !attached.ok()) {
    const Status& s = !conn_or.ok() ? conn_or.status() : attached.status();
    FailPeerLocked(
        peer,
        Status(s.code() == StatusCode::kFailedPrecondition ? StatusCode::kFailedPrecondition
                                                           : StatusCode::kUnavailable,
               fmt::format("cannot {} receiver {}: {}", conn_or.ok() ? "attach to" : "connect to",
                           peer->endpoint, s.message())));
    lock.unlock();
    --peer->live_threads;
    return;
  }
  peer->shm = std::move(attached).value();
  peer->link = std::move(link).value();
  peer->conn = std::move(conn_or).value();
  Connection& conn = *peer->conn;
  if (peer->dead) {
    conn.Shutdown();
  } else {
    ++peer->live_threads;
    peer->reader = std::thread([this, peer] { PeerReaderLoop(peer); });
  }
  while (true) {
    peer->queue_cv.wait(lock, [&] { return peer->dead || !peer->queue.empty(); });
    if (peer->dead) break;
    WorkItem item = std::move(peer->queue.front());
    peer->queue.pop_front();
    std::shared_ptr<SendState> st = item.req;
    if (st && st->terminal()) continue;  // dropped: the request already ended
    Status s;
    bool lost = false;
    if (item.kind == Kind::kStart) {
      std::string hs = EncodeStart(
          st->ticket.deadline, st->ticket.token,
          formatter_.EncodeHandshake(st->ticket.dest_fingerprint,
                                     static_cast<uint32_t>(st->ticket.dest_blocks.size())));
      lock.unlock();
      s = SendControl(conn, Kind::kStart, item.request_id, hs, IoDeadline());
      lock.lock();
    } else if (item.kind == Kind::kAbort) {
      lock.unlock();
      s = SendControl(conn, Kind::kAbort, item.request_id,
                      EncodeAbort(st ? st->ticket.token : 0, item.abort_status), IoDeadline());
      lock.lock();
    } else {  // kLayer: gathered straight from the sender's pages
      ++st->busy;
      // The link is busy with this request from now until the receiver acknowledged its last
      // layer in flight (WireSeconds).
      if (st->in_flight++ == 0) st->in_flight_since = std::chrono::steady_clock::now();
      lock.unlock();
      const uint32_t n = static_cast<uint32_t>(st->local_blocks.size());
      StatusOr<std::vector<ConstByteSpan>> spans = std::vector<ConstByteSpan>();
      if (shm) {  // copy into the receiver's pages, then announce the layer with no payload
        Status c = CopyLayerShm(*peer->shm, item.request_id, *st->pages, item.layer,
                                st->local_blocks, st->ticket.dest_blocks, st->num_layers);
        if (!c.ok()) spans = c;
      } else {
        spans = formatter_.SendSpans(*st->pages, item.layer, st->local_blocks);
      }
      if (spans.ok() && peer->link) {  // the frame announces the pages; they follow on NCCL
        s = conn.Send(Header(Kind::kLayer, item.request_id, item.layer, n, 0), {}, IoDeadline());
        if (s.ok()) {
          s = peer->link->Send(*spans, formatter_.page_bytes(), IoDeadline());
          lost = !s.ok();  // the receiver waits for these pages: the connection is lost
        }
      } else if (spans.ok()) {
        s = conn.Send(Header(Kind::kLayer, item.request_id, item.layer, n,
                             shm ? 0 : formatter_.LayerBytes(n)),
                      *spans, IoDeadline());
      }
      lock.lock();
      --st->busy;
      if (!spans.ok()) FailSendLocked(st, spans.status(), /*tell_peer=*/true);
    }
    if (!s.ok()) {
      if (conn.broken() || lost) {
        FailPeerLocked(peer, UnavailableError("connection to receiver {} lost: {}", peer->endpoint,
                                              s.message()));
      } else if (st) {  // nothing was written: only this request is affected
        FailSendLocked(st, s, /*tell_peer=*/true);
      }
    }
    if (st) MaybeFinishSendLocked(*st);
  }
  lock.unlock();
  --peer->live_threads;  // last action
}

void Transceiver::Impl::PeerReaderLoop(Peer* peer) {
  Connection& conn = *peer->conn;
  const std::string who = fmt::format("receiver {}", peer->endpoint);
  while (true) {
    auto h_or = conn.ReceiveHeader(kNoDeadline);
    StatusOr<std::vector<std::byte>> payload = std::vector<std::byte>();
    if (h_or.ok() && h_or->length > 0) payload = ReadControl(conn, *h_or, IoDeadline());
    std::lock_guard<std::mutex> lock(mu_);
    Status err = !h_or.ok() ? h_or.status() : payload.status();
    if (!err.ok()) {
      FailPeerLocked(peer, UnavailableError("{} disconnected: {}", who, err.message()));
      break;
    }
    const MessageHeader& h = *h_or;
    auto it = peer->requests.find(h.request_id);
    std::shared_ptr<SendState> st = it == peer->requests.end() ? nullptr : it->second;
    switch (static_cast<Kind>(h.kind)) {
      case Kind::kAccept:
        if (st && st->phase == SendPhase::kHandshaking) {
          st->phase = SendPhase::kStreaming;
          for (int32_t layer : st->held) {
            peer->queue.push_back({Kind::kLayer, st, h.request_id, layer, Status()});
          }
          st->held.clear();
          peer->queue_cv.notify_one();
        }
        break;
      case Kind::kLayerAck:
        if (st && st->phase == SendPhase::kStreaming) {
          if (st->in_flight > 0 && --st->in_flight == 0) {
            const std::chrono::duration<double> busy =
                std::chrono::steady_clock::now() - st->in_flight_since;
            st->wire_seconds += busy.count();
          }
          ++layers_sent_;
          if (++st->acked == st->num_layers) CompleteSendLocked(st);
        }
        break;
      case Kind::kAbort:
        if (st) {
          FailSendLocked(st, Prefixed(DecodeAbort(*payload).second, who), /*tell_peer=*/false);
        }
        if (peer->shm) {
          // The fence: queued behind any copy for this request already under way.
          peer->queue.push_back({Kind::kAbort, nullptr, h.request_id, -1,
                                 CancelledError("req={}: abort confirmed", h.request_id)});
          peer->queue_cv.notify_one();
        }
        break;
      default:
        FailPeerLocked(peer,
                       UnavailableError("protocol error from {}: message kind {}", who, h.kind));
        break;
    }
    if (peer->dead) break;
  }
  --peer->live_threads;  // last action (the lock_guard above is already released)
}

}  // namespace tandem

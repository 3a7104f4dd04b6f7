// Transceiver: state transitions of sends, receives, peers and inbound connections (mu_ held),
// and the service thread (completions, expiry, reaping, fences). The public API and lifecycle
// are in transceiver.cc, the I/O threads in transceiver_io.cc.
#include <poll.h>

#include <algorithm>
#include <vector>

#include "tandem/common/logging.h"
#include "tandem/common/metrics.h"
#include "transceiver_impl.h"

namespace tandem {

using namespace kvtransfer_internal;  // NOLINT: private implementation file

namespace {
constexpr auto kServiceTick = std::chrono::milliseconds(50);
}

// ---------------------------------------------------------------------------------------------
// State transitions (mu_ held).

void Transceiver::Impl::FailSendLocked(std::shared_ptr<SendState> st, Status status,
                                       bool tell_peer) {
  if (st->terminal()) return;
  const uint64_t id = st->ticket.request_id;
  TLOG_DEBUG("req={} send failed: {}", id, status.ToString());
  st->phase = status.code() == StatusCode::kCancelled ? SendPhase::kCancelled : SendPhase::kFailed;
  if (auto it = sends_.find(id); it != sends_.end() && it->second == st) sends_.erase(it);
  if (Peer* peer = st->peer) {
    peer->requests.erase(id);
    if (tell_peer && !peer->dead) {
      peer->queue.push_back({Kind::kAbort, nullptr, id, -1, status});
      peer->queue_cv.notify_one();
    }
    st->peer = nullptr;
  }
  st->status = std::move(status);
  MaybeFinishSendLocked(*st);
}

void Transceiver::Impl::CompleteSendLocked(std::shared_ptr<SendState> st) {
  const uint64_t id = st->ticket.request_id;
  st->phase = SendPhase::kComplete;
  if (auto it = sends_.find(id); it != sends_.end() && it->second == st) sends_.erase(it);
  if (st->peer) st->peer->requests.erase(id);
  st->peer = nullptr;
  MaybeFinishSendLocked(*st);
}

void Transceiver::Impl::MaybeFinishSendLocked(SendState& st) {
  if (!st.terminal() || st.busy > 0 || st.finished) return;
  st.finished = true;
  st.cv.notify_all();
  if (st.done) {
    completions_.emplace_back(std::move(st.done), st.status);
    st.done = nullptr;
    service_cv_.notify_one();
  }
}

void Transceiver::Impl::FailRecvLocked(std::shared_ptr<RecvState> st, Status status, bool tell_peer,
                                       Outbox* out) {
  if (st->terminal()) return;
  TLOG_DEBUG("req={} receive failed: {}", st->id, status.ToString());
  st->phase = status.code() == StatusCode::kCancelled ? RecvPhase::kCancelled : RecvPhase::kFailed;
  if (auto it = receives_.find(st->id); it != receives_.end() && it->second == st) {
    receives_.erase(it);
  }
  if (tell_peer && st->conn && !st->conn->dead) {
    out->aborts.emplace_back(st->conn, st->id, status);
  }
  if (!st->fenced) {
    // shm: the sender may still be copying; keep the pages until it confirms (our kAbort asks
    // it to) or, without a live connection to ask, until the lease revocation took hold.
    st->fence_conn = st->conn;
    st->fence_deadline = std::chrono::steady_clock::now() + options_.io_timeout;
    fencing_.push_back(st);
    if (!tell_peer || st->conn->dead) RevokeLocked(*st->conn);
    service_cv_.notify_one();
  }
  st->conn = nullptr;
  st->status = std::move(status);
  MaybeFinishRecvLocked(*st);
}

void Transceiver::Impl::CompleteRecvLocked(std::shared_ptr<RecvState> st) {
  st->phase = RecvPhase::kComplete;
  st->fenced = true;  // every layer was copied and announced: the sender writes no more
  if (auto it = receives_.find(st->id); it != receives_.end() && it->second == st) {
    receives_.erase(it);
  }
  st->conn = nullptr;
  MaybeFinishRecvLocked(*st);
}

void Transceiver::Impl::MaybeFinishRecvLocked(RecvState& st) {
  if (!st.terminal() || st.busy > 0 || !st.fenced || st.finished) return;
  st.finished = true;
  st.fence_conn = nullptr;
  std::erase_if(fencing_, [&](const auto& f) { return f.get() == &st; });
  completions_.emplace_back(std::move(st.done), st.status);
  service_cv_.notify_one();
}

void Transceiver::Impl::FailPeerLocked(Peer* peer, const Status& status) {
  if (peer->dead) return;
  peer->dead = true;
  if (status.code() == StatusCode::kCancelled) {
    TLOG_DEBUG("kv peer {}: {}", peer->endpoint, status.ToString());
  } else {
    TLOG_WARN("kv peer {}: {}", peer->endpoint, status.ToString());
  }
  for (auto& [id, st] : std::vector(peer->requests.begin(), peer->requests.end())) {
    FailSendLocked(st, status, /*tell_peer=*/false);
  }
  peer->requests.clear();
  peer->queue.clear();
  peer->queue_cv.notify_all();
  if (peer->conn) peer->conn->Shutdown();
  if (peer->link) peer->link->RequestAbort();
  auto it = peers_.find(peer->endpoint);
  if (it != peers_.end() && it->second.get() == peer) {
    dead_peers_.push_back(it->second);
    peers_.erase(it);
  }
  service_cv_.notify_one();
}

void Transceiver::Impl::FailInboundLocked(Inbound* in, const Status& status, Outbox* out,
                                          const char* reason) {
  if (in->dead) return;
  in->dead = true;
  CountClosed(stopping_ ? "shutdown" : reason);
  RefreshConnectionGaugesLocked();
  for (auto& [id, st] : std::vector(receives_.begin(), receives_.end())) {
    if (st->conn.get() == in) FailRecvLocked(st, status, /*tell_peer=*/false, out);
  }
  in->conn->Shutdown();
  if (in->nccl) in->nccl->RequestAbort();
  service_cv_.notify_one();
}

void Transceiver::Impl::RefreshConnectionGaugesLocked() {
  if (options_.metrics == nullptr) return;
  int64_t pending = 0, open = 0;
  for (const auto& in : inbound_) {
    if (in->dead) continue;
    ++(in->handshaken ? open : pending);
  }
  options_.metrics->kv_connections("handshake").Set(static_cast<double>(pending));
  options_.metrics->kv_connections("open").Set(static_cast<double>(open));
}

void Transceiver::Impl::CountClosed(const char* reason) {
  if (options_.metrics != nullptr) options_.metrics->kv_connections_closed(reason).Increment();
}

void Transceiver::Impl::ExpireLocked(Outbox* out) {
  const auto now = std::chrono::steady_clock::now();
  for (auto& [id, st] : std::vector(sends_.begin(), sends_.end())) {
    if (st->ticket.deadline <= now) {
      FailSendLocked(st,
                     DeadlineExceededError("req={}: deadline exceeded with {} of {} layers "
                                           "acknowledged by {}",
                                           id, st->acked, st->num_layers, st->ticket.dest_endpoint),
                     /*tell_peer=*/true);
    }
  }
  for (auto& [id, st] : std::vector(receives_.begin(), receives_.end())) {
    if (st->deadline <= now) {
      FailRecvLocked(st,
                     DeadlineExceededError("req={}: deadline exceeded with {} of {} layers "
                                           "received{}",
                                           id, st->num_arrived, st->arrived.size(),
                                           st->conn ? "" : " (sender never started)"),
                     /*tell_peer=*/true, out);
    }
  }
}

void Transceiver::Impl::RevokeLocked(Inbound& in) {
  if (!in.shm) return;
  LeaseOf(in.lease)->revoked.store(1, std::memory_order_seq_cst);
  in.conn->Shutdown();  // the sender's writer stops at its next frame
}

bool Transceiver::Impl::SenderExited(const Inbound& in) const {
  if (in.pidfd < 0) return false;
  pollfd p{in.pidfd, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

void Transceiver::Impl::CheckFencesLocked(bool force) {
  const auto now = std::chrono::steady_clock::now();
  for (auto& st : std::vector(fencing_)) {
    Inbound& in = *st->fence_conn;
    if (!in.dead && st->fence_deadline <= now) {
      // The sender did not confirm the abort in time: cut the connection, then revoke.
      Outbox unused;
      FailInboundLocked(&in,
                        UnavailableError("sender {} did not confirm the abort of req={} within "
                                         "{} ms",
                                         in.conn->peer(), st->id, options_.io_timeout.count()),
                        &unused);
    }
    if (in.dead) {
      RevokeLocked(in);
      if (st->revoked_at == kNoDeadline) st->revoked_at = now;
      const bool idle = LeaseOf(in.lease)->writing.load(std::memory_order_seq_cst) != st->id;
      const bool late = now - st->revoked_at >= 2 * options_.io_timeout;
      if (late && !idle) {
        TLOG_WARN("req={}: releasing shm pages while sender {} still marks a copy in flight",
                  st->id, in.conn->peer());
      }
      if (idle || late || force || SenderExited(in)) st->fenced = true;
    }
    if (st->fenced) MaybeFinishRecvLocked(*st);
  }
}

void Transceiver::Impl::ReapLocked() {
  // A thread's last action is to decrement live_threads / set exited, so join() returns at once.
  for (auto it = dead_peers_.begin(); it != dead_peers_.end();) {
    Peer& peer = **it;
    if (peer.live_threads.load() == 0) {
      if (peer.writer.joinable()) peer.writer.join();
      if (peer.reader.joinable()) peer.reader.join();
      it = dead_peers_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = inbound_.begin(); it != inbound_.end();) {
    if ((*it)->exited.load()) {
      if ((*it)->reader.joinable()) (*it)->reader.join();  // none when refused before a thread
      it = inbound_.erase(it);
    } else {
      ++it;
    }
  }
}

void Transceiver::Impl::ServiceLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    while (!completions_.empty()) {
      auto [done, status] = std::move(completions_.front());
      completions_.pop_front();
      lock.unlock();
      if (done) done(status);
      lock.lock();
    }
    if (service_stop_) return;
    ReapLocked();
    CheckFencesLocked(/*force=*/false);
    Outbox out;
    ExpireLocked(&out);
    if (!out.aborts.empty() || !completions_.empty()) {
      lock.unlock();
      SendAborts(out);
      lock.lock();
      continue;
    }
    Deadline next = std::chrono::steady_clock::now() + kServiceTick;
    for (const auto& [id, st] : sends_) next = std::min(next, st->ticket.deadline);
    for (const auto& [id, st] : receives_) next = std::min(next, st->deadline);
    for (const auto& st : fencing_) next = std::min(next, st->fence_deadline);
    service_cv_.wait_until(lock, next);
  }
}

}  // namespace tandem

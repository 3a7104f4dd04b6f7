// Transceiver: public API and lifecycle. State transitions and the service thread are in
// transceiver_state.cc, the I/O threads in transceiver_io.cc.
#include "tandem/kvtransfer/transceiver.h"

#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "tandem/common/logging.h"
#include "tandem/common/metrics.h"
#include "tandem/kvtransfer/transports.h"
#include "transceiver_impl.h"

namespace tandem {
namespace kvtransfer_internal {

std::string EncodeStatus(const Status& status) {
  std::string out(4, '\0');
  uint32_t code = static_cast<uint32_t>(status.code());
  std::memcpy(out.data(), &code, 4);
  out += status.message();
  return out;
}

std::string EncodeAbort(uint64_t token, const Status& status) {
  std::string out(8, '\0');
  std::memcpy(out.data(), &token, 8);
  return out + EncodeStatus(status);
}

std::pair<uint64_t, Status> DecodeAbort(std::span<const std::byte> bytes) {
  if (bytes.size() < 8) return {0, UnavailableError("malformed abort message")};
  uint64_t token;
  std::memcpy(&token, bytes.data(), 8);
  return {token, DecodeStatus(bytes.subspan(8))};
}

Status DecodeStatus(std::span<const std::byte> bytes) {
  if (bytes.size() < 4) return UnavailableError("malformed abort message");
  uint32_t code;
  std::memcpy(&code, bytes.data(), 4);
  if (code == 0 || code > static_cast<uint32_t>(StatusCode::kUnauthenticated)) {
    code = static_cast<uint32_t>(StatusCode::kUnknown);
  }
  return Status(static_cast<StatusCode>(code),
                std::string(reinterpret_cast<const char*>(bytes.data()) + 4, bytes.size() - 4));
}

Inbound::~Inbound() {
  if (pidfd >= 0) ::close(pidfd);
}

}  // namespace kvtransfer_internal

using namespace kvtransfer_internal;  // NOLINT: private implementation file

// ---------------------------------------------------------------------------------------------
// Public wrappers.

uint64_t SendHandle::request_id() const { return state_ ? state_->ticket.request_id : 0; }

StatusOr<std::unique_ptr<Transceiver>> Transceiver::Create(TransceiverOptions options) {
  TANDEM_RETURN_IF_ERROR(options.layout.Validate());
  if (options.io_timeout.count() <= 0 || options.connect_timeout.count() <= 0) {
    return InvalidArgumentError("io_timeout and connect_timeout must be > 0");
  }
  auto impl = std::make_unique<Impl>(std::move(options));
  TANDEM_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<Transceiver>(new Transceiver(std::move(impl)));
}

Transceiver::Transceiver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Transceiver::~Transceiver() = default;
const std::string& Transceiver::endpoint() const { return impl_->endpoint_; }
const std::string& Transceiver::shm_endpoint() const { return impl_->shm_endpoint_; }
const std::string& Transceiver::cuda_ipc_endpoint() const { return impl_->cuda_ipc_endpoint_; }
const std::string& Transceiver::nccl_endpoint() const { return impl_->nccl_endpoint_; }
const KvPageLayout& Transceiver::layout() const { return impl_->formatter_.layout(); }
uint64_t Transceiver::fingerprint() const { return impl_->formatter_.fingerprint(); }
StatusOr<SendHandle> Transceiver::StartSend(TransferTicket ticket, const PageAccessor& pages,
                                            std::vector<int32_t> local_blocks, DoneCallback done) {
  return impl_->StartSend(std::move(ticket), pages, std::move(local_blocks), std::move(done));
}
Status Transceiver::SendLayer(const SendHandle& handle, int32_t layer) {
  return impl_->SendLayer(handle, layer);
}
Status Transceiver::BindBlocks(const SendHandle& handle, std::vector<int32_t> local_blocks) {
  return impl_->BindBlocks(handle, std::move(local_blocks));
}
Status Transceiver::Wait(const SendHandle& handle) { return impl_->Wait(handle); }
double Transceiver::WireSeconds(const SendHandle& handle) const {
  return impl_->WireSeconds(handle);
}
Status Transceiver::ExpectTransfer(uint64_t request_id, const PageAccessor& pages,
                                   std::vector<int32_t> local_blocks, Deadline start_by,
                                   DoneCallback done, uint64_t token) {
  return impl_->ExpectTransfer(request_id, pages, std::move(local_blocks), start_by,
                               std::move(done), token);
}

uint64_t NewTransferToken() {
  uint64_t token = 0;
  while (token == 0) {
    if (getrandom(&token, sizeof(token), 0) != static_cast<ssize_t>(sizeof(token))) token = 0;
  }
  return token;
}
Status Transceiver::Cancel(uint64_t request_id) { return impl_->Cancel(request_id); }
TransceiverStats Transceiver::stats() const { return impl_->stats(); }

// ---------------------------------------------------------------------------------------------
// Lifecycle.

Transceiver::Impl::Impl(TransceiverOptions options)
    : options_(std::move(options)), formatter_(options_.layout) {}

Status Transceiver::Impl::Start() {
  if (options_.listen) {
    TANDEM_ASSIGN_OR_RETURN(
        listener_, ListenTcp(options_.listen_host, options_.listen_port,
                             options_.tls && options_.tls->serves() ? options_.tls : nullptr));
    endpoint_ = fmt::format(
        "{}:{}", options_.advertise_host.empty() ? options_.listen_host : options_.advertise_host,
        listener_->port());
    if (options_.nccl != nullptr) nccl_endpoint_ = "nccl:" + endpoint_;
    listen_thread_ = std::thread([this] { ListenLoop(listener_.get(), nullptr); });
  }
  if (options_.shm_pool) {
    std::string socket = options_.shm_socket;
    TANDEM_ASSIGN_OR_RETURN(shm_listener_,
                            ListenShared("shm_pool", *options_.shm_pool, "", &socket));
    shm_endpoint_ = "shm:" + socket;
    shm_listen_thread_ =
        std::thread([this] { ListenLoop(shm_listener_.get(), &options_.shm_pool.value()); });
  }
  if (options_.device_pool) {
    if (options_.device_ipc == nullptr) {
      return InvalidArgumentError("device_pool needs device_ipc (the cuda_ipc transport)");
    }
    std::string socket = options_.device_socket;
    TANDEM_ASSIGN_OR_RETURN(device_listener_,
                            ListenShared("device_pool", *options_.device_pool, "dev-", &socket));
    cuda_ipc_endpoint_ = "cuda_ipc:" + socket;
    device_listen_thread_ =
        std::thread([this] { ListenLoop(device_listener_.get(), &options_.device_pool.value()); });
  }
  service_thread_ = std::thread([this] { ServiceLoop(); });
  return Status::Ok();
}

StatusOr<std::unique_ptr<Listener>> Transceiver::Impl::ListenShared(const char* option,
                                                                    const SharedPagePool& pool,
                                                                    std::string_view prefix,
                                                                    std::string* socket) {
  const size_t want =
      formatter_.page_bytes() * size_t(formatter_.layout().num_layers) * size_t(pool.num_blocks);
  if (!options_.listen) return InvalidArgumentError("{} needs listen = true", option);
  if (pool.fd < 0 || pool.base == nullptr || pool.num_blocks <= 0 || pool.bytes != want) {
    return InvalidArgumentError(
        "{}: fd {}, {} blocks, {} bytes: the layout needs a shared pool of {} bytes", option,
        pool.fd, pool.num_blocks, pool.bytes, want);
  }
  if (socket->empty()) {
    *socket = fmt::format("@tandem-kv-{}{}-{}", prefix, ::getpid(), listener_->port());
  }
  return ListenUnix(*socket);
}

Transceiver::Impl::~Impl() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  if (listener_) listener_->Close();
  if (shm_listener_) shm_listener_->Close();
  if (device_listener_) device_listener_->Close();
  if (listen_thread_.joinable()) listen_thread_.join();
  if (shm_listen_thread_.joinable()) shm_listen_thread_.join();
  if (device_listen_thread_.joinable()) device_listen_thread_.join();
  Outbox unused;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Status closing = CancelledError("transceiver {} shutting down",
                                    endpoint_.empty() ? "(send-only)" : endpoint_);
    for (auto& [id, st] : std::vector(sends_.begin(), sends_.end())) {
      FailSendLocked(st, closing, /*tell_peer=*/false);
    }
    for (auto& [id, st] : std::vector(receives_.begin(), receives_.end())) {
      FailRecvLocked(st, closing, /*tell_peer=*/false, &unused);
    }
    for (auto& [ep, peer] : std::vector(peers_.begin(), peers_.end())) {
      FailPeerLocked(peer.get(), closing);
    }
    for (auto& in : inbound_) FailInboundLocked(in.get(), closing, &unused);
  }
  // Ended shm receives wait until no sender copy can reach their pages (bounded: a revoked
  // lease is released once no copy is in flight, or after 2 x io_timeout).
  {
    std::unique_lock<std::mutex> lock(mu_);
    while (!fencing_.empty()) {
      CheckFencesLocked(/*force=*/false);
      if (fencing_.empty()) break;
      service_cv_.wait_for(lock, std::chrono::milliseconds(1));
    }
    service_stop_ = true;
  }
  service_cv_.notify_all();
  if (service_thread_.joinable()) service_thread_.join();
  // Only this thread is left to join I/O threads (the service thread has stopped).
  for (auto& peer : dead_peers_) {
    if (peer->writer.joinable()) peer->writer.join();  // the writer may have started the reader
    if (peer->reader.joinable()) peer->reader.join();
  }
  for (auto& in : inbound_) {
    if (in->reader.joinable()) in->reader.join();
  }
  // Requests that were busy during shutdown finished while their threads drained.
  std::deque<std::pair<DoneCallback, Status>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    left.swap(completions_);
  }
  for (auto& [done, status] : left) {
    if (done) done(status);
  }
}

// ---------------------------------------------------------------------------------------------
// API.

StatusOr<SendHandle> Transceiver::Impl::StartSend(TransferTicket ticket, const PageAccessor& pages,
                                                  std::vector<int32_t> local_blocks,
                                                  DoneCallback done) {
  const uint64_t id = ticket.request_id;
  if (ticket.dest_blocks.empty()) return InvalidArgumentError("req={}: dest_blocks is empty", id);
  if (!local_blocks.empty() && local_blocks.size() != ticket.dest_blocks.size()) {
    return InvalidArgumentError("req={}: local_blocks has {} blocks, ticket dest_blocks has {}", id,
                                local_blocks.size(), ticket.dest_blocks.size());
  }
  const std::string_view transport = KvTransportOfEndpoint(ticket.dest_endpoint);
  const bool device = transport == kKvTransportCudaIpc;
  const bool shm = transport == kKvTransportShm || device;
  const size_t socket_at = device ? 9 : 4;  // past "cuda_ipc:" or "shm:"
  const bool nccl = transport == kKvTransportNccl;
  if (nccl && options_.nccl == nullptr) {
    return FailedPreconditionError(
        "req={}: '{}' is an nccl endpoint, and this worker has no NCCL (--nccl-library)", id,
        ticket.dest_endpoint);
  }
  if (device && options_.device_ipc == nullptr) {
    return FailedPreconditionError(
        "req={}: '{}' is a cuda_ipc endpoint, and this worker has no device memory to share "
        "(CUDA workers only)",
        id, ticket.dest_endpoint);
  }
  const size_t scheme = nccl ? 5 : 0;  // "nccl:" before host:port
  size_t colon = ticket.dest_endpoint.rfind(':');
  int port = shm && ticket.dest_endpoint.size() > socket_at ? 0 : -1;
  if (!shm && colon != std::string::npos && colon > scheme) {
    try {
      port = std::stoi(ticket.dest_endpoint.substr(colon + 1));
    } catch (...) {
      port = -1;
    }
  }
  if (port < 0 || (!shm && port == 0) || port > 65535) {
    return InvalidArgumentError(
        "req={}: dest_endpoint '{}' is not host:port, nccl:host:port, shm:<socket> or "
        "cuda_ipc:<socket>",
        id, ticket.dest_endpoint);
  }
  if (!local_blocks.empty()) TANDEM_RETURN_IF_ERROR(CheckSendBlocks(id, pages, local_blocks));
  auto st = std::make_shared<SendState>();
  st->num_layers = formatter_.layout().num_layers;
  st->requested.assign(st->num_layers, false);
  st->pages = &pages;
  st->local_blocks = std::move(local_blocks);
  st->ticket = std::move(ticket);
  st->done = std::move(done);

  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return UnavailableError("req={}: transceiver shutting down", id);
  if (sends_.count(id))
    return Status(StatusCode::kAlreadyExists, fmt::format("req={} is already sending", id));
  std::shared_ptr<Peer>& peer = peers_[st->ticket.dest_endpoint];
  if (!peer) {
    peer = std::make_shared<Peer>();
    peer->endpoint = st->ticket.dest_endpoint;
    if (shm) {
      peer->shm_socket = peer->endpoint.substr(socket_at);
      peer->device = device;
    } else {
      peer->nccl = nccl;
      peer->host = peer->endpoint.substr(scheme, colon - scheme);
      if (peer->host.size() > 2 && peer->host.front() == '[') {
        peer->host = peer->host.substr(1, peer->host.size() - 2);
      }
      peer->port = port;
    }
    peer->live_threads = 1;
    peer->writer = std::thread([this, p = peer.get()] { PeerWriterLoop(p); });
  }
  st->peer = peer.get();
  peer->requests[id] = st;
  sends_[id] = st;
  peer->queue.push_back({Kind::kStart, st, id, -1, Status()});
  peer->queue_cv.notify_one();
  service_cv_.notify_one();  // a new deadline to watch
  SendHandle handle;
  handle.state_ = std::move(st);
  return handle;
}

Status Transceiver::Impl::CheckSendBlocks(uint64_t id, const PageAccessor& pages,
                                          const std::vector<int32_t>& blocks) const {
  for (int32_t layer : {0, formatter_.layout().num_layers - 1}) {
    auto spans = formatter_.SendSpans(pages, layer, blocks);
    if (!spans.ok()) return InvalidArgumentError("req={}: {}", id, spans.status().message());
  }
  return Status::Ok();
}

Status Transceiver::Impl::BindBlocks(const SendHandle& handle, std::vector<int32_t> local_blocks) {
  if (!handle.valid()) return InvalidArgumentError("BindBlocks: invalid handle");
  SendState& st = *handle.state_;
  const uint64_t id = st.ticket.request_id;
  if (local_blocks.size() != st.ticket.dest_blocks.size()) {
    return InvalidArgumentError("req={}: local_blocks has {} blocks, ticket dest_blocks has {}", id,
                                local_blocks.size(), st.ticket.dest_blocks.size());
  }
  TANDEM_RETURN_IF_ERROR(CheckSendBlocks(id, *st.pages, local_blocks));
  std::lock_guard<std::mutex> lock(mu_);
  if (st.terminal()) {
    return st.status.ok() ? FailedPreconditionError("req={}: transfer already complete", id)
                          : st.status;
  }
  if (!st.local_blocks.empty()) {
    return FailedPreconditionError("req={}: local blocks were already given", id);
  }
  st.local_blocks = std::move(local_blocks);
  return Status::Ok();
}

Status Transceiver::Impl::SendLayer(const SendHandle& handle, int32_t layer) {
  if (!handle.valid()) return InvalidArgumentError("SendLayer: invalid handle");
  std::lock_guard<std::mutex> lock(mu_);
  SendState& st = *handle.state_;
  const uint64_t id = st.ticket.request_id;
  if (st.terminal()) {
    return st.status.ok() ? FailedPreconditionError("req={}: transfer already complete", id)
                          : st.status;
  }
  if (layer < 0 || layer >= st.num_layers) {
    return InvalidArgumentError("req={}: layer {} out of range [0, {})", id, layer, st.num_layers);
  }
  if (st.requested[layer]) return InvalidArgumentError("req={}: layer {} already sent", id, layer);
  if (st.local_blocks.empty()) {
    return FailedPreconditionError("req={}: SendLayer before BindBlocks", id);
  }
  st.requested[layer] = true;
  if (st.phase == SendPhase::kStreaming) {
    st.peer->queue.push_back({Kind::kLayer, handle.state_, id, layer, Status()});
    st.peer->queue_cv.notify_one();
  } else {
    st.held.push_back(layer);
  }
  return Status::Ok();
}

Status Transceiver::Impl::Wait(const SendHandle& handle) {
  if (!handle.valid()) return InvalidArgumentError("Wait: invalid handle");
  std::unique_lock<std::mutex> lock(mu_);
  SendState& st = *handle.state_;
  st.cv.wait(lock, [&] { return st.finished; });
  return st.status;
}

double Transceiver::Impl::WireSeconds(const SendHandle& handle) {
  if (!handle.valid()) return 0.0;
  std::lock_guard<std::mutex> lock(mu_);
  return handle.state_->wire_seconds;
}

Status Transceiver::Impl::ExpectTransfer(uint64_t request_id, const PageAccessor& pages,
                                         std::vector<int32_t> local_blocks, Deadline start_by,
                                         DoneCallback done, uint64_t token) {
  if (local_blocks.empty())
    return InvalidArgumentError("req={}: local_blocks is empty", request_id);
  for (int32_t layer : {0, formatter_.layout().num_layers - 1}) {
    auto spans = formatter_.ReceiveSpans(pages, layer, local_blocks);
    if (!spans.ok())
      return InvalidArgumentError("req={}: {}", request_id, spans.status().message());
  }
  auto st = std::make_shared<RecvState>();
  st->id = request_id;
  st->pages = &pages;
  st->blocks = std::move(local_blocks);
  st->deadline = start_by;
  st->token = token;
  st->done = std::move(done);
  st->arrived.assign(formatter_.layout().num_layers, false);
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return UnavailableError("req={}: transceiver shutting down", request_id);
  if (!options_.listen) return FailedPreconditionError("transceiver does not listen");
  if (receives_.count(request_id)) {
    return Status(StatusCode::kAlreadyExists,
                  fmt::format("req={} is already expected", request_id));
  }
  receives_[request_id] = std::move(st);
  service_cv_.notify_one();
  return Status::Ok();
}

Status Transceiver::Impl::Cancel(uint64_t request_id) {
  Outbox out;
  bool found = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Status cancelled = CancelledError("req={} cancelled", request_id);
    if (auto it = sends_.find(request_id); it != sends_.end()) {
      found = true;
      FailSendLocked(it->second, cancelled, /*tell_peer=*/true);
    }
    if (auto it = receives_.find(request_id); it != receives_.end()) {
      found = true;
      FailRecvLocked(it->second, cancelled, /*tell_peer=*/true, &out);
    }
  }
  SendAborts(out);
  return found ? Status::Ok() : NotFoundError("req={} is not active", request_id);
}

TransceiverStats Transceiver::Impl::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  TransceiverStats s;
  s.active_sends = static_cast<int64_t>(sends_.size());
  s.active_receives = static_cast<int64_t>(receives_.size());
  s.outbound_connections = static_cast<int64_t>(peers_.size());
  for (const auto& in : inbound_) {
    s.inbound_connections += in->dead ? 0 : 1;
    s.pending_connections += in->dead || in->handshaken ? 0 : 1;
  }
  s.refused_connections = refused_connections_;
  s.timed_out_connections = timed_out_connections_;
  s.layers_sent = layers_sent_;
  s.layers_received = layers_received_;
  s.bytes_received = bytes_received_;
  s.fencing = static_cast<int64_t>(fencing_.size());
  return s;
}

}  // namespace tandem

#include "tandem/decode_worker/reservations.h"

#include "tandem/common/hash.h"
#include "tandem/common/logging.h"
#include "tandem/worker/kv_pages.h"

namespace tandem {

std::string_view ReservationStateName(ReservationState s) {
  switch (s) {
    case ReservationState::kReserved:
      return "reserved";
    case ReservationState::kReceiving:
      return "receiving";
    case ReservationState::kReady:
      return "ready";
    case ReservationState::kDecoding:
      return "decoding";
    case ReservationState::kDone:
      return "done";
    case ReservationState::kExpired:
      return "expired";
    case ReservationState::kCancelled:
      return "cancelled";
    case ReservationState::kFailed:
      return "failed";
  }
  return "unknown";
}

namespace {

uint64_t IdsHash(std::span<const int32_t> ids) {
  return Hash64(ids.data(), ids.size() * sizeof(int32_t), /*seed=*/1) | 1;  // never 0
}

}  // namespace

bool ReservationTable::IsTerminal(ReservationState s) {
  return s == ReservationState::kExpired || s == ReservationState::kCancelled ||
         s == ReservationState::kFailed || s == ReservationState::kDone;
}

ReservationTable::ReservationTable(KvCache& cache, Transceiver& transceiver,
                                   const PageAccessor& pages,
                                   const ReservationTableOptions& options,
                                   PrefixCache* prefix_cache, const PageAccessor* device_pages)
    : cache_(cache),
      transceiver_(transceiver),
      pages_(pages),
      device_pages_(device_pages),
      options_(options),
      prefix_cache_(prefix_cache) {
  reaper_ = std::thread([this] { ReaperLoop(); });
}

ReservationTable::~ReservationTable() {
  std::vector<uint64_t> to_cancel;
  std::vector<ReadyCallback> waiters;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    for (auto& [id, r] : records_) {
      if (r.transfer_active) to_cancel.push_back(r.transfer_id);
    }
  }
  cv_.notify_all();
  reaper_.join();
  for (uint64_t t : pending_cancels_) to_cancel.push_back(t);
  for (uint64_t t : to_cancel) (void)transceiver_.Cancel(t);
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, std::chrono::seconds(10), [&] { return active_transfers_ == 0; })) {
    // The Transceiver promised prompt callbacks; pages of stuck transfers stay allocated.
    TLOG_ERROR("decode: {} transfers did not end within 10 s of shutdown", active_transfers_);
  }
  for (auto& [id, r] : records_) {
    if (!r.transfer_active) ReleasePagesLocked(r);
    if (r.waiter) waiters.push_back(std::move(r.waiter));
  }
  lock.unlock();
  for (auto& w : waiters) w(UnavailableError("decode worker is shutting down"), {}, 0);
}

StatusOr<ReserveResult> ReservationTable::Reserve(const std::string& request_id,
                                                  int32_t prompt_tokens, int32_t max_tokens,
                                                  std::chrono::milliseconds lease,
                                                  std::span<const int32_t> prompt_token_ids,
                                                  bool into_device) {
  if (request_id.empty()) return InvalidArgumentError("request_id must not be empty");
  if (into_device && device_pages_ == nullptr) {
    return FailedPreconditionError(
        "req={}: the cuda_ipc transport needs a CUDA decode worker that offers it "
        "(--kv-transport auto or cuda_ipc)",
        request_id);
  }
  if (prompt_tokens < 1) {
    return InvalidArgumentError("prompt_tokens must be >= 1, got {}", prompt_tokens);
  }
  if (!prompt_token_ids.empty() && prompt_token_ids.size() != static_cast<size_t>(prompt_tokens)) {
    return InvalidArgumentError("prompt_token_ids: {} ids, but prompt_tokens is {}",
                                prompt_token_ids.size(), prompt_tokens);
  }
  if (max_tokens < 1) return InvalidArgumentError("max_tokens must be >= 1, got {}", max_tokens);
  const int64_t total = int64_t{prompt_tokens} + max_tokens;
  if (options_.max_context > 0 && total > options_.max_context) {
    return InvalidArgumentError(
        "prompt_tokens ({}) + max_tokens ({}) exceeds the model context of {} tokens",
        prompt_tokens, max_tokens, options_.max_context);
  }
  // A request must fit the whole pool to be sure to finish (preempting everything else); only
  // its prompt's pages are taken now, the rest as it grows (on-demand pages).
  if (cache_.BlocksFor(total) > cache_.allocator().num_blocks()) {
    return ResourceExhaustedError("req={}: needs {} KV pages; the cache has {} in total",
                                  request_id, cache_.BlocksFor(total),
                                  cache_.allocator().num_blocks());
  }
  const int32_t prompt_need = cache_.BlocksFor(prompt_tokens);
  const int32_t need = options_.reserve_max_tokens ? cache_.BlocksFor(total) : prompt_need;
  if (lease.count() <= 0) lease = options_.default_lease;

  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) return UnavailableError("decode worker is shutting down");
  auto it = records_.find(request_id);
  if (it != records_.end()) {
    if (!IsTerminal(it->second.state) || it->second.transfer_active) {
      return Status(StatusCode::kAlreadyExists,
                    fmt::format("req={} is already reserved ({})", request_id,
                                ReservationStateName(it->second.state)));
    }
    records_.erase(it);  // a retry after a tombstone
  }
  // With a prefix cache every allocation goes through it: idle cached blocks count as free.
  StatusOr<PrefixAllocation> alloc = ResourceExhaustedError("no pages");
  if (prefix_cache_ == nullptr) {
    auto fresh = cache_.allocator().Allocate(need);
    if (fresh.ok()) alloc = PrefixAllocation{std::move(fresh).value(), 0};
  } else if (prompt_token_ids.empty()) {
    auto fresh = prefix_cache_->AllocateFresh(need);
    if (fresh.ok()) alloc = PrefixAllocation{std::move(fresh).value(), 0};
  } else {
    // At least the last prompt token's block arrives: the sender always has something to send
    // and the request's KV never rests on the cache alone.
    alloc = prefix_cache_->Allocate(prompt_token_ids, need, int64_t{prompt_tokens} - 1);
  }
  if (!alloc.ok()) {
    return ResourceExhaustedError("req={}: needs {} KV pages, {} of {} free", request_id, need,
                                  cache_.allocator().num_free(), cache_.allocator().num_blocks());
  }
  ReserveResult res;
  res.transfer_id = TransferId(request_id);
  res.all_blocks = std::move(alloc->blocks);
  res.prompt_blocks.assign(res.all_blocks.begin(), res.all_blocks.begin() + prompt_need);
  res.first_block = alloc->cached_blocks;
  res.lease_deadline = Clock::now() + lease;
  res.lease_deadline_wall = std::chrono::system_clock::now() + lease;
  res.transfer_token = NewTransferToken();

  Status st = transceiver_.ExpectTransfer(
      res.transfer_id, into_device ? *device_pages_ : pages_,
      std::vector<int32_t>(res.prompt_blocks.begin() + res.first_block, res.prompt_blocks.end()),
      res.lease_deadline, [this, request_id](const Status& s) { OnTransferDone(request_id, s); },
      res.transfer_token);
  if (!st.ok()) {
    ReleaseBlocks(res.all_blocks);
    return st;
  }
  Record& r = records_[request_id];
  r.id = request_id;
  r.transfer_id = res.transfer_id;
  r.prompt_tokens = prompt_tokens;
  r.max_tokens = max_tokens;
  r.blocks = res.all_blocks;
  r.cached_blocks = res.first_block;
  r.on_device = into_device;
  r.ids_hash = prompt_token_ids.empty() ? 0 : IdsHash(prompt_token_ids);
  r.lease = lease;
  r.lease_deadline = res.lease_deadline;
  r.state = ReservationState::kReserved;
  r.transfer_active = true;
  ++active_transfers_;
  TLOG_INFO(
      "req={} reserved {} pages ({} for the prompt, {} of them cached), lease {} ms; pages "
      "used {}/{}",
      request_id, res.all_blocks.size(), res.prompt_blocks.size(), res.first_block, lease.count(),
      cache_.allocator().num_used(), cache_.allocator().num_blocks());
  cv_.notify_all();
  return res;
}

Status ReservationTable::Attach(const std::string& request_id, int32_t prompt_tokens,
                                int32_t max_tokens, ReadyCallback ready,
                                std::span<const int32_t> token_ids) {
  std::vector<int32_t> handoff;
  int32_t cached = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = records_.find(request_id);
    if (it == records_.end()) return NotFoundError("req={} has no reservation", request_id);
    Record& r = it->second;
    if (IsTerminal(r.state) && r.state != ReservationState::kDone) return r.status;
    if (r.state != ReservationState::kReserved && r.state != ReservationState::kReady) {
      return Status(StatusCode::kAlreadyExists,
                    fmt::format("req={} already has a Decode call ({})", request_id,
                                ReservationStateName(r.state)));
    }
    if (prompt_tokens != r.prompt_tokens) {
      return InvalidArgumentError("prompt_token_ids: {} tokens, but {} were reserved",
                                  prompt_tokens, r.prompt_tokens);
    }
    if (r.ids_hash != 0 && !token_ids.empty() && IdsHash(token_ids) != r.ids_hash) {
      return InvalidArgumentError(
          "prompt_token_ids (with generated_token_ids) differ from the ids req={} was reserved "
          "with",
          request_id);
    }
    if (max_tokens > r.max_tokens) {
      return InvalidArgumentError("stopping.max_tokens: {}, but only {} were reserved", max_tokens,
                                  r.max_tokens);
    }
    if (r.state == ReservationState::kReserved) {
      r.state = ReservationState::kReceiving;
      r.waiter = std::move(ready);
      return Status::Ok();
    }
    r.state = ReservationState::kDecoding;
    handoff = std::move(r.blocks);
    r.blocks.clear();
    cached = r.on_device ? static_cast<int32_t>(handoff.size()) : r.cached_blocks;
  }
  ready(Status::Ok(), std::move(handoff), cached);
  return Status::Ok();
}

void ReservationTable::OnTransferDone(const std::string& id, const Status& status) {
  ReadyCallback waiter;
  std::vector<int32_t> handoff;
  int32_t cached = 0;
  Status waiter_status = status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    --active_transfers_;
    cv_.notify_all();
    auto it = records_.find(id);
    if (it == records_.end()) return;  // cannot happen: records with active transfers stay
    Record& r = it->second;
    r.transfer_active = false;
    switch (r.state) {
      case ReservationState::kReserved:
        if (status.ok()) {
          r.state = ReservationState::kReady;
          r.lease_deadline = Clock::now() + r.lease;  // now the Decode call has a lease to come
        } else if (status.code() == StatusCode::kDeadlineExceeded) {
          EndLocked(r, ReservationState::kExpired,
                    DeadlineExceededError("req={}: lease of {} ms expired: {}", id, r.lease.count(),
                                          status.message()));
        } else {
          EndLocked(r, ReservationState::kFailed, status);
        }
        break;
      case ReservationState::kReceiving:
        waiter = std::move(r.waiter);
        r.waiter = nullptr;
        if (status.ok()) {
          r.state = ReservationState::kDecoding;
          handoff = std::move(r.blocks);
          r.blocks.clear();
          cached = r.on_device ? static_cast<int32_t>(handoff.size()) : r.cached_blocks;
        } else {
          EndLocked(r, ReservationState::kFailed, status);
        }
        break;
      default:  // ended meanwhile (expired, cancelled): now the pages can go back
        if (r.waiter) {
          waiter = std::move(r.waiter);
          r.waiter = nullptr;
          waiter_status = r.status;
        }
        ReleasePagesLocked(r);
        break;
    }
    if (!status.ok()) TLOG_INFO("req={} transfer ended: {}", id, status.ToString());
  }
  if (!waiter) return;
  if (!handoff.empty()) {
    waiter(Status::Ok(), std::move(handoff), cached);
  } else {
    waiter(waiter_status.ok() ? CancelledError("req={} was cancelled", id) : waiter_status, {}, 0);
  }
}

void ReservationTable::CancelAttached(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = records_.find(request_id);
  if (it == records_.end() || it->second.state != ReservationState::kReceiving) return;
  Record& r = it->second;
  EndLocked(r, ReservationState::kCancelled,
            CancelledError("req={}: the Decode call went away", request_id));
  // The waiter runs from the transfer's `done` (CANCELLED), which also frees the pages.
  CancelTransferLocked(r.transfer_id);
}

void ReservationTable::MarkDone(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = records_.find(request_id);
  if (it == records_.end() || it->second.state != ReservationState::kDecoding) return;
  it->second.state = ReservationState::kDone;
  it->second.status = NotFoundError("req={} already finished decoding", request_id);
  it->second.ended_at = Clock::now();
}

Status ReservationTable::Release(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = records_.find(request_id);
  if (it == records_.end()) return NotFoundError("req={} has no reservation", request_id);
  Record& r = it->second;
  switch (r.state) {
    case ReservationState::kReserved:
    case ReservationState::kReady: {
      const bool active = r.transfer_active;
      EndLocked(r, ReservationState::kCancelled, CancelledError("req={} was released", request_id));
      if (active) CancelTransferLocked(r.transfer_id);
      TLOG_INFO("req={} released; pages used {}/{}", request_id, cache_.allocator().num_used(),
                cache_.allocator().num_blocks());
      return Status::Ok();
    }
    case ReservationState::kReceiving:
    case ReservationState::kDecoding:
      return FailedPreconditionError("req={} belongs to a Decode call; cancel that call instead",
                                     request_id);
    default:
      return Status::Ok();
  }
}

int32_t ReservationTable::num_live() const {
  std::lock_guard<std::mutex> lock(mu_);
  int32_t n = 0;
  for (const auto& [id, r] : records_) {
    if (!IsTerminal(r.state) && r.state != ReservationState::kDecoding) ++n;
  }
  return n;
}

StatusOr<ReservationState> ReservationTable::state(const std::string& request_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = records_.find(request_id);
  if (it == records_.end()) return NotFoundError("req={} has no reservation", request_id);
  return it->second.state;
}

void ReservationTable::EndLocked(Record& r, ReservationState state, Status status) {
  r.state = state;
  r.status = std::move(status);
  r.ended_at = Clock::now();
  if (!r.transfer_active) ReleasePagesLocked(r);
}

void ReservationTable::ReleasePagesLocked(Record& r) {
  if (r.blocks.empty()) return;
  ReleaseBlocks(r.blocks);
  r.blocks.clear();
}

void ReservationTable::ReleaseBlocks(std::span<const int32_t> blocks) {
  if (prefix_cache_ != nullptr) {
    prefix_cache_->Release(blocks);  // matched blocks keep the cache's reference
  } else {
    cache_.allocator().Release(blocks);
  }
}

void ReservationTable::ReaperLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    const auto now = Clock::now();
    for (auto it = records_.begin(); it != records_.end();) {
      Record& r = it->second;
      // kReserved's start-by lease is the Transceiver's receive deadline (see OnTransferDone).
      if (r.state == ReservationState::kReady && r.lease_deadline <= now) {
        EndLocked(r, ReservationState::kExpired,
                  DeadlineExceededError("req={}: lease expired before Decode", r.id));
        TLOG_INFO("req={} lease expired; pages used {}/{}", r.id, cache_.allocator().num_used(),
                  cache_.allocator().num_blocks());
      }
      if (IsTerminal(r.state) && !r.transfer_active && r.ended_at + options_.tombstone_ttl <= now) {
        it = records_.erase(it);
      } else {
        ++it;
      }
    }
    if (!pending_cancels_.empty()) {
      // Transceiver::Cancel may write an abort frame: never under the table's lock.
      std::vector<uint64_t> cancels = std::move(pending_cancels_);
      pending_cancels_.clear();
      lock.unlock();
      for (uint64_t t : cancels) (void)transceiver_.Cancel(t);
      lock.lock();
      continue;
    }
    cv_.wait_for(lock, options_.reap_interval, [&] { return stop_ || !pending_cancels_.empty(); });
  }
}

void ReservationTable::CancelTransferLocked(uint64_t transfer_id) {
  pending_cancels_.push_back(transfer_id);
  cv_.notify_all();
}

}  // namespace tandem

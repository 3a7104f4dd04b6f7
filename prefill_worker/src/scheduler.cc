#include "tandem/prefill_worker/scheduler.h"

#include <algorithm>
#include <span>
#include <utility>

#include "tandem/common/logging.h"
#include "tandem/engine/batch_planner.h"
#include "tandem/kvtransfer/transports.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// How long the scheduler thread sleeps when idle before re-checking deadlines.
constexpr auto kIdlePoll = std::chrono::milliseconds(20);

// A transfer that failed other than by our own cancel (the receiver died, froze past the I/O
// deadline, refused the pages): the decode worker's failure, not this worker's — the router
// then moves the request away from that decode worker and may retry here. INVALID_ARGUMENT
// (a misuse of the transceiver) stays ours.
Status AsReceiverFault(Status s) {
  if (s.ok() || s.code() == StatusCode::kCancelled || s.code() == StatusCode::kInvalidArgument) {
    return s;
  }
  return std::move(s).WithOrigin(ErrorOrigin::kPeer);
}

}  // namespace

Scheduler::Scheduler(Engine& engine, Transceiver& transceiver, const SchedulerOptions& options,
                     std::unique_ptr<KvStaging> staging)
    : engine_(engine),
      transceiver_(transceiver),
      options_(options),
      staging_(std::move(staging)),
      pages_(staging_ ? staging_->mirror() : engine.kv_cache().pool()),
      device_pages_(engine.kv_cache().pool()),
      queue_(static_cast<size_t>(std::max(1, options.max_queue))) {
  page_bytes_all_layers_ = static_cast<int64_t>(engine.kv_cache().geometry().BlockBytes());
  scheduler_thread_ = std::thread([this] { SchedulerLoop(); });
}

Scheduler::~Scheduler() { Stop(); }

Status Scheduler::Submit(std::shared_ptr<PrefillJob> job) {
  const int32_t needed = engine_.kv_cache().BlocksFor(job->prompt_tokens());
  const int32_t total = engine_.kv_cache().allocator().num_blocks();
  if (needed > total) {
    return ResourceExhaustedError(
        "req={}: prompt needs {} KV blocks, the prefill worker's cache has {}", job->request_id,
        needed, total);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_)
      return UnavailableError("req={}: prefill worker is shutting down", job->request_id);
  }
  job->state = PrefillState::kQueued;
  job->submitted_at = Clock::now();
  // The handshake goes out now, before the job waits for pages and compute: the decode worker
  // then knows a live sender owns the request (its lease only covers the time until this).
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++sends_in_flight_;
  }
  // cuda_ipc copies device pages to device pages, and so does a real NCCL; every other transport
  // reads host pages.
  const std::string_view transport = KvTransportOfEndpoint(job->ticket.dest_endpoint);
  job->device_send = transport == kKvTransportCudaIpc ||
                     (transport == kKvTransportNccl && options_.nccl_device_pages);
  auto send = transceiver_.StartSend(job->ticket, job->device_send ? device_pages_ : pages_, {},
                                     [this, job](const Status& s) { OnTransferEnded(job, s); });
  if (!send.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    if (--sends_in_flight_ == 0) sends_cv_.notify_all();
    return send.status();
  }
  {
    std::lock_guard<std::mutex> lock(job->mu);
    job->send = *send;
  }
  // Counted before the push so that a job finishing at once never drives the count negative.
  active_jobs_.fetch_add(1);
  if (Status s = queue_.Push(job); !s.ok()) {
    active_jobs_.fetch_sub(1);
    (void)transceiver_.Cancel(send->request_id());
    return ResourceExhaustedError("req={}: {}", job->request_id, s.message());
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    kick_ = true;
  }
  wake_.notify_one();
  return Status::Ok();
}

void Scheduler::Cancel(const std::shared_ptr<PrefillJob>& job, Status reason) {
  {
    std::lock_guard<std::mutex> lock(job->mu);
    if (job->cancel_requested) return;
    job->cancel_requested = true;
    job->cancel_reason = std::move(reason);
    // A transfer in flight ends promptly; its completion callback then finishes the job.
    if (job->send.valid()) (void)transceiver_.Cancel(job->send.request_id());
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    kick_ = true;
  }
  wake_.notify_one();
}

void Scheduler::Stop(const std::string& why) {
  std::lock_guard<std::mutex> stop_lock(stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    stop_reason_ = why;
  }
  wake_.notify_all();
  if (scheduler_thread_.joinable()) scheduler_thread_.join();
  // The scheduler thread cancelled every started transfer and handed its job over; their
  // callbacks (bounded by one io_timeout) finish them. None may run after this returns.
  std::unique_lock<std::mutex> lock(mu_);
  sends_cv_.wait(lock, [&] { return sends_in_flight_ == 0; });
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.queued = static_cast<int64_t>(queue_.size());
  s.queued_tokens = queue_.queued_tokens();
  s.computing = computing_.load();
  s.transferring = transferring_.load();
  s.kv_pages_used = engine_.kv_blocks_in_use();
  s.kv_pages_total = engine_.kv_cache().allocator().num_blocks();
  if (const PrefixCache* pc = engine_.prefix_cache()) {
    const PrefixCacheStats ps = pc->stats();
    s.kv_pages_cached = ps.cached_blocks;
    s.prefix_lookup_tokens = ps.lookup_tokens;
    s.prefix_hit_tokens = ps.hit_tokens;
    s.prefix_evictions = ps.evictions;
  }
  return s;
}

Status Scheduler::PendingStop(PrefillJob& job, Deadline now) {
  std::lock_guard<std::mutex> lock(job.mu);
  if (job.cancel_requested) return job.cancel_reason;
  if (now >= job.deadline) {
    return DeadlineExceededError("req={}: deadline passed while {}", job.request_id,
                                 PrefillStateName(job.state));
  }
  return Status::Ok();
}

void Scheduler::FinishJob(const JobPtr& job, const Status& status) {
  {
    std::lock_guard<std::mutex> lock(job->mu);
    if (job->finished) return;
    job->finished = true;
  }
  if (!job->blocks.empty()) {
    if (PrefixCache* pc = engine_.prefix_cache()) {
      pc->Release(job->blocks);
    } else {
      engine_.kv_cache().allocator().Release(job->blocks);
    }
    job->blocks.clear();
    {
      std::lock_guard<std::mutex> lock(mu_);
      kick_ = true;  // a queued job may fit now
    }
    wake_.notify_one();
  }
  if (job->state == PrefillState::kComputing) computing_.fetch_sub(1);
  if (job->state == PrefillState::kTransferring) transferring_.fetch_sub(1);
  if (status.ok()) {
    job->state = PrefillState::kDone;
  } else if (status.code() == StatusCode::kCancelled) {
    job->state = PrefillState::kCancelled;
  } else {
    job->state = PrefillState::kFailed;
  }
  if (status.ok()) {
    TLOG_DEBUG("req={} done: queue {:.3f}s compute {:.3f}s transfer {:.3f}s {} bytes",
               job->request_id, job->result.queue_seconds, job->result.compute_seconds,
               job->result.transfer_seconds, job->result.transfer_bytes);
  } else {
    TLOG_INFO("req={} {}: {}", job->request_id, PrefillStateName(job->state), status.ToString());
  }
  PrefillDoneCallback done = std::move(job->done);
  job->done = nullptr;
  if (done) done(status, job->result);
  active_jobs_.fetch_sub(1);
}

void Scheduler::ToCompletion(JobPtr job) {
  if (job->state == PrefillState::kComputing) computing_.fetch_sub(1);
  job->state = PrefillState::kTransferring;
  transferring_.fetch_add(1);
  bool ended;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    job->handed_off = true;
    ended = job->transfer_ended;
  }
  if (ended) CompleteTransferred(job);
}

void Scheduler::OnTransferEnded(const JobPtr& job, const Status& status) {
  bool handed_off;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    job->transfer_ended = true;
    job->transfer_status = AsReceiverFault(status);
    handed_off = job->handed_off;
  }
  // Not handed off yet: the scheduler thread finishes the job (a failed transfer surfaces as
  // its BindBlocks / SendLayer error) and hands it off, or finishes it directly.
  if (handed_off) CompleteTransferred(job);
  std::lock_guard<std::mutex> lock(mu_);
  if (--sends_in_flight_ == 0) sends_cv_.notify_all();
}

void Scheduler::CompleteTransferred(const JobPtr& job) {
  Status status;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    if (job->finished) return;
    status = job->transfer_status;
    if (job->cancel_requested) status = job->cancel_reason;
  }
  job->result.transfer_seconds = Seconds(Clock::now() - job->computed_at);
  SendHandle send;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    send = job->send;
  }
  if (send.valid()) job->result.wire_seconds = transceiver_.WireSeconds(send);
  if (status.ok() && !job->send_error.ok()) status = job->send_error;
  FinishJob(job, status);
}

void Scheduler::CancelQueued(const JobPtr& job, const Status& reason) {
  // No local blocks are bound yet, so no I/O thread reads this job's pages: the send ends (and
  // the receiver is told) without a Wait.
  (void)transceiver_.Cancel(job->ticket.request_id);
  FinishJob(job, reason);
}

void Scheduler::ReapCancelled() {
  const Deadline now = Clock::now();
  for (auto& job : queue_.RemoveIf([&](PrefillJob& j) { return !PendingStop(j, now).ok(); })) {
    CancelQueued(job, PendingStop(*job, now));
  }
  std::vector<JobPtr> keep;
  keep.reserve(running_.size());
  for (auto& job : running_) {
    Status stop = PendingStop(*job, now);
    if (stop.ok()) {
      keep.push_back(std::move(job));
      continue;
    }
    SendHandle send;
    {
      std::lock_guard<std::mutex> lock(job->mu);
      send = job->send;
    }
    if (send.valid()) {
      // The I/O threads may still read the pages: cancel and let a completion thread wait.
      (void)transceiver_.Cancel(send.request_id());
      {
        std::lock_guard<std::mutex> lock(job->mu);
        if (!job->cancel_requested) {
          job->cancel_requested = true;
          job->cancel_reason = stop;
        }
      }
      ToCompletion(std::move(job));
    } else {
      FinishJob(job, stop);
    }
  }
  running_ = std::move(keep);
}

void Scheduler::Admit() {
  KvCache& cache = engine_.kv_cache();
  while (true) {
    JobPtr job = queue_.Front();
    if (!job) return;
    const int32_t need = cache.BlocksFor(job->prompt_tokens());
    std::vector<int32_t> blocks;
    int64_t cached_tokens = 0;
    if (PrefixCache* pc = engine_.prefix_cache()) {
      // The last prompt token is always computed: its logits give the first token.
      auto alloc = pc->Allocate(job->prompt, need, job->prompt_tokens() - 1);
      if (!alloc.ok()) return;  // the head waits until blocks free up (FIFO, never half-served)
      blocks = std::move(alloc->blocks);
      cached_tokens = int64_t{alloc->cached_blocks} * pc->page_size();
    } else {
      auto fresh = cache.allocator().Allocate(need);
      if (!fresh.ok()) return;
      blocks = std::move(fresh).value();
    }
    queue_.PopFront();
    job->blocks = std::move(blocks);
    job->computed_tokens = cached_tokens;
    job->cached_tokens = cached_tokens;
    // A failure (the transfer already ended) surfaces when the job's first chunk is scheduled.
    // Only the blocks the decode worker lacks travel (ticket.first_block).
    job->send_error = AsReceiverFault(transceiver_.BindBlocks(
        job->send, std::vector<int32_t>(job->sent_blocks().begin(), job->sent_blocks().end())));
    job->state = PrefillState::kComputing;
    job->admitted_at = Clock::now();
    job->result.queue_seconds = Seconds(job->admitted_at - job->submitted_at);
    computing_.fetch_add(1);
    TLOG_DEBUG("req={} admitted: {} tokens ({} cached), {} blocks", job->request_id,
               job->prompt_tokens(), job->cached_tokens, job->blocks.size());
    running_.push_back(std::move(job));
  }
}

bool Scheduler::Step() {
  ReapCancelled();
  Admit();
  if (running_.empty()) return false;

  // Jobs whose transfer ended before their first chunk (refused by the receiver, its lease or
  // deadline passed, the peer died) end now: no layer was sent, their pages are unread.
  for (auto it = running_.begin(); it != running_.end();) {
    JobPtr job = *it;
    if (job->computed_tokens == job->cached_tokens && !job->send_error.ok()) {
      it = running_.erase(it);
      FinishJob(job, job->send_error);
    } else {
      ++it;
    }
  }
  if (running_.empty()) return true;

  // The batch: running jobs in admission order, one chunk each, under the token budget.
  struct Item {
    JobPtr job;
    int64_t count = 0;
    bool last = false;
    int64_t logits_row = -1;
  };
  std::vector<SequenceView> views;
  views.reserve(running_.size());
  for (auto& job : running_) {
    views.push_back({job->prompt, job->computed_tokens, job->prompt_tokens(), job->blocks});
  }
  PlannerOptions po;
  po.max_batch_tokens = options_.max_batch_tokens;
  const StepPlan plan = PlanStep(views, po);
  std::vector<Item> runnable;
  std::vector<size_t> senders;  // indices into runnable whose last chunk is in this forward
  for (const StepPlan::PrefillPart& p : plan.prefill_parts) {
    runnable.push_back({running_[p.seq], p.count, p.last});
    if (p.last) {
      runnable.back().logits_row = static_cast<int64_t>(senders.size());
      senders.push_back(runnable.size() - 1);
    }
  }

  auto on_layer_written = [&](int32_t layer) {
    for (size_t i : senders) {
      PrefillJob& job = *runnable[i].job;
      if (!job.send_error.ok()) continue;
      SendHandle send;
      {
        std::lock_guard<std::mutex> lock(job.mu);
        send = job.send;
      }
      if (staging_ && !job.device_send) {
        // Device pages: the layer is complete on the device; the transceiver reads the mirror.
        if (Status s = staging_->ToHost(layer, job.sent_blocks()); !s.ok()) {
          job.send_error = InternalError("req={}: staging KV layer {} to host failed: {}",
                                         job.request_id, layer, s.message());
          TLOG_ERROR("{}", job.send_error.message());
          (void)transceiver_.Cancel(send.request_id());
          std::lock_guard<std::mutex> lock(job.mu);
          if (!job.cancel_requested) {
            job.cancel_requested = true;
            job.cancel_reason = job.send_error;
          }
          continue;
        }
      }
      if (Status s = transceiver_.SendLayer(send, layer); !s.ok()) {
        job.send_error = AsReceiverFault(std::move(s));
      }
    }
  };
  ModelRunner& runner = engine_.runner();
  Status fwd = runner.Forward(plan.batch, engine_.kv_cache(), on_layer_written);
  std::vector<SampleRow> rows(senders.size());
  for (size_t r = 0; r < senders.size(); ++r) {
    const PrefillJob& job = *runnable[senders[r]].job;
    const std::span<const int32_t> seq(job.prompt);
    const size_t given = seq.size() - static_cast<size_t>(job.num_generated);
    rows[r] = {&job.sampling, seq.first(given), seq.subspan(given), job.prompt_tokens()};
  }
  std::vector<SampleResult> samples;
  if (fwd.ok()) fwd = runner.Sample(rows, &samples);
  const auto now = Clock::now();

  for (auto& item : runnable) {
    PrefillJob& job = *item.job;
    if (!fwd.ok()) {
      // A forward error is a bug; cancel the transfer and let a completion thread wait.
      (void)transceiver_.Cancel(job.ticket.request_id);
      std::lock_guard<std::mutex> lock(job.mu);
      job.cancel_requested = true;
      job.cancel_reason =
          InternalError("req={}: forward failed: {}", job.request_id, fwd.message());
      continue;
    }
    const int64_t before = job.computed_tokens;
    job.computed_tokens += item.count;
    if (PrefixCache* pc = engine_.prefix_cache();
        pc != nullptr && job.computed_tokens / pc->page_size() > before / pc->page_size()) {
      pc->Insert(job.prompt, job.blocks, job.computed_tokens);  // full blocks now written
    }
    if (!item.last) continue;
    job.computed_at = now;
    job.result.compute_seconds = Seconds(now - job.admitted_at);
    job.result.transfer_pages = static_cast<int32_t>(job.sent_blocks().size());
    job.result.pages_not_sent = job.first_block;
    job.result.transfer_bytes = page_bytes_all_layers_ * job.result.transfer_pages;
    job.result.computed_tokens = job.computed_tokens - job.cached_tokens;
    job.result.first_token = std::move(samples[item.logits_row]);
  }
  // Jobs fully computed (or broken) move to the completion threads; the rest stay running.
  std::vector<JobPtr> keep;
  for (auto& job : running_) {
    const bool finished = job->computed_tokens == job->prompt_tokens() || !fwd.ok();
    if (finished) {
      ToCompletion(job);
    } else {
      keep.push_back(job);
    }
  }
  running_ = std::move(keep);
  return true;
}

void Scheduler::SchedulerLoop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stopping_) break;
    }
    const bool worked = Step();
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_) break;
    if (!worked && !kick_) wake_.wait_for(lock, kIdlePoll, [&] { return stopping_ || kick_; });
    kick_ = false;
  }
  // Shutting down: every job ends with UNAVAILABLE.
  std::string why;
  {
    std::lock_guard<std::mutex> lock(mu_);
    why = stop_reason_;
  }
  for (auto& job : queue_.Clear()) {
    TLOG_WARN("req={} cut (queued): {}", job->request_id, why);
    CancelQueued(job, UnavailableError("req={}: {}", job->request_id, why));
  }
  for (auto& job : running_) {
    TLOG_WARN("req={} cut (running): {}", job->request_id, why);
    Status reason = UnavailableError("req={}: {}", job->request_id, why);
    SendHandle send;
    {
      std::lock_guard<std::mutex> lock(job->mu);
      send = job->send;
      if (!job->cancel_requested) {
        job->cancel_requested = true;
        job->cancel_reason = reason;
      }
    }
    if (send.valid()) {
      (void)transceiver_.Cancel(send.request_id());
      ToCompletion(job);
    } else {
      FinishJob(job, reason);
    }
  }
  running_.clear();
}

}  // namespace tandem

#include "tandem/prefill_worker/scheduler.h"

#include <algorithm>
#include <span>
#include <utility>

#include "tandem/common/logging.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// How long the scheduler thread sleeps when idle before re-checking deadlines.
constexpr auto kIdlePoll = std::chrono::milliseconds(20);

}  // namespace

Scheduler::Scheduler(Engine& engine, Transceiver& transceiver, const SchedulerOptions& options)
    : engine_(engine),
      transceiver_(transceiver),
      options_(options),
      pages_(engine.kv_cache()),
      queue_(static_cast<size_t>(std::max(1, options.max_queue))) {
  page_bytes_all_layers_ = static_cast<int64_t>(engine.kv_cache().layout().BlockBytes());
  scheduler_thread_ = std::thread([this] { SchedulerLoop(); });
  const int n = std::max(1, options_.completion_threads);
  for (int i = 0; i < n; ++i) completion_threads_.emplace_back([this] { CompletionLoop(); });
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
  auto send = transceiver_.StartSend(job->ticket, pages_, {});
  if (!send.ok()) return send.status();
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
    // A transfer in flight ends promptly; its Wait (on a completion thread) then returns.
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
  // The scheduler thread handed every started transfer to the completion threads (cancelled);
  // they drain the queue and exit.
  {
    std::lock_guard<std::mutex> lock(mu_);
    completion_stop_ = true;
  }
  completion_cv_.notify_all();
  for (auto& t : completion_threads_) {
    if (t.joinable()) t.join();
  }
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.queued = static_cast<int64_t>(queue_.size());
  s.queued_tokens = queue_.queued_tokens();
  s.computing = computing_.load();
  s.transferring = transferring_.load();
  s.kv_pages_used = engine_.kv_cache().allocator().num_used();
  s.kv_pages_total = engine_.kv_cache().allocator().num_blocks();
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
  if (!job->blocks.empty()) {
    engine_.kv_cache().allocator().Release(job->blocks);
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    completion_.push_back(std::move(job));
  }
  completion_cv_.notify_one();
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
    auto blocks = cache.allocator().Allocate(cache.BlocksFor(job->prompt_tokens()));
    if (!blocks.ok()) return;  // the head waits until blocks free up (FIFO, never half-served)
    queue_.PopFront();
    job->blocks = std::move(blocks).value();
    // A failure (the transfer already ended) surfaces when the job's first chunk is scheduled.
    job->send_error = transceiver_.BindBlocks(job->send, job->blocks);
    job->state = PrefillState::kComputing;
    job->admitted_at = Clock::now();
    job->result.queue_seconds = Seconds(job->admitted_at - job->submitted_at);
    computing_.fetch_add(1);
    TLOG_DEBUG("req={} admitted: {} tokens, {} blocks", job->request_id, job->prompt_tokens(),
               job->blocks.size());
    running_.push_back(std::move(job));
  }
}

bool Scheduler::Step() {
  ReapCancelled();
  Admit();
  if (running_.empty()) return false;

  // Build the batch: running jobs in admission order, one chunk each, under the token budget.
  struct Item {
    JobPtr job;
    int64_t start = 0;
    int64_t count = 0;
    bool last = false;
    int64_t logits_row = -1;
  };
  std::vector<Item> batch;
  int64_t budget = std::max(1, options_.max_batch_tokens);
  for (auto& job : running_) {
    if (budget <= 0) break;
    const int64_t remaining = job->prompt_tokens() - job->computed_tokens;
    const int64_t take = std::min(remaining, budget);
    budget -= take;
    batch.push_back({job, job->computed_tokens, take, take == remaining});
  }

  // Jobs whose transfer ended before their first chunk (refused by the receiver, its lease or
  // deadline passed, the peer died) end now: no layer was sent, their pages are unread.
  std::vector<Item> runnable;
  for (auto& item : batch) {
    if (item.start == 0 && !item.job->send_error.ok()) {
      Status err = item.job->send_error;
      running_.erase(std::find(running_.begin(), running_.end(), item.job));
      FinishJob(item.job, err);
    } else {
      runnable.push_back(std::move(item));
    }
  }
  if (runnable.empty()) return true;

  std::vector<ForwardChunk> chunks;
  chunks.reserve(runnable.size());
  std::vector<size_t> senders;  // indices into runnable whose last chunk is in this forward
  int64_t rows = 0;
  for (size_t i = 0; i < runnable.size(); ++i) {
    Item& item = runnable[i];
    ForwardChunk c;
    c.tokens = std::span<const int32_t>(item.job->prompt).subspan(item.start, item.count);
    c.start_pos = item.start;
    c.block_table = item.job->blocks;
    c.want_logits = item.last;
    if (item.last) {
      item.logits_row = rows++;
      senders.push_back(i);
    }
    chunks.push_back(c);
  }

  std::vector<float> logits;
  auto on_layer_done = [&](int32_t layer) {
    for (size_t i : senders) {
      PrefillJob& job = *runnable[i].job;
      if (!job.send_error.ok()) continue;
      SendHandle send;
      {
        std::lock_guard<std::mutex> lock(job.mu);
        send = job.send;
      }
      if (Status s = transceiver_.SendLayer(send, layer); !s.ok()) job.send_error = s;
    }
  };
  Status fwd = engine_.model().Forward(chunks, engine_.kv_cache(), &logits, on_layer_done);
  const auto now = Clock::now();

  const int32_t vocab = engine_.config().vocab_size;
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
    job.computed_tokens += item.count;
    if (!item.last) continue;
    job.computed_at = now;
    job.result.compute_seconds = Seconds(now - job.admitted_at);
    job.result.transfer_bytes = page_bytes_all_layers_ * static_cast<int64_t>(job.blocks.size());
    job.result.first_token = Sample(
        std::span<const float>(logits).subspan(static_cast<size_t>(item.logits_row) * vocab, vocab),
        job.sampling, job.prompt, {}, job.prompt_tokens());
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

void Scheduler::CompletionLoop() {
  while (true) {
    JobPtr job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      completion_cv_.wait(lock, [&] { return !completion_.empty() || completion_stop_; });
      if (completion_.empty()) return;
      job = std::move(completion_.front());
      completion_.pop_front();
    }
    Status status;
    {
      SendHandle send;
      {
        std::lock_guard<std::mutex> lock(job->mu);
        send = job->send;
      }
      // Bounded by the ticket deadline (plus one frame's io_timeout).
      status = send.valid() ? transceiver_.Wait(send) : job->send_error;
    }
    job->result.transfer_seconds = Seconds(Clock::now() - job->computed_at);
    {
      std::lock_guard<std::mutex> lock(job->mu);
      if (job->cancel_requested) status = job->cancel_reason;
    }
    if (status.ok() && !job->send_error.ok()) status = job->send_error;
    FinishJob(job, status);
  }
}

}  // namespace tandem

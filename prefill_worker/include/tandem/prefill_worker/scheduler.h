// Scheduler: batches queued prompts into chunked forward passes on the worker's engine and
// ships each prompt's KV to its decode worker layer by layer.
//
// Threads:
//   * one scheduler thread runs every Forward (the model allows no overlapping calls). Each
//     step it (1) ends queued / running jobs that were cancelled or passed their deadline,
//     (2) admits queued jobs in FIFO order while the cache has blocks for the WHOLE prompt
//     (the head waits when it does not fit, so a prompt is never half-served), (3) builds one
//     batch of chunks under `max_batch_tokens` (several prompts per forward; a prompt longer
//     than the remaining budget is split and continues in the next step), (4) ends jobs whose
//     transfer already failed, (5) runs the forward and (6) samples the first token of every
//     job whose last chunk was in the batch.
//   * Submit starts each job's transfer at once (Transceiver::StartSend without local blocks:
//     the handshake and fingerprint check happen while the job queues, and the decode worker's
//     reservation lease is satisfied); admission binds the job's blocks (BindBlocks).
//   * no thread waits on the network: each transfer's completion callback (StartSend's `done`,
//     on the Transceiver's service thread) meets the scheduler's hand-off of the computed (or
//     cancelled) job, and whichever comes second frees the job's blocks and runs its `done`.
//
// When a layer is sent. With chunked prefill a layer's pages are complete only after the
// prompt's LAST chunk computed that layer (earlier chunks fill only earlier positions, and the
// last chunk writes the tail of the last pages). So layer L of a job is queued with
// Transceiver::SendLayer from on_layer_done(L) of the forward that contains the job's final
// chunk — while that forward goes on computing layer L+1. Earlier chunks send nothing.
//
// Prefix cache (the engine's, when on): admission takes the prompt's longest cached prefix of
// full blocks (never its last token, whose logits give the first token) and allocates the rest,
// evicting idle cached blocks when too few are free; only the uncached suffix is computed, and
// the prompt's full blocks are cached once their K/V are written. Every page of the prompt,
// cached ones included, is still shipped: SendLayer sends all of a job's blocks of that layer,
// and cached pages are complete before the forward starts.
//
// Ownership: a job's blocks are allocated at admission and released exactly once, when the
// job reaches a terminal state: after the transfer ended (its callback ran: acknowledged, failed
// or cancelled — the I/O threads no longer read the pages), or directly when no layer could have
// been sent (the job never left the queue, or its transfer ended before its first chunk). Cancel()
// (RPC cancellation, gRPC deadline) calls Transceiver::Cancel so a transfer in flight ends
// promptly.
//
// Thread safety: Submit, Cancel and the accessors may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/kv_staging.h"
#include "tandem/kvtransfer/transceiver.h"
#include "tandem/prefill_worker/prefill_job.h"
#include "tandem/prefill_worker/request_queue.h"
#include "tandem/worker/kv_pages.h"

namespace tandem {

struct SchedulerOptions {
  // Prompt tokens computed in one forward, over all prompts. Default: 512.
  int32_t max_batch_tokens = 512;
  // Jobs waiting for admission at most; more are RESOURCE_EXHAUSTED. Default: 256.
  int32_t max_queue = 256;
  // Transfers to "nccl:" endpoints read the engine's device pages (no host staging); set by the
  // server from WorkerNcclChoice::device_pages. cuda_ipc always does. Default: false.
  bool nccl_device_pages = false;
};

struct SchedulerStats {
  int64_t queued = 0;         // kQueued jobs
  int64_t queued_tokens = 0;  // their prompt tokens
  int64_t computing = 0;      // kComputing jobs
  int64_t transferring = 0;   // kTransferring jobs
  int32_t kv_pages_used = 0;  // blocks held by jobs (one page per layer each)
  int32_t kv_pages_total = 0;
  // Prefix cache (zeros when it is off): blocks it holds (held by jobs too, or idle and
  // evictable), and its running totals (PrefixCacheStats).
  int32_t kv_pages_cached = 0;
  int64_t prefix_lookup_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  int64_t prefix_evictions = 0;
};

class Scheduler {
 public:
  // `engine` and `transceiver` must outlive the scheduler. `staging`: the host mirror the
  // transceiver reads when the engine's pages are device memory (KvStaging::ForPool of its
  // pool); nullptr sends straight from the engine's (host) pages. Starts the threads.
  Scheduler(Engine& engine, Transceiver& transceiver, const SchedulerOptions& options,
            std::unique_ptr<KvStaging> staging = nullptr);
  // Stop() then joins.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a validated job (see PrefillJob for what the creator fills in). RESOURCE_EXHAUSTED
  // when the queue is full or the prompt could never fit in the cache, UNAVAILABLE after Stop().
  // On error `done` is NOT called; otherwise it is called exactly once, from a worker thread.
  Status Submit(std::shared_ptr<PrefillJob> job);
  // Asks a job to end with `reason` (CANCELLED or DEADLINE_EXCEEDED); idempotent, never
  // blocks on I/O. A job that already finished is unaffected.
  void Cancel(const std::shared_ptr<PrefillJob>& job, Status reason);
  // Ends every job with UNAVAILABLE (`why` in its message; each one cut is logged), waits for
  // their transfers to end, joins the threads. Idempotent.
  void Stop(const std::string& why = "prefill worker shut down");

  SchedulerStats stats() const;
  // Bytes copied device → host mirror since the last call (0 without staging); see
  // KvStaging::TakeStagedBytes.
  int64_t TakeStagedBytes() { return staging_ ? staging_->TakeStagedBytes() : 0; }
  // Jobs not yet in a terminal state.
  int64_t active_jobs() const { return active_jobs_.load(); }

 private:
  using JobPtr = std::shared_ptr<PrefillJob>;

  void SchedulerLoop();
  // One scheduling step; false when there was nothing to do.
  bool Step();
  void ReapCancelled();
  // Ends a job that never left the queue: cancels its transfer (the receiver frees its pages).
  void CancelQueued(const JobPtr& job, const Status& reason);
  void Admit();
  // Hands a job with a started transfer over to its completion: it finishes when the transfer
  // ends (at once if it already has).
  void ToCompletion(JobPtr job);
  // StartSend's callback (the Transceiver's service thread).
  void OnTransferEnded(const JobPtr& job, const Status& status);
  // Finishes a handed-off job whose transfer ended: the status is the cancel reason, the send
  // error or the transfer's status.
  void CompleteTransferred(const JobPtr& job);
  // Terminal transition: frees blocks, sets the state, runs done. Exactly once per job.
  void FinishJob(const JobPtr& job, const Status& status);
  // The job's cancel reason, else its deadline status, else OK.
  static Status PendingStop(PrefillJob& job, Deadline now);

  Engine& engine_;
  Transceiver& transceiver_;
  const SchedulerOptions options_;
  const std::unique_ptr<KvStaging> staging_;  // null for host pages
  KvCachePages pages_;                        // staging_'s mirror, else the engine's pool
  KvCachePages device_pages_;                 // the engine's pool (cuda_ipc reads it)
  int64_t page_bytes_all_layers_ = 0;         // bytes of one block over every layer

  RequestQueue queue_;
  std::vector<JobPtr> running_;  // scheduler thread only

  std::mutex mu_;  // guards the fields below
  std::condition_variable wake_;
  bool stopping_ = false;
  std::string stop_reason_;  // guarded by mu_; set with stopping_
  bool kick_ = false;
  int64_t sends_in_flight_ = 0;  // started transfers whose callback has not run yet
  std::condition_variable sends_cv_;

  std::atomic<int64_t> active_jobs_{0};
  std::atomic<int64_t> computing_{0};
  std::atomic<int64_t> transferring_{0};
  std::mutex stop_mu_;
  bool stopped_ = false;
  std::thread scheduler_thread_;
};

}  // namespace tandem

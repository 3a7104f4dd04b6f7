// One prefill request inside the worker, from admission to reply.
//
// State machine (PrefillJob::state):
//
//   kQueued ──admitted (own blocks allocated)──▶ kComputing ──last chunk computed, first token
//      │                                            │          sampled──▶ kTransferring
//      │                                            │                          │
//      └─ cancel / deadline ─▶ kCancelled | kFailed ◀── cancel / deadline / ────┘─▶ kDone
//                                                       error (transfer, forward)
//
//   * kQueued: in the RequestQueue; owns no blocks. Waits there while the cache is full (a
//     request is never half-served). Its transfer is started on Submit (handshake only).
//   * kComputing: owned by the scheduler thread; owns its blocks, bound to the transfer at
//     admission; layers are pushed from the forward that contains the LAST chunk (see
//     scheduler.h).
//   * kTransferring: owned by a completion thread that waits for the receiver's acks.
//   * Terminal: kDone (OK), kCancelled (CANCELLED), kFailed (any other error). On entering a
//     terminal state the job's blocks are released exactly once, and `done` runs exactly once.
//
// Thread safety: the fields under "creator" are written before Scheduler::Submit and read-only
// afterwards. The fields under "owner" are touched only by the thread that currently owns the
// job (scheduler thread or one completion thread; ownership is handed over through locked
// queues). Cancellation fields are guarded by `mu`.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/sampling.h"
#include "tandem/kvtransfer/transceiver.h"

namespace tandem {

enum class PrefillState { kQueued, kComputing, kTransferring, kDone, kFailed, kCancelled };
std::string_view PrefillStateName(PrefillState state);

struct PrefillResult {
  SampleResult first_token;
  double queue_seconds = 0.0;     // submit -> admitted
  double compute_seconds = 0.0;   // admitted -> last chunk computed and first token sampled
  double transfer_seconds = 0.0;  // last chunk computed -> every layer acknowledged
  int64_t transfer_bytes = 0;     // page bytes shipped (all layers)
  int32_t transfer_pages = 0;     // pages shipped
  int32_t pages_not_sent = 0;     // prompt pages the decode worker held (ticket first_block)
  double wire_seconds = 0.0;      // the transfer's I/O time (Transceiver::WireSeconds)
  int64_t computed_tokens = 0;    // prompt tokens computed (not from the prefix cache)
};

// Runs once with the final status; `result` is meaningful only when the status is OK.
using PrefillDoneCallback = std::function<void(const Status& status, const PrefillResult& result)>;

struct PrefillJob {
  using Clock = std::chrono::steady_clock;

  // --- creator (before Submit) ---
  std::string request_id;  // for logs
  // The sequence whose K/V are computed and shipped: the prompt, then (a request resumed after
  // a failover) the `num_generated` tokens it already generated. Non-empty, ids in the vocabulary.
  std::vector<int32_t> prompt;
  int32_t num_generated = 0;
  SamplingParams sampling;  // validated
  // Where the KV goes. dest_blocks holds exactly the prompt's blocks from `first_block` on (the
  // decode worker holds the earlier ones already); deadline is set.
  TransferTicket ticket;
  // The ticket names a cuda_ipc endpoint: the transfer copies from the engine's device pages
  // itself (no host staging). Set by Submit.
  bool device_send = false;
  int32_t first_block = 0;  // < the prompt's block count
  Deadline deadline;        // the whole request (gRPC deadline, worker limit)
  PrefillDoneCallback done;

  // --- owner (scheduler thread, then whichever thread finishes the job) ---
  PrefillState state = PrefillState::kQueued;
  Clock::time_point submitted_at;
  Clock::time_point admitted_at;
  Clock::time_point computed_at;
  std::vector<int32_t> blocks;  // this worker's blocks, in position order
  int64_t computed_tokens = 0;  // prompt positions whose K/V are in the pages
  // Of those, the leading positions whose K/V came from the prefix cache at admission (the
  // first blocks are shared, read-only). Still shipped with the rest.
  int64_t cached_tokens = 0;
  Status send_error;  // BindBlocks or first SendLayer error
  PrefillResult result;

  // --- cancellation (guarded by mu) ---
  std::mutex mu;
  bool cancel_requested = false;
  Status cancel_reason;  // CANCELLED or DEADLINE_EXCEEDED
  SendHandle send;       // set by Submit (StartSend)
  // The transfer's end (its StartSend callback) and the scheduler's hand-off meet here: the
  // second of the two finishes the job; `finished` makes FinishJob run exactly once.
  bool transfer_ended = false;
  Status transfer_status;
  bool handed_off = false;
  bool finished = false;

  int64_t prompt_tokens() const { return static_cast<int64_t>(prompt.size()); }
  // This worker's blocks whose pages are shipped: blocks[first_block, n) (owner only).
  std::span<const int32_t> sent_blocks() const {
    return std::span<const int32_t>(blocks).subspan(
        std::min<size_t>(blocks.size(), static_cast<size_t>(first_block)));
  }
  bool CancelRequested() {
    std::lock_guard<std::mutex> lock(mu);
    return cancel_requested;
  }
};

}  // namespace tandem

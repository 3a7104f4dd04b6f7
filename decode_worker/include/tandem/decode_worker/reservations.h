// ReservationTable: the decode worker's page reservations for prompts whose KV is on its way.
//
// A reservation holds the KV blocks of the prompt's positions (allocated all or nothing; the
// engine takes the blocks of generated tokens as they come, preempting younger requests when
// the pool runs out — see Generator), registers the prompt's blocks with the Transceiver
// (ExpectTransfer) under a lease, and hands the blocks to whoever attaches (the Decode call)
// once every layer has arrived. A request whose prompt + max_tokens exceed the whole pool is
// refused: it could not be sure to finish.
//
// Per-request state machine (each reservation ends in exactly one terminal state and its pages
// are released exactly once — by the table, or by the engine after the hand-off):
//
//   kReserved ──Attach──▶ kReceiving ──transfer OK──▶ kDecoding ──MarkDone──▶ kDone
//       │                     │
//       └─transfer OK─▶ kReady ──Attach──▶ kDecoding  (blocks handed to the attacher)
//
//   kReserved ── no sender started the transfer within the lease ──▶ kExpired   (pages back)
//   kReady ── no Decode within the lease after the KV arrived ─────▶ kExpired   (pages back)
//   kReserved / kReady ── Release / Cancel ─────────▶ kCancelled (transfer cancelled, pages back)
//   kReceiving ── Decode call went away ────────────▶ kCancelled (transfer cancelled, pages back)
//   kReserved / kReceiving ── transfer error ───────▶ kFailed    (pages back; the attacher gets
//                                                                 the transfer's status)
// The lease bounds silence, not work: once a prefill worker has started the transfer (its
// kStart arrived) the reservation is tied to that live sender, whose own deadline, cancellation
// or death ends it; a prompt that waits long in the prefill queue keeps its pages. In
// kDecoding and kDone the table holds no pages (the engine owns them). Pages of a request
// whose transfer is still active are released only after the Transceiver's `done` callback ran,
// so no I/O thread writes into pages that were handed out again. Ended reservations are kept
// as tombstones for `tombstone_ttl` so late Decode / Release calls get a precise answer.
//
// Prefix cache (optional, the engine's PrefixCache over the same KvCache): a Reserve that names
// the prompt's token ids takes the longest cached prefix of full blocks of them (at most
// prompt_tokens - 1 tokens, so at least one block always arrives) by reference, and registers
// only the remaining prompt blocks with the Transceiver (ReserveResult::first_block). Every
// page the table gives back goes through the cache (PrefixCache::Release): a matched block
// loses the reservation's reference and stays cached; nothing cached is ever written or
// evicted while a reservation holds it. Without a cache (or without token ids) every prompt
// block is expected.
//
// The transfer id given to the Transceiver (and expected from the prefill worker) is
// TransferId(request_id) (tandem/worker/kv_pages.h).
//
// Thread safety: all methods are thread-safe. ReadyCallbacks run outside the table's lock, on
// the caller's thread (Attach) or on the Transceiver's service thread; keep them short.
// A reaper thread enforces leases.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/engine/prefix_cache.h"
#include "tandem/kvtransfer/transceiver.h"

namespace tandem {

enum class ReservationState {
  kReserved,
  kReceiving,
  kReady,
  kDecoding,
  kDone,
  kExpired,
  kCancelled,
  kFailed
};
std::string_view ReservationStateName(ReservationState s);

struct ReservationTableOptions {
  // Longest prompt + max_tokens accepted (the model context); 0 = unlimited. Default: 0.
  int64_t max_context = 0;
  // Take the pages of prompt + max_tokens at Reserve (the engine then never needs more, and
  // nothing is preempted), instead of the prompt's only. Occupancy then follows from which
  // requests are open, not from how far they got. Default: false.
  bool reserve_max_tokens = false;
  // Lease used when a Reserve asks for none. Default: 10 s.
  std::chrono::milliseconds default_lease{10000};
  // How long ended reservations are remembered. Default: 60 s.
  std::chrono::milliseconds tombstone_ttl{60000};
  // Longest sleep of the reaper between lease checks. Default: 50 ms.
  std::chrono::milliseconds reap_interval{50};
};

struct ReserveResult {
  uint64_t transfer_id = 0;
  std::vector<int32_t> prompt_blocks;  // the blocks the prompt's KV goes to, in position order
  // prompt_blocks, then with ReservationTableOptions::reserve_max_tokens the blocks of the
  // generated tokens.
  std::vector<int32_t> all_blocks;
  // prompt_blocks[0, first_block) came from the prefix cache (their KV is here already); the
  // transfer fills prompt_blocks[first_block, n). Less than prompt_blocks.size().
  int32_t first_block = 0;
  uint64_t transfer_token = 0;  // the sender must present it (TransferTicket::token)
  Deadline lease_deadline{};
  std::chrono::system_clock::time_point lease_deadline_wall{};
};

class ReservationTable {
 public:
  // Runs exactly once per successful Attach. On OK the callee owns `blocks` (the prompt's
  // positions) and must release them exactly once (through the prefix cache when
  // there is one); the first `cached_blocks` of them are in the engine's own pages already: a
  // cached prefix (read-only, its K/V did not arrive with the transfer), or every block when
  // the transfer wrote the engine's device pages itself (cuda_ipc). On error `blocks` is empty.
  using ReadyCallback =
      std::function<void(const Status& status, std::vector<int32_t> blocks, int32_t cached_blocks)>;

  // `cache`, `transceiver`, `pages` (over `cache`, or its host mirror), `prefix_cache` (over
  // `cache`; nullptr = no cache) and `device_pages` (the cache's own device pages, which the
  // cuda_ipc transport writes; nullptr = none) must outlive the table.
  ReservationTable(KvCache& cache, Transceiver& transceiver, const PageAccessor& pages,
                   const ReservationTableOptions& options, PrefixCache* prefix_cache = nullptr,
                   const PageAccessor* device_pages = nullptr);
  // Stops the reaper, cancels active transfers, waits (bounded) for their callbacks and
  // releases every page the table still holds. Waiting attachers get UNAVAILABLE.
  ~ReservationTable();
  ReservationTable(const ReservationTable&) = delete;
  ReservationTable& operator=(const ReservationTable&) = delete;

  // INVALID_ARGUMENT naming the field; RESOURCE_EXHAUSTED when the pages cannot be had (nothing
  // taken); ALREADY_EXISTS for a live reservation with this id. lease <= 0 uses the default.
  // `prompt_token_ids`: empty (no cache lookup) or exactly prompt_tokens ids. `into_device`: the
  // transfer writes the device pages (cuda_ipc); FAILED_PRECONDITION without device_pages.
  StatusOr<ReserveResult> Reserve(const std::string& request_id, int32_t prompt_tokens,
                                  int32_t max_tokens, std::chrono::milliseconds lease,
                                  std::span<const int32_t> prompt_token_ids = {},
                                  bool into_device = false);

  // Attaches the Decode call: `ready` runs once the transfer ended (at once if it already
  // did). Errors (then `ready` never runs): NOT_FOUND (unknown id), INVALID_ARGUMENT (prompt
  // length differs from the reservation, or max_tokens exceeds it), ALREADY_EXISTS (already
  // attached), and for an ended reservation its status (the transfer's error,
  // DEADLINE_EXCEEDED for an expired lease, CANCELLED for a released one).
  // `token_ids` (the prompt, then tokens generated before a failover), when given for a
  // reservation made with prompt_token_ids, must be those ids: INVALID_ARGUMENT otherwise (the
  // cached blocks it took, and the blocks it caches when it ends, are keyed by them).
  Status Attach(const std::string& request_id, int32_t prompt_tokens, int32_t max_tokens,
                ReadyCallback ready, std::span<const int32_t> token_ids = {});
  // The attached Decode call went away before the hand-off: cancels the transfer; its
  // ReadyCallback then runs with CANCELLED. No-op in any other state.
  void CancelAttached(const std::string& request_id);
  // The engine finished a handed-off request (kDecoding → kDone). No-op otherwise.
  void MarkDone(const std::string& request_id);
  // Drops an unattached reservation (pages back). OK for one that already ended (idempotent),
  // NOT_FOUND for an unknown id, FAILED_PRECONDITION when a Decode call owns it.
  Status Release(const std::string& request_id);

  // Reservations holding pages or waiting for a transfer (not yet handed off or ended).
  int32_t num_live() const;
  // State of a known reservation (for tests and logs).
  StatusOr<ReservationState> state(const std::string& request_id) const;

 private:
  struct Record {
    std::string id;
    uint64_t transfer_id = 0;
    int32_t prompt_tokens = 0;
    int32_t max_tokens = 0;
    std::vector<int32_t> blocks;  // held by the table; empty once released or handed off
    int32_t cached_blocks = 0;    // leading blocks taken from the prefix cache
    bool on_device = false;       // the transfer writes the device pages (cuda_ipc)
    uint64_t ids_hash = 0;        // Hash64 of the prompt_token_ids given to Reserve; 0 = none
    std::chrono::milliseconds lease{0};
    Deadline
        lease_deadline{};  // kReserved: start-by (the Transceiver enforces it); kReady: attach-by
    ReservationState state = ReservationState::kReserved;
    bool transfer_active = false;  // Transceiver `done` not yet run
    Status status;                 // why it ended (terminal states)
    ReadyCallback waiter;          // set in kReceiving
    Deadline ended_at{};
  };
  using Clock = std::chrono::steady_clock;

  void OnTransferDone(const std::string& id, const Status& status);
  // Marks `r` terminal; releases its pages unless the transfer is still active.
  void EndLocked(Record& r, ReservationState state, Status status);
  void ReleasePagesLocked(Record& r);
  // Gives blocks back (through the prefix cache when there is one).
  void ReleaseBlocks(std::span<const int32_t> blocks);
  // Queues a Transceiver::Cancel for the reaper thread (it may do I/O).
  void CancelTransferLocked(uint64_t transfer_id);
  static bool IsTerminal(ReservationState s);
  void ReaperLoop();

  KvCache& cache_;
  Transceiver& transceiver_;
  const PageAccessor& pages_;
  const PageAccessor* const device_pages_;
  ReservationTableOptions options_;
  PrefixCache* const prefix_cache_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // reaper wake-up, and transfer callbacks for the destructor
  std::map<std::string, Record> records_;
  int32_t active_transfers_ = 0;
  std::vector<uint64_t> pending_cancels_;  // Transceiver::Cancel calls for the reaper
  bool stop_ = false;
  std::thread reaper_;
};

}  // namespace tandem

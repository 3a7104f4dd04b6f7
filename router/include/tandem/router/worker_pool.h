// The prefill and decode workers this router sends work to. Workers come from a static list
// (--prefill / --decode) and from the Registry service (Register, then Heartbeat at
// `heartbeat_interval`). A registered worker that misses `missed_heartbeats` heartbeats leaves
// the rotation; static workers stay. A worker that reports draining gets no new work.
// A worker that stays silent for `lost_after` (longer: a worker starved of CPU for a moment
// only leaves the rotation, and its streams go on) and has not registered again is "lost": a
// watchdog thread (one per pool, waking every heartbeat interval so that a silent pool is
// noticed too) calls the SetOnLost callback once, so the calls using it can move
// elsewhere (a frozen worker keeps its connections open and would otherwise hold its streams
// forever).
//
// Choice of a new request's pair (PickPair): the decode workers that may take it are those
// whose last reported free pages (minus what this router sent them since) cover it, with the
// fewest requests in flight from this router — or up to kAffinitySlack more for one whose
// prefix cache holds at least half of the prompt; when none has room, the one with the most
// free pages (its Reserve then refuses or the request waits there). Among those and every
// prefill worker, the pair with the lowest estimated time to first token (pair_cost.h: the
// prefill worker's queue and uncached tokens over its measured speed, plus the pages the
// decode worker lacks over the pair's measured bandwidth on the transport ChooseKvTransport
// picks for it), then fewer requests, then rendezvous order on the prompt's first page (every
// router replica breaks ties alike, and a shared prefix stays put).
// After a failure the request takes PickDecode then PickPrefill: a decode worker by room and
// load (round robin on ties), a prefill worker by fewest expected tokens to compute.
//
// Thread safety: every method may be called concurrently. Returned references keep a removed
// worker alive for the calls still using it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include <grpcpp/security/credentials.h>

#include "tandem/common/status.h"
#include "tandem/router/pair_cost.h"
#include "tandem/v1/internal.grpc.pb.h"

namespace tandem {

struct PrefillWorkerRef {
  std::string id;
  std::string address;
  // From the registration (empty for static workers): host id and KV transports.
  std::string host_id;
  std::vector<std::string> kv_transports;
  // Honours TransferTicket.first_block (registration; static workers: assumed, same release).
  bool sends_from_first_block = true;
  std::unique_ptr<v1::PrefillWorker::Stub> stub;
  // Prompt tokens sent and not yet answered.
  std::atomic<int64_t> queued_tokens{0};
  // Of those, the tokens it is expected to compute (not in its prefix cache, as far as this
  // router knows): the queue part of PickPrefill's cost.
  std::atomic<int64_t> queued_work{0};
};

// A worker whose prefix cache holds the first `tokens` tokens of a prompt.
struct CachedPrefix {
  std::string worker_id;
  int64_t tokens = 0;
};

// A prefill worker whose prefix cache likely holds the first `cached_tokens` of a prompt of
// `tokens` tokens (the router's record of what each prefill worker computed).
struct PrefillPreference {
  std::string worker_id;
  int64_t cached_tokens = 0;
  int64_t tokens = 0;
};

struct DecodeWorkerRef {
  std::string id;
  std::string address;
  std::string host_id;
  std::vector<std::string> kv_transports;
  std::unique_ptr<v1::DecodeWorker::Stub> stub;
  int32_t page_size = 16;
  // From the registered layout (0: unknown, static workers): bytes of one block's pages over
  // every layer, and the layers.
  int64_t block_bytes = 0;
  int32_t num_layers = 0;
  // Requests reserved or decoding, sent by this router.
  std::atomic<int32_t> active{0};
  // Pages this router asked for since the last heartbeat (estimate; reset by each report).
  std::atomic<int32_t> pages_since_report{0};
};

// What PickPair weighs for one request.
struct PairQuery {
  // The sequence whose KV is computed and shipped (prompt, then tokens generated before a
  // failover); its keys are looked up in each worker's reported prefix cache.
  std::span<const int32_t> tokens;
  // What the decode reservation holds.
  int64_t reserved_tokens = 0;
  // The router's own records (PrefixAffinity) of who computed or decoded this prefix; a worker
  // is credited with the deeper of its record and its report.
  CachedPrefix recorded_prefill;
  CachedPrefix recorded_decode;
  // The decode worker leaves the blocks it holds out of the transfer (ticket.first_block).
  bool ship_only_missing = false;
  // The router's --kv-transport.
  std::string kv_transport = "auto";
};

struct PairChoice {
  std::shared_ptr<PrefillWorkerRef> prefill;  // null: no prefill worker could serve the pair
  std::shared_ptr<DecodeWorkerRef> decode;    // null: no decode worker in rotation
  std::string transport;                      // of the pair (empty without a prefill worker)
  int64_t prefill_cached_tokens = 0;          // the prefill worker likely holds these
  int64_t decode_cached_tokens = 0;
  TtftEstimate estimate;
};

struct WorkerPoolOptions {
  std::vector<std::string> prefill_addresses;  // static workers
  std::vector<std::string> decode_addresses;
  // Asked of registered workers. Default: 1 s.
  std::chrono::milliseconds heartbeat_interval{1000};
  // Heartbeats missed before a registered worker leaves the rotation. Default: 3.
  int32_t missed_heartbeats = 3;
  // Silence after which a registered worker is lost (its calls move). Default: 10 s.
  std::chrono::milliseconds lost_after{10000};
  // Of the channels to the workers (tandem/rpc/tls_credentials.h). Default (null): plaintext.
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials;
};

class WorkerPool {
 public:
  explicit WorkerPool(WorkerPoolOptions options);
  ~WorkerPool();

  // nullptr when no worker of that role is in rotation. `tokens` is what the request's
  // reservation holds (its prompt; decode workers take generated tokens' pages on demand);
  // `exclude` are workers that already refused or failed it.
  // Prefill: the worker with the least expected work — its queued_work plus the prompt's tokens
  // it would compute (all of them, or without `preference.cached_tokens` on the worker that
  // likely holds them), so a prompt goes where its prefix is cached unless that worker is
  // busier by more than the cached part; ties in round-robin order.
  std::shared_ptr<PrefillWorkerRef> PickPrefill(
      const std::vector<const PrefillWorkerRef*>& exclude = {},
      const PrefillPreference& preference = {});
  // `preferred` (a decode worker id, e.g. the one holding the prompt's prefix) is taken when it
  // is in rotation, not excluded, has room for `tokens` and runs at most kAffinitySlack more
  // requests from this router than the worker the load alone would pick.
  static constexpr int32_t kAffinitySlack = 2;
  // A new request's (prefill, decode) pair by estimated time to first token (see the top of
  // this file). The decode worker's count of pages asked since its report grows as PickDecode's.
  PairChoice PickPair(const PairQuery& query);
  std::shared_ptr<DecodeWorkerRef> PickDecode(
      int64_t tokens, const std::vector<const DecodeWorkerRef*>& exclude = {},
      const std::string& preferred = "");
  // Whether `worker` is still in rotation (registered, heartbeating, not draining).
  bool InRotation(const PrefillWorkerRef& worker);
  // True when some decode worker in rotation has a KV pool of at least `tokens` tokens (or
  // has not reported its pool yet).
  bool AnyDecodeCouldHold(int64_t tokens);
  // Tokens the largest KV pool among decode workers in rotation holds; -1 when one has not
  // reported its pool (or there is none).
  int64_t LargestDecodePoolTokens();
  // The worker in rotation whose prefix cache, as it reported it in its heartbeats, holds the
  // longest prefix of `tokens` (whole pages, from the first), and how many tokens that covers;
  // tokens 0 (and no id) when none holds any. This is the workers' own account, so it knows of
  // evictions, survives a router restart and is the same in every router the workers report to.
  CachedPrefix DeepestCachedPrefill(std::span<const int32_t> tokens);
  CachedPrefix DeepestCachedDecode(std::span<const int32_t> tokens);
  // (worker id, prefix-cache pages it reported) of every worker with a prefix cache.
  std::vector<std::pair<std::string, int64_t>> reported_cached_pages();
  // Keys kept per worker at most (a report beyond is dropped and logged).
  static constexpr size_t kMaxCachedKeysPerWorker = size_t{1} << 20;
  // True when every prefill worker known honours TransferTicket.first_block, so a Reserve may
  // let the decode worker leave its cached blocks out of the transfer.
  bool AllPrefillSendFromFirstBlock();

  // Speeds measured from Prefill replies (GenerateCall reports them); PickPair reads them.
  TransferRates& rates() { return rates_; }

  // Called from the watchdog thread with each worker (a PrefillWorkerRef or DecodeWorkerRef)
  // that left the rotation for missed heartbeats, once per worker. Set before workers register;
  // the callback must not call back into the pool's Register/Heartbeat under its own locks.
  void SetOnLost(std::function<void(const void* worker)> on_lost);

  // Registry. Register: INVALID_ARGUMENT naming the field for an incomplete request. A worker
  // registering again (same id, or the address of a static worker) replaces its entry.
  Status Register(const v1::RegisterRequest& request);
  // false when the worker is unknown (it must register again).
  bool Heartbeat(const v1::HeartbeatRequest& request);

  int32_t num_prefill();
  // (worker id, queued prompt tokens) of every prefill worker known, draining ones included.
  std::vector<std::pair<std::string, int64_t>> prefill_queued_tokens();
  int32_t num_decode();
  std::chrono::milliseconds heartbeat_interval() const { return options_.heartbeat_interval; }

 private:
  template <typename Ref>
  struct Entry {
    std::shared_ptr<Ref> ref;
    bool is_static = false;
    bool draining = false;
    std::chrono::steady_clock::time_point last_seen;
    // Last report (decode: pages; prefill: unused). -1 = none yet.
    int32_t pages_used = -1;
    int32_t pages_total = -1;
    // Its prefix cache (registration: key root and page size; heartbeats: the keys). Root 0:
    // none.
    uint64_t prefix_root = 0;
    int32_t prefix_page_size = 0;
    std::unordered_set<uint64_t> cached;
  };
  template <typename Ref>
  static void ApplyCacheReport(Entry<Ref>& e, const v1::HeartbeatRequest& r);
  // Tokens of `tokens` each entry's reported prefix cache holds (whole pages from the first),
  // in entry order.
  template <typename Ref>
  static std::vector<int64_t> CachedLocked(const std::vector<Entry<Ref>>& entries,
                                           std::span<const int32_t> tokens);
  template <typename Ref>
  static CachedPrefix DeepestLocked(const std::vector<Entry<Ref>>& entries,
                                    std::span<const int32_t> tokens);

  void ExpireLocked(std::chrono::steady_clock::time_point now);
  void Watch();

  const WorkerPoolOptions options_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::function<void(const void*)> on_lost_;  // guarded by mu_
  // Out of rotation for missed heartbeats, not yet lost; dropped when the worker registers
  // again. Guarded by mu_.
  struct Silent {
    std::shared_ptr<void> ref;
    std::string id;
    std::chrono::steady_clock::time_point last_seen;
  };
  std::vector<Silent> silent_;
  std::vector<Entry<PrefillWorkerRef>> prefill_;
  std::vector<Entry<DecodeWorkerRef>> decode_;
  TransferRates rates_;
  uint64_t prefill_rr_ = 0;
  uint64_t decode_rr_ = 0;
  std::thread watchdog_;  // last: started once every member exists
};

}  // namespace tandem

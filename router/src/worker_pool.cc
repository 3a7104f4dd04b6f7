#include "tandem/router/worker_pool.h"

#include <algorithm>
#include <limits>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "tandem/common/hash.h"
#include "tandem/common/kv_geometry.h"
#include "tandem/common/logging.h"
#include "tandem/router/kv_transport_choice.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;

std::shared_ptr<grpc::Channel> Channel(const std::string& address,
                                       const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  return grpc::CreateChannel(address, creds ? creds : grpc::InsecureChannelCredentials());
}

std::shared_ptr<PrefillWorkerRef> NewPrefill(
    const std::string& id, const std::string& address,
    const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  auto w = std::make_shared<PrefillWorkerRef>();
  w->id = id;
  w->address = address;
  w->stub = v1::PrefillWorker::NewStub(Channel(address, creds));
  return w;
}

std::shared_ptr<DecodeWorkerRef> NewDecode(const std::string& id, const std::string& address,
                                           int32_t page_size,
                                           const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  auto w = std::make_shared<DecodeWorkerRef>();
  w->id = id;
  w->address = address;
  w->page_size = page_size > 0 ? page_size : 16;
  w->stub = v1::DecodeWorker::NewStub(Channel(address, creds));
  return w;
}

}  // namespace

WorkerPool::WorkerPool(WorkerPoolOptions options) : options_(std::move(options)) {
  const auto now = Clock::now();
  for (const auto& a : options_.prefill_addresses) {
    prefill_.push_back({NewPrefill(a, a, options_.channel_credentials), true, false, now});
  }
  for (const auto& a : options_.decode_addresses) {
    decode_.push_back({NewDecode(a, a, 16, options_.channel_credentials), true, false, now});
  }
  watchdog_ = std::thread([this] { Watch(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  watchdog_.join();
}

void WorkerPool::SetOnLost(std::function<void(const void* worker)> on_lost) {
  std::lock_guard<std::mutex> lock(mu_);
  on_lost_ = std::move(on_lost);
}

void WorkerPool::Watch() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, options_.heartbeat_interval);
    if (stop_) break;
    const auto now = Clock::now();
    ExpireLocked(now);
    std::vector<std::shared_ptr<void>> lost;
    std::erase_if(silent_, [&](const Silent& w) {
      if (now - w.last_seen <= options_.lost_after) return false;
      TLOG_WARN("router: worker {} silent for {} ms; its requests move to other workers", w.id,
                std::chrono::duration_cast<std::chrono::milliseconds>(now - w.last_seen).count());
      lost.push_back(w.ref);
      return true;
    });
    if (lost.empty()) continue;
    auto on_lost = on_lost_;
    lock.unlock();
    if (on_lost) {
      for (const auto& w : lost) on_lost(w.get());
    }
    lost.clear();
    lock.lock();
  }
}

void WorkerPool::ExpireLocked(Clock::time_point now) {
  const auto limit = options_.heartbeat_interval * options_.missed_heartbeats;
  auto expired = [&](const auto& e) {
    if (e.is_static || now - e.last_seen <= limit) return false;
    TLOG_WARN("router: worker {} ({}) missed {} heartbeats; out of rotation", e.ref->id,
              e.ref->address, options_.missed_heartbeats);
    silent_.push_back({e.ref, e.ref->id, e.last_seen});
    return true;
  };
  std::erase_if(prefill_, expired);
  std::erase_if(decode_, expired);
}

bool WorkerPool::AllPrefillSendFromFirstBlock() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::all_of(prefill_.begin(), prefill_.end(),
                     [](const auto& e) { return e.ref->sends_from_first_block; });
}

std::shared_ptr<PrefillWorkerRef> WorkerPool::PickPrefill(
    const std::vector<const PrefillWorkerRef*>& exclude, const PrefillPreference& preference) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(Clock::now());
  const size_t n = prefill_.size();
  if (n == 0) return nullptr;
  const size_t start = static_cast<size_t>(prefill_rr_++ % n);
  std::shared_ptr<PrefillWorkerRef> best;
  int64_t best_load = std::numeric_limits<int64_t>::max();
  for (size_t k = 0; k < n; ++k) {
    const auto& e = prefill_[(start + k) % n];
    if (e.draining) continue;
    if (std::find(exclude.begin(), exclude.end(), e.ref.get()) != exclude.end()) continue;
    const int64_t cached = e.ref->id == preference.worker_id ? preference.cached_tokens : 0;
    const int64_t load = e.ref->queued_work.load() + preference.tokens - cached;
    if (load < best_load) {
      best_load = load;
      best = e.ref;
    }
  }
  return best;
}

std::shared_ptr<DecodeWorkerRef> WorkerPool::PickDecode(
    int64_t tokens, const std::vector<const DecodeWorkerRef*>& exclude,
    const std::string& preferred) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(Clock::now());
  const size_t n = decode_.size();
  if (n == 0) return nullptr;
  const size_t start = static_cast<size_t>(decode_rr_++ % n);
  struct Score {
    bool fits;
    int32_t active;
    int64_t free;
  };
  // Better: fits, then fewer active, then more free pages.
  auto better = [](const Score& a, const Score& b) {
    if (a.fits != b.fits) return a.fits;
    if (a.fits && a.active != b.active) return a.active < b.active;
    return a.free > b.free;
  };
  std::shared_ptr<DecodeWorkerRef> best, pref;
  Score best_score{}, pref_score{};
  for (size_t k = 0; k < n; ++k) {
    const auto& e = decode_[(start + k) % n];
    if (e.draining) continue;
    if (std::find(exclude.begin(), exclude.end(), e.ref.get()) != exclude.end()) continue;
    const int64_t need = (tokens + e.ref->page_size - 1) / e.ref->page_size;
    // No report yet (static worker without heartbeats): assume room, rank by load only.
    const int64_t free = e.pages_total < 0
                             ? std::numeric_limits<int32_t>::max()
                             : int64_t{e.pages_total} - e.pages_used - e.ref->pages_since_report;
    const Score s{free >= need, e.ref->active.load(), free};
    if (!preferred.empty() && e.ref->id == preferred) {
      pref = e.ref;
      pref_score = s;
    }
    if (!best || better(s, best_score)) {
      best = e.ref;
      best_score = s;
    }
  }
  if (pref && pref != best && pref_score.fits &&
      pref_score.active <= best_score.active + kAffinitySlack) {
    best = pref;
  }
  if (best) {
    best->pages_since_report.fetch_add(
        static_cast<int32_t>((tokens + best->page_size - 1) / best->page_size));
  }
  return best;
}

PairChoice WorkerPool::PickPair(const PairQuery& q) {
  const int64_t n_tokens = static_cast<int64_t>(q.tokens.size());
  // Rendezvous order on the first page: the same for every router, and a prefix stays put.
  const uint64_t first_page = Hash64(
      q.tokens.data(), sizeof(int32_t) * static_cast<size_t>(std::min<int64_t>(n_tokens, 16)));
  auto rank = [&](const std::string& id) { return Hash64(id, first_page); };
  auto credited = [](int64_t reported, const std::string& id, const CachedPrefix& recorded) {
    return id == recorded.worker_id ? std::max(reported, recorded.tokens) : reported;
  };

  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(Clock::now());
  PairChoice out;

  struct Decode {
    const Entry<DecodeWorkerRef>* e;
    bool fits;
    int32_t active;
    int64_t free;
    int64_t cached;
  };
  std::vector<Decode> decodes;
  const std::vector<int64_t> decode_cached = CachedLocked(decode_, q.tokens);
  for (size_t i = 0; i < decode_.size(); ++i) {
    const auto& e = decode_[i];
    if (e.draining) continue;
    const int64_t need = (q.reserved_tokens + e.ref->page_size - 1) / e.ref->page_size;
    // No report yet (static worker without heartbeats): assume room, rank by load only.
    const int64_t free = e.pages_total < 0
                             ? std::numeric_limits<int32_t>::max()
                             : int64_t{e.pages_total} - e.pages_used - e.ref->pages_since_report;
    decodes.push_back({&e, free >= need, e.ref->active.load(), free,
                       credited(decode_cached[i], e.ref->id, q.recorded_decode)});
  }
  if (decodes.empty()) return out;
  int32_t least = std::numeric_limits<int32_t>::max();
  for (const auto& d : decodes) {
    if (d.fits) least = std::min(least, d.active);
  }
  std::vector<const Decode*> eligible;
  if (least == std::numeric_limits<int32_t>::max()) {  // none has room: the most free pages
    const Decode* most = &decodes[0];
    for (const auto& d : decodes) {
      if (d.free > most->free ||
          (d.free == most->free && rank(d.e->ref->id) < rank(most->e->ref->id))) {
        most = &d;
      }
    }
    eligible.push_back(most);
  } else {
    for (const auto& d : decodes) {
      const bool holds_most = 2 * d.cached >= n_tokens && d.cached > 0;
      if (d.fits && (d.active <= least || (holds_most && d.active <= least + kAffinitySlack))) {
        eligible.push_back(&d);
      }
    }
  }

  const std::vector<int64_t> prefill_cached = CachedLocked(prefill_, q.tokens);
  struct Best {
    const Decode* d = nullptr;
    const Entry<PrefillWorkerRef>* p = nullptr;
    std::string transport;
    int64_t p_cached = 0;
    TtftEstimate estimate;
  } best;
  auto better = [&](const Best& a, const Best& b) {  // a better than b
    if (a.estimate.total() != b.estimate.total()) return a.estimate.total() < b.estimate.total();
    if (a.d->active != b.d->active) return a.d->active < b.d->active;
    // Not free pages (each router's count of pages asked since a report differs): replicas
    // must break ties alike.
    if (a.d != b.d) return rank(a.d->e->ref->id) < rank(b.d->e->ref->id);
    return rank(a.p->ref->id) < rank(b.p->ref->id);
  };
  for (const Decode* d : eligible) {
    const DecodeWorkerRef& dw = *d->e->ref;
    const int64_t pages = (n_tokens + dw.page_size - 1) / dw.page_size;
    const int64_t held = q.ship_only_missing ? d->cached / dw.page_size : 0;
    const int64_t ship_bytes = std::max<int64_t>(pages - held, 0) * dw.block_bytes;
    for (size_t i = 0; i < prefill_.size(); ++i) {
      const auto& p = prefill_[i];
      if (p.draining) continue;
      auto transport = ChooseKvTransport(q.kv_transport, p.ref->host_id, p.ref->kv_transports,
                                         dw.host_id, dw.kv_transports);
      if (!transport.ok()) continue;
      Best c{d, &p, *transport, credited(prefill_cached[i], p.ref->id, q.recorded_prefill), {}};
      TtftInputs in;
      in.queued_tokens = p.ref->queued_work.load();
      in.compute_tokens = std::max<int64_t>(n_tokens - c.p_cached, 1);
      in.tokens_per_second = rates_.TokensPerSecond(p.ref->id);
      in.ship_bytes = ship_bytes;
      in.bytes_per_second = rates_.BytesPerSecond(p.ref->id, dw.id, c.transport);
      in.num_layers = dw.num_layers;
      c.estimate = EstimateTtft(in);
      if (best.d == nullptr || better(c, best)) best = std::move(c);
    }
  }
  if (best.d == nullptr) {  // no prefill worker shares a transport with any: decode by load
    const Decode* d = eligible[0];
    for (const Decode* e : eligible) {
      if (e->active < d->active || (e->active == d->active && e->free > d->free)) d = e;
    }
    out.decode = d->e->ref;
    out.decode_cached_tokens = d->cached;
  } else {
    out.decode = best.d->e->ref;
    out.decode_cached_tokens = best.d->cached;
    out.prefill = best.p->ref;
    out.prefill_cached_tokens = best.p_cached;
    out.transport = best.transport;
    out.estimate = best.estimate;
  }
  out.decode->pages_since_report.fetch_add(static_cast<int32_t>(
      (q.reserved_tokens + out.decode->page_size - 1) / out.decode->page_size));
  return out;
}

bool WorkerPool::InRotation(const PrefillWorkerRef& worker) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(Clock::now());
  return std::any_of(prefill_.begin(), prefill_.end(),
                     [&](const auto& e) { return e.ref.get() == &worker && !e.draining; });
}

bool WorkerPool::AnyDecodeCouldHold(int64_t tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& e : decode_) {
    if (e.draining) continue;
    if (e.pages_total < 0) return true;
    if ((tokens + e.ref->page_size - 1) / e.ref->page_size <= e.pages_total) return true;
  }
  return false;
}

int64_t WorkerPool::LargestDecodePoolTokens() {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t largest = -1;
  for (const auto& e : decode_) {
    if (e.draining) continue;
    if (e.pages_total < 0) return -1;
    largest = std::max(largest, int64_t{e.pages_total} * e.ref->page_size);
  }
  return largest;
}

Status WorkerPool::Register(const v1::RegisterRequest& r) {
  if (r.worker_id().empty()) return InvalidArgumentError("worker_id: must not be empty");
  if (r.address().empty()) return InvalidArgumentError("address: must not be empty");
  if (r.role() != v1::WORKER_ROLE_PREFILL && r.role() != v1::WORKER_ROLE_DECODE) {
    return InvalidArgumentError("role: must be WORKER_ROLE_PREFILL or WORKER_ROLE_DECODE");
  }
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = Clock::now();
  // Back before it was lost (a restart is lost at once: its connections reset).
  std::erase_if(silent_, [&](const Silent& w) { return w.id == r.worker_id(); });
  auto same = [&](const auto& e) {
    return e.ref->id == r.worker_id() || e.ref->address == r.address();
  };
  if (r.role() == v1::WORKER_ROLE_PREFILL) {
    auto it = std::find_if(prefill_.begin(), prefill_.end(), same);
    const bool is_static = it != prefill_.end() && it->is_static;
    if (it != prefill_.end()) prefill_.erase(it);
    auto ref = NewPrefill(r.worker_id(), r.address(), options_.channel_credentials);
    ref->host_id = r.host_id();
    ref->kv_transports.assign(r.kv_transports().begin(), r.kv_transports().end());
    ref->sends_from_first_block = r.sends_from_first_block();
    prefill_.push_back({std::move(ref), is_static, false, now});
    prefill_.back().prefix_root = r.prefix_root_key();
    prefill_.back().prefix_page_size = r.layout().page_size();
  } else {
    auto it = std::find_if(decode_.begin(), decode_.end(), same);
    const bool is_static = it != decode_.end() && it->is_static;
    if (it != decode_.end()) decode_.erase(it);
    auto ref =
        NewDecode(r.worker_id(), r.address(), r.layout().page_size(), options_.channel_credentials);
    ref->host_id = r.host_id();
    ref->kv_transports.assign(r.kv_transports().begin(), r.kv_transports().end());
    if (auto dtype = ParseDType(r.layout().dtype()); dtype.ok()) {
      const KvGeometry g{r.layout().num_layers(), r.layout().num_kv_heads(), r.layout().head_dim(),
                         r.layout().page_size(), *dtype};
      ref->block_bytes = static_cast<int64_t>(g.BlockBytes());
      ref->num_layers = g.num_layers;
    }
    decode_.push_back({std::move(ref), is_static, false, now});
    decode_.back().prefix_root = r.prefix_root_key();
    decode_.back().prefix_page_size = r.layout().page_size();
  }
  TLOG_INFO("router: {} worker {} registered at {} ({})",
            r.role() == v1::WORKER_ROLE_PREFILL ? "prefill" : "decode", r.worker_id(), r.address(),
            r.device().empty() ? "device not stated" : r.device());
  return Status::Ok();
}

bool WorkerPool::Heartbeat(const v1::HeartbeatRequest& r) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = Clock::now();
  ExpireLocked(now);
  for (auto& e : prefill_) {
    if (e.ref->id != r.worker_id()) continue;
    e.last_seen = now;
    e.draining = r.draining();
    ApplyCacheReport(e, r);
    return true;
  }
  for (auto& e : decode_) {
    if (e.ref->id != r.worker_id()) continue;
    e.last_seen = now;
    e.draining = r.draining();
    e.pages_used = r.kv_pages_used();
    e.pages_total = r.kv_pages_total();
    e.ref->pages_since_report = 0;
    ApplyCacheReport(e, r);
    return true;
  }
  return false;
}

template <typename Ref>
void WorkerPool::ApplyCacheReport(Entry<Ref>& e, const v1::HeartbeatRequest& r) {
  if (r.cached_blocks_full()) e.cached.clear();
  for (uint64_t key : r.cached_blocks_evicted()) e.cached.erase(key);
  for (uint64_t key : r.cached_blocks_added()) {
    if (e.cached.size() >= kMaxCachedKeysPerWorker) {
      TLOG_WARN("router: worker {} reports more than {} cached blocks; the rest is not indexed",
                e.ref->id, kMaxCachedKeysPerWorker);
      break;
    }
    e.cached.insert(key);
  }
}

template <typename Ref>
std::vector<int64_t> WorkerPool::CachedLocked(const std::vector<Entry<Ref>>& entries,
                                              std::span<const int32_t> tokens) {
  std::vector<int64_t> out(entries.size(), 0);
  // Workers of one model and layout share their keys: computed once per (root, page size).
  std::vector<std::pair<std::pair<uint64_t, int32_t>, std::vector<uint64_t>>> chains;
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    if (e.draining || e.prefix_root == 0 || e.prefix_page_size <= 0 || e.cached.empty()) continue;
    const std::pair<uint64_t, int32_t> id{e.prefix_root, e.prefix_page_size};
    auto it =
        std::find_if(chains.begin(), chains.end(), [&](const auto& c) { return c.first == id; });
    if (it == chains.end()) {
      chains.emplace_back(id, BlockHashChain(tokens, static_cast<size_t>(id.second), id.first));
      it = chains.end() - 1;
    }
    // Usable only from the first page on, as the worker's own lookup walks it.
    int64_t n = 0;
    while (n < static_cast<int64_t>(it->second.size()) && e.cached.contains(it->second[n])) ++n;
    out[i] = n * e.prefix_page_size;
  }
  return out;
}

template <typename Ref>
CachedPrefix WorkerPool::DeepestLocked(const std::vector<Entry<Ref>>& entries,
                                       std::span<const int32_t> tokens) {
  CachedPrefix best;
  const std::vector<int64_t> cached = CachedLocked(entries, tokens);
  for (size_t i = 0; i < entries.size(); ++i) {
    if (cached[i] > best.tokens) best = {entries[i].ref->id, cached[i]};
  }
  return best;
}

CachedPrefix WorkerPool::DeepestCachedPrefill(std::span<const int32_t> tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(Clock::now());
  return DeepestLocked(prefill_, tokens);
}

CachedPrefix WorkerPool::DeepestCachedDecode(std::span<const int32_t> tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(Clock::now());
  return DeepestLocked(decode_, tokens);
}

std::vector<std::pair<std::string, int64_t>> WorkerPool::reported_cached_pages() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<std::string, int64_t>> out;
  auto add = [&](const auto& entries) {
    for (const auto& e : entries) {
      if (e.prefix_root != 0) out.emplace_back(e.ref->id, static_cast<int64_t>(e.cached.size()));
    }
  };
  add(prefill_);
  add(decode_);
  return out;
}

int32_t WorkerPool::num_prefill() {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(Clock::now());
  return static_cast<int32_t>(
      std::count_if(prefill_.begin(), prefill_.end(), [](const auto& e) { return !e.draining; }));
}

std::vector<std::pair<std::string, int64_t>> WorkerPool::prefill_queued_tokens() {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(Clock::now());
  std::vector<std::pair<std::string, int64_t>> out;
  for (const auto& e : prefill_) out.emplace_back(e.ref->id, e.ref->queued_tokens.load());
  return out;
}

int32_t WorkerPool::num_decode() {
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(Clock::now());
  return static_cast<int32_t>(
      std::count_if(decode_.begin(), decode_.end(), [](const auto& e) { return !e.draining; }));
}

}  // namespace tandem

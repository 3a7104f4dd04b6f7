// WorkerRegistration (tandem/rpc/worker_registration.h) against two in-process Registry gRPC
// servers on loopback that keep an index of the worker's cache the way the router does: a
// router that is down does not keep the worker from registering with the other one, nor a stuck
// router from heartbeating it; a router that comes up later, or restarts, gets the worker and a
// full cache report while the other one keeps receiving deltas; the drain reaches both. Every
// wait ends when what it waits for happens (the guard only bounds a failing run).
#include "tandem/rpc/worker_registration.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "tandem/v1/internal.grpc.pb.h"

namespace tandem {
namespace {

constexpr auto kGuard = std::chrono::minutes(5);  // hang guard only

// A router's Registry as the worker sees it: registrations, heartbeats, the cache index
// (WorkerPool::ApplyCacheReport's rules). Heartbeats can be made to hang (`Stall`).
class FakeRegistry final : public v1::Registry::Service {
 public:
  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest* req,
                        v1::RegisterResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu_);
    known_.insert(req->worker_id());
    ++registrations_;
    resp->set_heartbeat_interval_ms(50);
    cv_.notify_all();
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    std::unique_lock<std::mutex> lock(mu_);
    while (stalled_ && !ctx->IsCancelled()) cv_.wait_for(lock, std::chrono::milliseconds(10));
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    if (failing_ > 0) {
      // Refused before anything is applied (a router that is loading answers so).
      --failing_;
      ++failed_;
      cv_.notify_all();
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "router is loading");
    }
    const bool known = known_.count(req->worker_id()) > 0;
    resp->set_known(known);
    if (known) {
      ++heartbeats_;
      if (req->cached_blocks_full()) {
        ++full_reports_;
        index_.clear();
      }
      for (uint64_t k : req->cached_blocks_evicted()) index_.erase(k);
      for (uint64_t k : req->cached_blocks_added()) index_.insert(k);
      if (req->draining()) draining_ = true;
    }
    cv_.notify_all();
    return grpc::Status::OK;
  }

  // Blocks until `pred()` (under the lock) or the guard; returns pred().
  bool WaitFor(const std::function<bool()>& pred) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kGuard, pred);
  }
  void Stall(bool on) {
    std::lock_guard<std::mutex> lock(mu_);
    stalled_ = on;
    cv_.notify_all();
  }
  // The next `n` heartbeats fail with UNAVAILABLE, nothing applied.
  void Fail(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    failing_ = n;
  }
  int heartbeats() {
    std::lock_guard<std::mutex> lock(mu_);
    return heartbeats_;
  }

  // Read under WaitFor's lock (or after the server stopped).
  std::set<std::string> known_;
  std::set<uint64_t> index_;
  int registrations_ = 0;
  int heartbeats_ = 0;
  int full_reports_ = 0;
  bool draining_ = false;
  int failed_ = 0;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stalled_ = false;
  int failing_ = 0;
};

// One router process: a FakeRegistry on a fixed loopback port, stopped and started again
// (a restart forgets everything, like a router's).
class FakeRouter {
 public:
  FakeRouter() {
    // Learn a free port once; the router always comes back on it.
    Start(0);
    Stop();
  }
  ~FakeRouter() { Stop(); }
  void Start(int port = -1) {
    registry_ = std::make_unique<FakeRegistry>();
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:" + std::to_string(port < 0 ? port_ : port),
                             grpc::InsecureServerCredentials(), port < 0 ? nullptr : &port_);
    builder.RegisterService(registry_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port_, 0);
  }
  void Stop() {
    if (!server_) return;
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
    server_.reset();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  FakeRegistry& registry() { return *registry_; }

 private:
  int port_ = 0;
  std::unique_ptr<FakeRegistry> registry_;
  std::unique_ptr<grpc::Server> server_;
};

// A prefix cache's journal (PrefixCache::TakeChanges's contract) that the test edits.
class FakeCache {
 public:
  void Add(uint64_t k) {
    std::lock_guard<std::mutex> lock(mu_);
    keys_.insert(k);
    journal_[k] = true;
  }
  void Evict(uint64_t k) {
    std::lock_guard<std::mutex> lock(mu_);
    keys_.erase(k);
    journal_[k] = false;
  }
  // The next Take reports the whole cache by itself (as after the journal overflowed).
  void Overflow() {
    std::lock_guard<std::mutex> lock(mu_);
    overflow_ = true;
  }
  WorkerCacheReport Take(bool full) {
    std::lock_guard<std::mutex> lock(mu_);
    ++takes_;
    full = full || overflow_;
    overflow_ = false;
    WorkerCacheReport r;
    r.full = full;
    if (full) {
      r.added.assign(keys_.begin(), keys_.end());
    } else {
      for (const auto& [k, cached] : journal_) (cached ? r.added : r.evicted).push_back(k);
    }
    journal_.clear();
    return r;
  }
  std::set<uint64_t> keys() {
    std::lock_guard<std::mutex> lock(mu_);
    return keys_;
  }
  int takes() {
    std::lock_guard<std::mutex> lock(mu_);
    return takes_;
  }

 private:
  std::mutex mu_;
  std::set<uint64_t> keys_;
  std::map<uint64_t, bool> journal_;
  int takes_ = 0;
  bool overflow_ = false;
};

WorkerRegistrationOptions Options(const std::vector<std::string>& routers, FakeCache* cache) {
  WorkerRegistrationOptions o;
  o.routers = routers;
  o.announce.set_worker_id("decode-test");
  o.announce.set_role(v1::WORKER_ROLE_DECODE);
  o.announce.set_address("127.0.0.1:1");
  o.retry_interval = std::chrono::milliseconds(50);
  // Long: a stalled router's heartbeat stays in flight until the test releases it.
  o.rpc_timeout = std::chrono::milliseconds(std::chrono::minutes(10));
  o.cache_report = [cache](bool full) { return cache->Take(full); };
  return o;
}

WorkerLoad NoLoad() { return {}; }

// Waits until the router's index equals the cache's keys.
bool Mirrors(FakeRouter& router, FakeCache& cache) {
  const std::set<uint64_t> want = cache.keys();
  return router.registry().WaitFor([&] { return router.registry().index_ == want; });
}

// Waits until the router has answered at least `n` heartbeats of a known worker.
bool HeartbeatsReach(FakeRouter& router, int n) {
  return router.registry().WaitFor([&] { return router.registry().heartbeats_ >= n; });
}

TEST(ParseRouterListTest, SplitsTrimsAndRefusesEmptyOrRepeatedEntries) {
  auto one = ParseRouterList("10.0.0.1:50051");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(*one, std::vector<std::string>{"10.0.0.1:50051"});
  auto two = ParseRouterList("10.0.0.1:50051, router-1.tandem:50051");
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(*two, (std::vector<std::string>{"10.0.0.1:50051", "router-1.tandem:50051"}));
  for (const char* bad : {"", "a:1,", ",a:1", "a:1,,b:2", "a:1,a:1"}) {
    auto st = ParseRouterList(bad);
    ASSERT_FALSE(st.ok()) << bad;
    EXPECT_EQ(st.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.status().message().find("--router"), std::string::npos) << st.status().ToString();
  }
}

TEST(WorkerRegistrationTest, ARouterThatIsDownDelaysNoneOfTheOthersAndIsJoinedWhenItComesUp) {
  FakeRouter a, b;
  a.Start();  // b is down
  FakeCache cache;
  cache.Add(1);
  cache.Add(2);
  WorkerRegistration reg(Options({a.address(), b.address()}, &cache), NoLoad);
  ASSERT_TRUE(reg.WaitRegistered(kGuard).ok());
  EXPECT_TRUE(reg.registered_with(0));
  EXPECT_FALSE(reg.registered_with(1));
  // a gets its heartbeats (and the cache) while every attempt at b fails.
  EXPECT_TRUE(Mirrors(a, cache));
  ASSERT_TRUE(HeartbeatsReach(a, 5));
  EXPECT_FALSE(reg.registered_with(1));

  cache.Add(3);
  b.Start();
  ASSERT_TRUE(b.registry().WaitFor([&] { return b.registry().known_.count("decode-test") > 0; }));
  EXPECT_TRUE(Mirrors(b, cache)) << "b's first report is the whole cache";
  EXPECT_TRUE(Mirrors(a, cache)) << "a got the change as a delta";
  cache.Evict(1);
  EXPECT_TRUE(Mirrors(a, cache));
  EXPECT_TRUE(Mirrors(b, cache));
  ASSERT_TRUE(a.registry().WaitFor([&] { return true; }));
  EXPECT_EQ(a.registry().full_reports_, 1) << "b's registration cost a no full report";
  EXPECT_EQ(b.registry().full_reports_, 1);
}

TEST(WorkerRegistrationTest, AStuckRouterDoesNotStallHeartbeatsToTheOther) {
  FakeRouter a, b;
  a.Start();
  b.Start();
  FakeCache cache;
  WorkerRegistration reg(Options({a.address(), b.address()}, &cache), NoLoad);
  ASSERT_TRUE(HeartbeatsReach(b, 1));
  // b stops answering: its heartbeat hangs (until its 10-minute deadline) while a keeps getting
  // its own, with the cache's changes.
  b.registry().Stall(true);
  const int before = a.registry().heartbeats();
  cache.Add(7);
  ASSERT_TRUE(HeartbeatsReach(a, before + 10));
  EXPECT_TRUE(Mirrors(a, cache));
  // b answers again: the stuck heartbeat completes and the backlog follows.
  cache.Add(8);
  b.registry().Stall(false);
  EXPECT_TRUE(Mirrors(b, cache));
  EXPECT_TRUE(Mirrors(a, cache));
  ASSERT_TRUE(b.registry().WaitFor([&] { return true; }));
  EXPECT_EQ(b.registry().full_reports_, 1);
}

TEST(WorkerRegistrationTest, ARestartedRouterGetsAFullReportAndTheOtherOnlyDeltas) {
  FakeRouter a, b;
  a.Start();
  b.Start();
  FakeCache cache;
  for (uint64_t k = 10; k < 20; ++k) cache.Add(k);
  WorkerRegistration reg(Options({a.address(), b.address()}, &cache), NoLoad);
  EXPECT_TRUE(Mirrors(a, cache));
  EXPECT_TRUE(Mirrors(b, cache));

  // b goes down; the cache changes meanwhile (its failed heartbeats lose nothing for a).
  b.Stop();
  cache.Evict(10);
  cache.Add(20);
  EXPECT_TRUE(Mirrors(a, cache));
  const int takes = cache.takes();
  ASSERT_TRUE(HeartbeatsReach(a, 5));
  EXPECT_GT(cache.takes(), takes);
  // b comes back with no memory of the worker: known=false, the worker registers again, and
  // b's first report is the whole cache.
  b.Start();
  ASSERT_TRUE(b.registry().WaitFor([&] { return b.registry().known_.count("decode-test") > 0; }));
  cache.Add(21);
  EXPECT_TRUE(Mirrors(b, cache));
  EXPECT_TRUE(Mirrors(a, cache));
  ASSERT_TRUE(b.registry().WaitFor([&] { return true; }));
  EXPECT_EQ(b.registry().full_reports_, 1);
  ASSERT_TRUE(a.registry().WaitFor([&] { return true; }));
  EXPECT_EQ(a.registry().full_reports_, 1) << "a only ever needed its first full report";
  EXPECT_EQ(a.registry().registrations_, 1);
}

TEST(WorkerRegistrationTest, FailedHeartbeatsAreSentAgainAsChangesNotAFullReport) {
  FakeRouter a, b;
  a.Start();
  b.Start();
  FakeCache cache;
  for (uint64_t k = 1; k <= 4; ++k) cache.Add(k);
  WorkerRegistration reg(Options({a.address(), b.address()}, &cache), NoLoad);
  EXPECT_TRUE(Mirrors(a, cache));
  EXPECT_TRUE(Mirrors(b, cache));
  // b refuses three heartbeats while the cache changes (a key added then evicted, another
  // evicted then added back): what b missed comes with its next answered heartbeat, as changes.
  b.registry().Fail(3);
  cache.Add(5);
  cache.Evict(1);
  ASSERT_TRUE(b.registry().WaitFor([&] { return b.registry().failed_ >= 1; }));
  cache.Evict(5);
  cache.Evict(2);
  cache.Add(2);
  cache.Add(6);
  ASSERT_TRUE(b.registry().WaitFor([&] { return b.registry().failed_ >= 3; }));
  EXPECT_TRUE(Mirrors(b, cache));
  EXPECT_TRUE(Mirrors(a, cache));
  ASSERT_TRUE(b.registry().WaitFor([&] { return true; }));
  EXPECT_EQ(b.registry().full_reports_, 1);
  EXPECT_EQ(b.registry().registrations_, 1);
  ASSERT_TRUE(a.registry().WaitFor([&] { return true; }));
  EXPECT_EQ(a.registry().full_reports_, 1);
}

TEST(WorkerRegistrationTest, AFullReportFromTheCacheGoesToEveryRouter) {
  FakeRouter a, b;
  a.Start();
  b.Start();
  FakeCache cache;
  cache.Add(1);
  WorkerRegistration reg(Options({a.address(), b.address()}, &cache), NoLoad);
  EXPECT_TRUE(Mirrors(a, cache));
  EXPECT_TRUE(Mirrors(b, cache));
  // The cache's own journal overflowed: its next report is whole, and so is every router's.
  cache.Add(2);
  cache.Overflow();
  ASSERT_TRUE(a.registry().WaitFor([&] { return a.registry().full_reports_ == 2; }));
  ASSERT_TRUE(b.registry().WaitFor([&] { return b.registry().full_reports_ == 2; }));
  EXPECT_TRUE(Mirrors(a, cache));
  EXPECT_TRUE(Mirrors(b, cache));
}

TEST(WorkerRegistrationTest, TheDrainReachesEveryRouter) {
  FakeRouter a, b;
  a.Start();
  b.Start();
  FakeCache cache;
  WorkerRegistration reg(Options({a.address(), b.address()}, &cache), NoLoad);
  ASSERT_TRUE(HeartbeatsReach(a, 1));
  ASSERT_TRUE(HeartbeatsReach(b, 1));
  reg.SetDraining();
  ASSERT_TRUE(reg.WaitDrainingAcknowledged(kGuard).ok());
  ASSERT_TRUE(a.registry().WaitFor([&] { return true; }));
  EXPECT_TRUE(a.registry().draining_);
  ASSERT_TRUE(b.registry().WaitFor([&] { return true; }));
  EXPECT_TRUE(b.registry().draining_);
}

TEST(WorkerRegistrationTest, TheDrainWaitsForAStuckRouterUntilItsHeartbeatEnds) {
  FakeRouter a, b;
  a.Start();
  b.Start();
  FakeCache cache;
  WorkerRegistration reg(Options({a.address(), b.address()}, &cache), NoLoad);
  ASSERT_TRUE(HeartbeatsReach(b, 1));
  b.registry().Stall(true);
  reg.SetDraining();
  ASSERT_TRUE(a.registry().WaitFor([&] { return a.registry().draining_; }));
  // b has not heard of the drain yet: the wait names it, and only it once a's answer is in.
  const auto end = std::chrono::steady_clock::now() + kGuard;
  Status st;
  do {
    st = reg.WaitDrainingAcknowledged(std::chrono::milliseconds(1));
    ASSERT_EQ(st.code(), StatusCode::kDeadlineExceeded);
    EXPECT_NE(st.message().find(b.address()), std::string::npos) << st.ToString();
  } while (st.message().find(a.address()) != std::string::npos &&
           std::chrono::steady_clock::now() < end);
  EXPECT_EQ(st.message().find(a.address()), std::string::npos) << st.ToString();
  b.registry().Stall(false);
  EXPECT_TRUE(reg.WaitDrainingAcknowledged(kGuard).ok());
  ASSERT_TRUE(b.registry().WaitFor([&] { return b.registry().draining_; }));
}

TEST(WorkerRegistrationTest, WaitRegisteredNamesEveryRouterWhenNoneAnswers) {
  FakeRouter a, b;  // both down
  FakeCache cache;
  WorkerRegistration reg(Options({a.address(), b.address()}, &cache), NoLoad);
  const Status st = reg.WaitRegistered(std::chrono::milliseconds(100));
  ASSERT_EQ(st.code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(st.message().find(a.address()), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find(b.address()), std::string::npos) << st.ToString();
  EXPECT_FALSE(reg.registered());
}

}  // namespace
}  // namespace tandem

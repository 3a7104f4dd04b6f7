// The block scheduler: every CUDA thread of a block is a fiber; fibers run one at a time on
// the launching host thread and switch only at synchronization points (__syncthreads, warp
// collectives, exit). Barriers count arrivals, so threads that take different paths (warps
// with different trip counts, warp-0-only __syncwarp) behave as on the GPU, and misuse is
// reported instead of silently running past a barrier.
#include <sys/mman.h>

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fiber.h"
#include "internal.h"
#include "tandem/kernels/interp/runtime.h"

namespace tandem::interp {
namespace detail {
BuiltinVars g_vars{};
}  // namespace detail

namespace {

using detail::BarrierOp;
using detail::WarpOp;

constexpr size_t kStackBytes = size_t{128} << 10;
constexpr size_t kGuardBytes = size_t{4} << 10;

enum class State : uint8_t { kRunnable, kBarrier, kWarp, kExited };

const char* OpName(WarpOp op) {
  switch (op) {
    case WarpOp::kSync:
      return "__syncwarp";
    case WarpOp::kShflIdx:
      return "__shfl_sync";
    case WarpOp::kShflUp:
      return "__shfl_up_sync";
    case WarpOp::kShflDown:
      return "__shfl_down_sync";
    case WarpOp::kShflXor:
      return "__shfl_xor_sync";
    case WarpOp::kBallot:
      return "__ballot_sync";
    case WarpOp::kAny:
      return "__any_sync";
    case WarpOp::kAll:
      return "__all_sync";
  }
  return "?";
}

struct Fiber {
  FiberContext ctx;
  State state = State::kExited;
  uint3 tid{};
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0;
  int arg = 0;
  int width = 32;
  int pred = 0;
  uint64_t value = 0;
  uint64_t result = 0;
  int barrier_count = 0;    // waiters with a true predicate at the last barrier
  int barrier_waiters = 0;  // waiters (live threads) at the last barrier
};

struct ScheduleSetting {
  bool loaded = false;
  Schedule schedule = Schedule::kForward;
  uint64_t seed = 1;
  uint64_t generation = 0;  // bumped by SetSchedule: the random generator is reseeded
};
ScheduleSetting g_schedule;
Stats g_stats;

void LoadScheduleFromEnv() {
  if (g_schedule.loaded) return;
  g_schedule.loaded = true;
  const char* env = std::getenv("TANDEM_INTERP_SCHEDULE");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "forward") == 0) return;
  if (std::strcmp(env, "reverse") == 0) {
    g_schedule.schedule = Schedule::kReverse;
  } else if (std::strncmp(env, "random", 6) == 0 && (env[6] == '\0' || env[6] == ':')) {
    g_schedule.schedule = Schedule::kRandom;
    if (env[6] == ':') g_schedule.seed = std::strtoull(env + 7, nullptr, 0);
  } else {
    std::fprintf(stderr,
                 "tandem cuda interpreter: TANDEM_INTERP_SCHEDULE=%s is not "
                 "forward|reverse|random[:seed]\n",
                 env);
    std::abort();
  }
}

class BlockRunner {
 public:
  static BlockRunner& Get() {
    static BlockRunner* runner = new BlockRunner();  // never destroyed: fibers may outlive exit
    return *runner;
  }

  void RunGrid(const char* name, dim3 grid, dim3 block, size_t smem,
               const std::function<void()>& body) {
    LoadScheduleFromEnv();
    name_ = name;
    body_ = &body;
    schedule_ = g_schedule.schedule;
    if (schedule_ == Schedule::kRandom && rng_generation_ != g_schedule.generation + 1) {
      rng_.seed(g_schedule.seed);
      rng_generation_ = g_schedule.generation + 1;
    }
    n_ = static_cast<int>(block.x * block.y * block.z);
    smem_bytes_ = smem;
    if (smem != smem_capacity_) {  // exactly the launch's size: ASan builds catch overruns
      void* p = nullptr;
      if (smem > 0 && posix_memalign(&p, 256, smem) != 0) {
        std::fprintf(stderr, "tandem cuda interpreter: out of host memory\n");
        std::abort();
      }
      smem_.reset(static_cast<unsigned char*>(p));
      smem_capacity_ = smem;
    }
    detail::g_vars.block_dim = block;
    detail::g_vars.grid_dim = grid;
    ++g_stats.launches;
    // Block order follows the schedule too: forward in blockIdx order, reverse backwards,
    // random shuffled (a kernel whose blocks depend on each other's order is caught).
    const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
    std::vector<uint64_t> order;
    if (schedule_ == Schedule::kRandom) {
      order.resize(blocks);
      for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
      std::shuffle(order.begin(), order.end(), rng_);
    }
    for (uint64_t k = 0; k < blocks; ++k) {
      uint64_t b = k;
      if (schedule_ == Schedule::kReverse) b = blocks - 1 - k;
      if (schedule_ == Schedule::kRandom) b = order[k];
      detail::g_vars.block_idx =
          uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                static_cast<unsigned>(b / (uint64_t{grid.x} * grid.y))};
      RunBlock();
    }
    body_ = nullptr;
  }

  void* DynamicSmem() const { return smem_bytes_ == 0 ? nullptr : smem_.get(); }

  int SyncThreads(BarrierOp op, int pred) {
    Fiber& f = fibers_[current_];
    f.state = State::kBarrier;
    f.pred = pred;
    ++at_barrier_;
    if (at_barrier_ == live_) ReleaseBarrier();
    Yield();
    switch (op) {  // bar.sync and bar.red share one barrier
      case BarrierOp::kCount:
        return f.barrier_count;
      case BarrierOp::kAnd:
        return f.barrier_count == f.barrier_waiters ? 1 : 0;
      case BarrierOp::kOr:
        return f.barrier_count != 0 ? 1 : 0;
      case BarrierOp::kSync:
        break;
    }
    return 0;
  }

  uint64_t WarpCollective(WarpOp op, unsigned mask, uint64_t value, int arg, int width) {
    const int self = current_;
    const int lane = self & 31, warp = self >> 5;
    if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
      KernelError("%s with width %d (must be a power of two <= 32)", OpName(op), width);
    }
    if (((mask >> lane) & 1u) == 0) {
      KernelError("%s with mask 0x%08x that does not contain the calling lane %d", OpName(op), mask,
                  lane);
    }
    if ((mask & ~exists_[warp]) != 0) {
      KernelError("%s with mask 0x%08x names lane %d, which does not exist (blockDim %d)",
                  OpName(op), mask, __builtin_ctz(mask & ~exists_[warp]), n_);
    }
    if ((mask & exited_[warp]) != 0) {
      KernelError("%s with mask 0x%08x names lane %d, which has exited", OpName(op), mask,
                  __builtin_ctz(mask & exited_[warp]));
    }
    Fiber& f = fibers_[self];
    f.state = State::kWarp;
    f.op = op;
    f.mask = mask;
    f.value = value;
    f.arg = arg;
    f.width = width;
    arrived_[warp] |= 1u << lane;
    // Complete when every lane of the mask waits; the lanes are then checked to wait in the
    // same collective (a mismatch that never completes is reported as a deadlock).
    if ((arrived_[warp] & mask) == mask) ResolveWarp(warp, op, mask);
    Yield();
    return f.result;
  }

  unsigned ActiveMask() const {
    const int warp = current_ >> 5;
    return exists_[warp] & ~exited_[warp];
  }

  [[noreturn]] void Error(const std::string& msg) {
    const uint3 b = detail::g_vars.block_idx;
    if (current_ >= 0) {
      const uint3 t = fibers_[current_].tid;
      std::fprintf(stderr,
                   "tandem cuda interpreter: kernel %s block (%u,%u,%u) thread (%u,%u,%u): %s\n",
                   name_ ? name_ : "?", b.x, b.y, b.z, t.x, t.y, t.z, msg.c_str());
    } else {
      std::fprintf(stderr, "tandem cuda interpreter: kernel %s block (%u,%u,%u): %s\n",
                   name_ ? name_ : "?", b.x, b.y, b.z, msg.c_str());
    }
    std::fflush(stderr);
    std::abort();
  }

  bool InKernel() const { return body_ != nullptr; }

 private:
  BlockRunner() {
    const size_t per = kStackBytes + kGuardBytes;
    void* mem = mmap(nullptr, per * internal::kMaxThreadsPerBlock, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
      std::fprintf(stderr, "tandem cuda interpreter: cannot map fiber stacks\n");
      std::abort();
    }
    stacks_ = static_cast<char*>(mem);
    for (int i = 0; i < internal::kMaxThreadsPerBlock; ++i) {
      mprotect(stacks_ + i * per, kGuardBytes, PROT_NONE);  // overflow faults, not corrupts
    }
    fibers_.resize(internal::kMaxThreadsPerBlock);
    runnable_.reserve(internal::kMaxThreadsPerBlock);
  }

  static void Entry() {
    BlockRunner& r = Get();
    FiberStarted(&r.sched_ctx_);
    (*r.body_)();
    r.OnExit();
    std::abort();  // unreachable: OnExit switches away for good
  }

  void RunBlock() {
    ++g_stats.blocks;
    const dim3 bd = detail::g_vars.block_dim;
    const size_t per = kStackBytes + kGuardBytes;
    runnable_.clear();
    for (int i = 0; i < n_; ++i) {
      Fiber& f = fibers_[i];
      f.state = State::kRunnable;
      f.tid = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
      MakeFiber(&f.ctx, stacks_ + i * per + kGuardBytes, kStackBytes, &BlockRunner::Entry);
      runnable_.push_back(i);
    }
    live_ = n_;
    at_barrier_ = 0;
    for (int w = 0; w < kMaxWarps; ++w) {
      const int lanes = std::min(32, std::max(0, n_ - 32 * w));
      exists_[w] = lanes == 32 ? ~0u : (1u << lanes) - 1u;
      arrived_[w] = 0;
      exited_[w] = 0;
    }
    if (smem_bytes_ > 0) std::memset(smem_.get(), 0xCD, smem_bytes_);
    switch (schedule_) {
      case Schedule::kForward:
      case Schedule::kReverse:
        while (live_ > 0) {
          bool ran = false;
          for (int k = 0; k < n_; ++k) {
            const int i = schedule_ == Schedule::kForward ? k : n_ - 1 - k;
            if (fibers_[i].state == State::kRunnable) {
              Resume(i);
              ran = true;
            }
          }
          if (!ran && live_ > 0) Deadlock();
        }
        break;
      case Schedule::kRandom:
        while (live_ > 0) {
          if (runnable_.empty()) Deadlock();
          const size_t j = rng_() % runnable_.size();
          const int i = runnable_[j];
          runnable_[j] = runnable_.back();
          runnable_.pop_back();
          Resume(i);
        }
        break;
    }
  }

  void Resume(int i) {
    current_ = i;
    detail::g_vars.thread_idx = fibers_[i].tid;
    ++g_stats.context_switches;
    SwitchFiber(&sched_ctx_, &fibers_[i].ctx);
    current_ = -1;
  }

  void Yield() { SwitchFiber(&fibers_[current_].ctx, &sched_ctx_); }

  void MakeRunnable(int i) {
    fibers_[i].state = State::kRunnable;
    if (schedule_ == Schedule::kRandom) runnable_.push_back(i);
  }

  // Releases every thread waiting at __syncthreads; each gets the number of waiters with a
  // true predicate and the number of waiters (the live threads), for _count / _and / _or.
  void ReleaseBarrier() {
    int count = 0, waiting = 0;
    for (int i = 0; i < n_; ++i) {
      if (fibers_[i].state != State::kBarrier) continue;
      ++waiting;
      if (fibers_[i].pred != 0) ++count;
    }
    for (int i = 0; i < n_; ++i) {
      Fiber& f = fibers_[i];
      if (f.state != State::kBarrier) continue;
      f.barrier_count = count;
      f.barrier_waiters = waiting;
      MakeRunnable(i);
    }
    at_barrier_ = 0;
  }

  void ResolveWarp(int warp, WarpOp op, unsigned mask) {
    const int base = warp * 32;
    unsigned ballot = 0;
    for (unsigned m = mask; m != 0; m &= m - 1) {
      const int l = __builtin_ctz(m);
      const Fiber& g = fibers_[base + l];
      if (g.mask != mask || g.op != op) {
        KernelError(
            "divergent warp collectives: lanes of mask 0x%08x wait in %s, lane %d in "
            "%s(mask 0x%08x)",
            mask, OpName(op), l, OpName(g.op), g.mask);
      }
      if (g.value != 0) ballot |= 1u << l;
    }
    arrived_[warp] &= ~mask;
    for (unsigned m = mask; m != 0; m &= m - 1) {
      const int l = __builtin_ctz(m);
      Fiber& f = fibers_[base + l];
      switch (op) {
        case WarpOp::kSync:
          f.result = 0;
          break;
        case WarpOp::kBallot:
          f.result = ballot;
          break;
        case WarpOp::kAny:
          f.result = ballot != 0;
          break;
        case WarpOp::kAll:
          f.result = ballot == mask;
          break;
        default:
          f.result = fibers_[base + ShuffleSource(op, mask, l, f.arg, f.width, base)].value;
          break;
      }
      MakeRunnable(base + l);
    }
  }

  // The lane whose value lane `l` receives: PTX shfl.sync semantics with
  // c = ((32 - width) << 8) | (up ? 0 : 31); an out-of-range source means the own value.
  int ShuffleSource(WarpOp op, unsigned mask, int l, int arg, int w, int base) {
    const int b = arg & 31;
    const int min_lane = l & ~(w - 1);
    const int max_lane = min_lane + w - 1;
    int j;
    switch (op) {
      case WarpOp::kShflIdx:
        j = min_lane | (b & (w - 1));
        break;
      case WarpOp::kShflUp:
        j = l - b >= min_lane ? l - b : l;
        break;
      case WarpOp::kShflDown:
        j = l + b <= max_lane ? l + b : l;
        break;
      default:
        j = (l ^ b) <= max_lane ? (l ^ b) : l;
        break;
    }
    if (((mask >> j) & 1u) == 0) {
      current_ = base + l;
      KernelError("%s(mask 0x%08x) on lane %d reads lane %d, which is not in the mask", OpName(op),
                  mask, l, j);
    }
    return j;
  }

  void OnExit() {
    const int self = current_;
    Fiber& f = fibers_[self];
    f.state = State::kExited;
    --live_;
    const int lane = self & 31, base = self - lane, warp = self >> 5;
    exited_[warp] |= 1u << lane;
    for (unsigned waiting = arrived_[warp]; waiting != 0; waiting &= waiting - 1) {
      const int l = __builtin_ctz(waiting);
      const Fiber& g = fibers_[base + l];
      if (((g.mask >> lane) & 1u) != 0) {
        KernelError("lane %d exited while lane %d waits for it in %s(mask 0x%08x)", lane, l,
                    OpName(g.op), g.mask);
      }
    }
    if (live_ > 0 && at_barrier_ > 0 && at_barrier_ == live_) ReleaseBarrier();
    SwitchFiber(&f.ctx, &sched_ctx_, /*final=*/true);
  }

  [[noreturn]] void Deadlock() {
    std::string msg = "deadlock: no thread can run; " + std::to_string(live_) + " live, " +
                      std::to_string(at_barrier_) + " at __syncthreads";
    int shown = 0;
    for (int i = 0; i < n_ && shown < 4; ++i) {
      const Fiber& f = fibers_[i];
      if (f.state != State::kWarp) continue;
      char buf[160];
      std::snprintf(buf, sizeof(buf), "; thread %d (warp %d lane %d) waits in %s(mask 0x%08x)", i,
                    i / 32, i % 32, OpName(f.op), f.mask);
      msg += buf;
      ++shown;
    }
    current_ = -1;
    Error(msg);
  }

  const char* name_ = nullptr;
  const std::function<void()>* body_ = nullptr;
  Schedule schedule_ = Schedule::kForward;
  std::mt19937_64 rng_;
  uint64_t rng_generation_ = 0;  // g_schedule.generation + 1 once seeded
  char* stacks_ = nullptr;
  std::vector<Fiber> fibers_;
  std::vector<int> runnable_;
  FiberContext sched_ctx_;
  int n_ = 0, live_ = 0, at_barrier_ = 0, current_ = -1;
  static constexpr int kMaxWarps = internal::kMaxThreadsPerBlock / 32;
  unsigned exists_[kMaxWarps] = {};   // lanes that exist in the block
  unsigned arrived_[kMaxWarps] = {};  // lanes waiting in a warp collective
  unsigned exited_[kMaxWarps] = {};   // lanes that returned
  struct FreeDeleter {
    void operator()(unsigned char* p) const { std::free(p); }
  };
  std::unique_ptr<unsigned char, FreeDeleter> smem_;
  size_t smem_capacity_ = 0, smem_bytes_ = 0;
};

}  // namespace

void SetSchedule(Schedule schedule, uint64_t seed) {
  std::lock_guard<std::recursive_mutex> lock(internal::ExecMutex());
  g_schedule.loaded = true;
  g_schedule.schedule = schedule;
  g_schedule.seed = seed;
  ++g_schedule.generation;
}

Schedule CurrentSchedule() {
  std::lock_guard<std::recursive_mutex> lock(internal::ExecMutex());
  LoadScheduleFromEnv();
  return g_schedule.schedule;
}

Stats GetStats() {
  std::lock_guard<std::recursive_mutex> lock(internal::ExecMutex());
  return g_stats;
}

void* DynamicSmem() { return BlockRunner::Get().DynamicSmem(); }

void KernelError(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  BlockRunner::Get().Error(buf);
}

namespace detail {

int SyncThreads(BarrierOp op, int pred) {
  BlockRunner& r = BlockRunner::Get();
  if (!r.InKernel()) KernelError("__syncthreads outside a kernel");
  return r.SyncThreads(op, pred);
}

uint64_t WarpCollective(WarpOp op, unsigned mask, uint64_t value, int arg, int width) {
  BlockRunner& r = BlockRunner::Get();
  if (!r.InKernel()) KernelError("warp collective outside a kernel");
  return r.WarpCollective(op, mask, value, arg, width);
}

unsigned ActiveMask() { return BlockRunner::Get().ActiveMask(); }

}  // namespace detail

namespace internal {

void RunGrid(const char* name, dim3 grid, dim3 block, size_t dynamic_smem,
             const std::function<void()>& body) {
  BlockRunner::Get().RunGrid(name, grid, block, dynamic_smem, body);
}

}  // namespace internal

void LaunchErased(const char* name, const void* func, dim3 grid, dim3 block, size_t dynamic_smem,
                  cudaStream_t stream, std::function<void()> body) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 || block.y > 1024 ||
      block.z > 64 || threads > uint64_t{internal::kMaxThreadsPerBlock} || grid.x == 0 ||
      grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    internal::SetLastError(cudaErrorInvalidConfiguration);
    return;
  }
  if (dynamic_smem > internal::MaxDynamicSmem(func)) {
    internal::SetLastError(cudaErrorInvalidValue);
    return;
  }
  Enqueue(stream, [name, grid, block, dynamic_smem, body = std::move(body)]() {
    internal::RunGrid(name, grid, block, dynamic_smem, body);
  });
}

}  // namespace tandem::interp

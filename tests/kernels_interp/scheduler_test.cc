// The interpreter's scheduler: counted barriers, warp collectives with CUDA's semantics
// (widths, masks, votes), and the misuse it reports (exited or missing lanes, divergent
// collectives, deadlock, launch limits).
#include "tandem/kernels/interp/cuda_interp.h"  // first: defines __shared__ before CUDA headers

#include <gtest/gtest.h>

#include <vector>

#include "gpu_test_util.h"

namespace tandem::interp::testing {
namespace {

using cuda::testing::DeviceBuffer;

#define LAUNCH(kernel, ...) ::tandem::interp::Launch(#kernel, kernel, __VA_ARGS__)

// ---- Barriers -------------------------------------------------------------------------------

// Thread t adds to a shared counter, t + 1 times, each round behind a barrier that only the
// threads still looping reach; the finished ones have exited (CUDA counts only live threads).
__global__ void EarlyExitBarrier(int* out) {
  __shared__ int counter;
  if (threadIdx.x == 0) counter = 0;
  __syncthreads();
  const int rounds = (threadIdx.x % 4) + 1;
  for (int r = 0; r < rounds; ++r) {
    atomicAdd(&counter, 1);
    __syncthreads();
  }
  if (threadIdx.x % 4 == 3) out[threadIdx.x / 4] = counter;
}

TEST(InterpBarrier, CountsOnlyLiveThreads) {
  DeviceBuffer<int> out(16);
  LAUNCH(EarlyExitBarrier, 1, 64, 0, nullptr, out.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  // 16 threads per residue class: 64 + 48 + 32 + 16 increments in total.
  for (int v : out.Download()) EXPECT_EQ(v, 160);
}

__global__ void BarrierReductions(int* out) {
  if (threadIdx.x >= 90) return;  // exited threads take no part in the reductions
  const int pred = threadIdx.x % 3 == 0 && warpSize == 32;
  const int count = __syncthreads_count(pred);
  const int any = __syncthreads_or(threadIdx.x == 77);
  const int all = __syncthreads_and(threadIdx.x < 90);
  if (threadIdx.x == 5) {
    out[0] = count;
    out[1] = any;
    out[2] = all;
  }
}

TEST(InterpBarrier, CountAndOr) {
  DeviceBuffer<int> out(3);
  LAUNCH(BarrierReductions, 1, 100, 0, nullptr, out.get());
  EXPECT_EQ(out.Download(), (std::vector<int>{30, 1, 1}));
}

// ---- Warp collectives -----------------------------------------------------------------------

struct ShuffleOut {
  int idx, up, down, xr, idx_w8, up_w8, down_w8, xor_w8, xor_16_w8;
};

__global__ void Shuffles(ShuffleOut* out) {
  const int lane = threadIdx.x & 31;
  const int v = 100 + static_cast<int>(threadIdx.x);
  ShuffleOut o;
  o.idx = __shfl_sync(0xffffffffu, v, 3);
  o.up = __shfl_up_sync(0xffffffffu, v, 2);
  o.down = __shfl_down_sync(0xffffffffu, v, 5);
  o.xr = __shfl_xor_sync(0xffffffffu, v, 9);
  o.idx_w8 = __shfl_sync(0xffffffffu, v, 11, 8);  // srcLane % width within each 8-lane segment
  o.up_w8 = __shfl_up_sync(0xffffffffu, v, 3, 8);
  o.down_w8 = __shfl_down_sync(0xffffffffu, v, 3, 8);
  o.xor_w8 = __shfl_xor_sync(0xffffffffu, v, 5, 8);
  o.xor_16_w8 = __shfl_xor_sync(0xffffffffu, v, 16, 8);  // PTX: the lane mask may leave the segment
  (void)lane;
  out[threadIdx.x] = o;
}

TEST(InterpWarp, ShuffleSemanticsWithWidth) {
  DeviceBuffer<ShuffleOut> out(64);
  LAUNCH(Shuffles, 1, 64, 0, nullptr, out.get());
  const std::vector<ShuffleOut> got = out.Download();
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32, warp_base = t - lane, seg = lane & ~7;
    auto v = [&](int l) { return 100 + warp_base + l; };
    EXPECT_EQ(got[t].idx, v(3)) << t;
    EXPECT_EQ(got[t].up, lane >= 2 ? v(lane - 2) : v(lane)) << t;
    EXPECT_EQ(got[t].down, lane + 5 < 32 ? v(lane + 5) : v(lane)) << t;
    EXPECT_EQ(got[t].xr, v(lane ^ 9)) << t;
    EXPECT_EQ(got[t].idx_w8, v(seg + 3)) << t;
    EXPECT_EQ(got[t].up_w8, lane - 3 >= seg ? v(lane - 3) : v(lane)) << t;
    EXPECT_EQ(got[t].down_w8, lane + 3 <= seg + 7 ? v(lane + 3) : v(lane)) << t;
    EXPECT_EQ(got[t].xor_w8, v(lane ^ 5)) << t;
    EXPECT_EQ(got[t].xor_16_w8, (lane ^ 16) <= seg + 7 ? v(lane ^ 16) : v(lane)) << t;
  }
}

__global__ void Votes(unsigned* out) {
  const int lane = threadIdx.x & 31;
  out[threadIdx.x * 4 + 0] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  out[threadIdx.x * 4 + 1] = __any_sync(0xffffffffu, lane == 31);
  out[threadIdx.x * 4 + 2] = __all_sync(0xffffffffu, lane < 31);
  // Half-warp collectives with disjoint masks run side by side.
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  out[threadIdx.x * 4 + 3] = __shfl_sync(half, static_cast<unsigned>(lane), lane < 16 ? 1 : 20);
}

TEST(InterpWarp, VotesAndPartialMasks) {
  DeviceBuffer<unsigned> out(32 * 4);
  LAUNCH(Votes, 1, 32, 0, nullptr, out.get());
  const std::vector<unsigned> got = out.Download();
  unsigned expect_ballot = 0;
  for (int l = 0; l < 32; l += 3) expect_ballot |= 1u << l;
  for (int l = 0; l < 32; ++l) {
    EXPECT_EQ(got[l * 4 + 0], expect_ballot);
    EXPECT_EQ(got[l * 4 + 1], 1u);
    EXPECT_EQ(got[l * 4 + 2], 0u);
    EXPECT_EQ(got[l * 4 + 3], l < 16 ? 1u : 20u);
  }
}

// Warp 0 alone synchronizes (like sampling.cu's FixedOrderSum) while the others go on.
__global__ void WarpZeroOnly(int* out) {
  __shared__ int partial[32];
  if (threadIdx.x < 32) {
    partial[threadIdx.x] = static_cast<int>(threadIdx.x);
    __syncwarp();
    if (threadIdx.x == 0) {
      int s = 0;
      for (int i = 0; i < 32; ++i) s += partial[i];
      partial[0] = s;
    }
    __syncwarp();
  }
  __syncthreads();
  out[threadIdx.x] = partial[0];
}

TEST(InterpWarp, SyncwarpInOneWarpOnly) {
  DeviceBuffer<int> out(96);
  LAUNCH(WarpZeroOnly, 1, 96, 0, nullptr, out.get());
  for (int v : out.Download()) EXPECT_EQ(v, 496);
}

// ---- Misuse is reported ---------------------------------------------------------------------

__global__ void ShuffleAfterHalfExit(int* out) {
  if ((threadIdx.x & 31) >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void ShuffleNotInMask(int* out) {
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void ShuffleReadsOutsideMask(int* out) {
  if ((threadIdx.x & 31) < 16) {
    out[threadIdx.x] = __shfl_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 20, 32);
  }
}

__global__ void MissingLane(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void BarrierVersusWarp(int* out) {
  if ((threadIdx.x & 31) < 16) {
    __syncwarp();  // waits for lanes 16..31, which wait at __syncthreads
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void DivergentCollectives(int* out) {
  if (threadIdx.x & 1) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
  } else {
    out[threadIdx.x] = static_cast<int>(__ballot_sync(0xffffffffu, 1));
  }
}

using InterpDeathTest = ::testing::Test;

TEST_F(InterpDeathTest, ExitedLaneInMask) {
  DeviceBuffer<int> out(32);
  EXPECT_DEATH(LAUNCH(ShuffleAfterHalfExit, 1, 32, 0, nullptr, out.get()),
               "kernel ShuffleAfterHalfExit block \\(0,0,0\\) thread .*exited");
}

TEST_F(InterpDeathTest, CallerNotInMask) {
  DeviceBuffer<int> out(32);
  EXPECT_DEATH(LAUNCH(ShuffleNotInMask, 1, 32, 0, nullptr, out.get()),
               "does not contain the calling lane");
}

TEST_F(InterpDeathTest, SourceLaneOutsideMask) {
  DeviceBuffer<int> out(32);
  EXPECT_DEATH(LAUNCH(ShuffleReadsOutsideMask, 1, 32, 0, nullptr, out.get()),
               "reads lane 20, which is not in the mask");
}

TEST_F(InterpDeathTest, LaneThatDoesNotExist) {
  DeviceBuffer<int> out(48);
  EXPECT_DEATH(LAUNCH(MissingLane, 1, 48, 0, nullptr, out.get()), "lane 16, which does not exist");
}

TEST_F(InterpDeathTest, Deadlock) {
  DeviceBuffer<int> out(64);
  EXPECT_DEATH(LAUNCH(BarrierVersusWarp, 1, 64, 0, nullptr, out.get()),
               "kernel BarrierVersusWarp block \\(0,0,0\\): deadlock.*at __syncthreads.*"
               "waits in __syncwarp");
}

TEST_F(InterpDeathTest, DivergentCollectives) {
  DeviceBuffer<int> out(32);
  EXPECT_DEATH(LAUNCH(DivergentCollectives, 1, 32, 0, nullptr, out.get()),
               "divergent warp collectives|deadlock");
}

// ---- Launch configuration errors, as the CUDA runtime reports them --------------------------

__global__ void Noop(int* out) {
  if (out != nullptr && threadIdx.x == 0) out[blockIdx.x] = 1;
}

__global__ void DynamicSmemUser(int* out) {
  auto* smem = static_cast<unsigned char*>(DynamicSmem());
  if (threadIdx.x == 0) out[0] = smem[0];
}

TEST(InterpLaunch, ConfigurationErrorsAreLastError) {
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const Stats before = GetStats();
  const dim3 bad_blocks[] = {dim3(1025), dim3(0), dim3(1, 1025), dim3(1, 1, 65), dim3(64, 32)};
  for (const dim3& b : bad_blocks) {
    LAUNCH(Noop, 1, b, 0, nullptr, static_cast<int*>(nullptr));
    EXPECT_EQ(cudaPeekAtLastError(), cudaErrorInvalidConfiguration) << b.x << "," << b.y;
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // not sticky
  }
  const dim3 bad_grids[] = {dim3(0), dim3(1, 65536), dim3(1, 1, 65536), dim3(1, 0)};
  for (const dim3& g : bad_grids) {
    LAUNCH(Noop, g, 32, 0, nullptr, static_cast<int*>(nullptr));
    EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  }
  EXPECT_EQ(GetStats().launches, before.launches);  // nothing ran
  LAUNCH(Noop, dim3(3, 2, 2), dim3(32, 32), 0, nullptr, static_cast<int*>(nullptr));
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(GetStats().launches, before.launches + 1);
  EXPECT_EQ(GetStats().blocks, before.blocks + 12);
}

TEST(InterpLaunch, DynamicSharedMemoryLimits) {
  DeviceBuffer<int> out(1);
  LAUNCH(DynamicSmemUser, 1, 32, 48 << 10, nullptr, out.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(out.Download()[0], 0xCD);  // poisoned, not zeroed
  LAUNCH(DynamicSmemUser, 1, 32, (48 << 10) + 1, nullptr, out.get());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFuncSetAttribute(DynamicSmemUser, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (227 << 10) + 1),
            cudaErrorInvalidValue);
  (void)cudaGetLastError();
  ASSERT_EQ(
      cudaFuncSetAttribute(DynamicSmemUser, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 << 10),
      cudaSuccess);
  LAUNCH(DynamicSmemUser, 1, 32, 100 << 10, nullptr, out.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  LAUNCH(DynamicSmemUser, 1, 32, (100 << 10) + 4, nullptr, out.get());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
}

TEST(InterpLaunch, ArgumentsAreCapturedByValue) {
  DeviceBuffer<int> out(4);
  std::vector<int> zeros(4, 0);
  out.Upload(zeros);
  int* ptr = out.get();
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  LAUNCH(Noop, 2, 32, 0, s, ptr);
  ptr = nullptr;  // the captured launch keeps the old value
  cudaGraph_t g;
  ASSERT_EQ(cudaStreamEndCapture(s, &g), cudaSuccess);
  EXPECT_EQ(out.Download(), zeros);  // recorded, not run
  cudaGraphExec_t x;
  ASSERT_EQ(cudaGraphInstantiate(&x, g, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(x, s), cudaSuccess);
  EXPECT_EQ(out.Download(), (std::vector<int>{1, 1, 0, 0}));
  cudaGraphExecDestroy(x);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
}

}  // namespace
}  // namespace tandem::interp::testing

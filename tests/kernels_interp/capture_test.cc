// Our launchers inside stream capture: the debug form of TANDEM_CUDA_LAUNCH_CHECK must not
// synchronize a capturing stream, and a captured graph of real launchers replays bit-identically
// to eager execution, reading its buffers afresh on every replay.
#undef NDEBUG  // this file checks the debug form of TANDEM_CUDA_LAUNCH_CHECK (it synchronizes)
#include "tandem/kernels/interp/cuda_interp.h"  // first: defines __shared__ before CUDA headers

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "tandem/kernels/cuda/common.h"
#include "tandem/kernels/cuda/rmsnorm.h"

namespace tandem::interp::testing {
namespace {

using cuda::testing::DeviceBuffer;

__global__ void AddOne(int* p) { p[threadIdx.x] += 1; }

cudaError_t LaunchAddOneChecked(int* p, cudaStream_t stream) {
  Launch("AddOne", AddOne, 1, 32, 0, stream, p);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  return cudaSuccess;
}

TEST(InterpCapture, DebugLaunchCheckIsCaptureSafe) {
  DeviceBuffer<int> buf(std::vector<int>(32, 0));
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(LaunchAddOneChecked(buf.get(), s), cudaSuccess);  // eager: synchronizes
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  ASSERT_EQ(LaunchAddOneChecked(buf.get(), s), cudaSuccess);
  ASSERT_EQ(LaunchAddOneChecked(buf.get(), s), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(buf.Download(), std::vector<int>(32, 7));
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

TEST(InterpCapture, RmsNormGraphReplaysLikeEager) {
  const int64_t n = 5, dim = 1002;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> d(-2.0f, 2.0f);
  std::vector<float> x1(n * dim), x2(n * dim), w(dim);
  for (float& v : x1) v = d(rng);
  for (float& v : x2) v = d(rng);
  for (float& v : w) v = 1.0f + 0.25f * d(rng);
  DeviceBuffer<float> d_x(x1), d_w(w), d_out(n * dim);
  cuda::RmsNormParams<float> p;
  p.x = d_x.get();
  p.weight = d_w.get();
  p.out = d_out.get();
  p.n = n;
  p.dim = dim;
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cuda::LaunchRmsNorm(p, s), cudaSuccess);
  const std::vector<float> eager1 = d_out.Download();
  d_x.Upload(x2);
  ASSERT_EQ(cuda::LaunchRmsNorm(p, s), cudaSuccess);
  const std::vector<float> eager2 = d_out.Download();

  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  ASSERT_EQ(cuda::LaunchRmsNorm(p, s), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  d_x.Upload(x1);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  EXPECT_EQ(d_out.Download(), eager1);
  d_x.Upload(x2);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  EXPECT_EQ(d_out.Download(), eager2);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

}  // namespace
}  // namespace tandem::interp::testing

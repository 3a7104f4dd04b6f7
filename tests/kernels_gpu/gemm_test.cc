// cuBLASLt GEMM wrapper against tandem::ref::Matmul, and batch invariance in deterministic mode.
#include <memory>

#include "gpu_test_util.h"
#include "tandem/kernels/cuda/gemm.h"
#include "tandem/kernels/ref/ops.h"

namespace tandem::cuda::testing {
namespace {

template <typename T>
DataType TypeOf();
template <>
DataType TypeOf<float>() {
  return DataType::kF32;
}
template <>
DataType TypeOf<__half>() {
  return DataType::kF16;
}
template <>
DataType TypeOf<__nv_bfloat16>() {
  return DataType::kBF16;
}

template <typename T>
class GemmTest : public GpuTest {};
TYPED_TEST_SUITE(GemmTest, DTypes);

TYPED_TEST(GemmTest, MatchesReferenceBothModes) {
  using T = TypeParam;
  for (bool deterministic : {false, true}) {
    std::unique_ptr<Gemm> gemm;
    ASSERT_EQ(Gemm::Create(nullptr, deterministic, &gemm), cudaSuccess);
    for (int64_t n : {1, 37}) {
      const int64_t k = 1002, m = 37 * 3;
      std::vector<T> x, w;
      std::vector<float> x_f, w_f;
      RandomRounded<T>(n * k, -1.0f, 1.0f, 1, &x, &x_f);
      RandomRounded<T>(m * k, -1.0f, 1.0f, 2, &w, &w_f);
      std::vector<float> ref(n * m);
      ref::Matmul(x_f.data(), w_f.data(), nullptr, n, k, m, ref.data());
      DeviceBuffer<T> d_x(x), d_w(w), d_out(n * m);
      GemmParams p;
      p.in_type = p.out_type = TypeOf<T>();
      p.x = d_x.get();
      p.w = d_w.get();
      p.out = d_out.get();
      p.n = n;
      p.k = k;
      p.m = m;
      ASSERT_EQ(gemm->Run(p), cudaSuccess);
      // k = 1002 products: the tolerance grows with sqrt(k) for rounding-order differences.
      ExpectCloseT(d_out.Download(), ref, "gemm n " + std::to_string(n), 10.0f);
      // fp32 output from the same inputs.
      DeviceBuffer<float> d_out32(n * m);
      p.out_type = DataType::kF32;
      p.out = d_out32.get();
      ASSERT_EQ(gemm->Run(p), cudaSuccess);
      ExpectClose(d_out32.Download(), ref, Tol<T>::kAtol * 10, Tol<T>::kRtol * 10, "gemm f32 out");
    }
  }
}

TYPED_TEST(GemmTest, DeterministicIsBatchInvariant) {
  using T = TypeParam;
  std::unique_ptr<Gemm> gemm;
  ASSERT_EQ(Gemm::Create(nullptr, /*deterministic=*/true, &gemm), cudaSuccess);
  const int64_t k = 4096, m = 1024, max_n = 257;
  std::vector<T> x, w;
  std::vector<float> x_f, w_f;
  RandomRounded<T>(max_n * k, -1.0f, 1.0f, 3, &x, &x_f);
  RandomRounded<T>(m * k, -1.0f, 1.0f, 4, &w, &w_f);
  DeviceBuffer<T> d_x(x), d_w(w);
  std::vector<float> first_row;
  for (int64_t n : {1, 2, 7, 64, 128, 257}) {
    DeviceBuffer<T> d_out(n * m);
    GemmParams p;
    p.in_type = p.out_type = TypeOf<T>();
    p.x = d_x.get();
    p.w = d_w.get();
    p.out = d_out.get();
    p.n = n;
    p.k = k;
    p.m = m;
    ASSERT_EQ(gemm->Run(p), cudaSuccess) << "n " << n;
    const std::vector<float> out = ToFloatVec(d_out.Download());
    const std::vector<float> row0(out.begin(), out.begin() + m);
    if (first_row.empty()) {
      first_row = row0;
    } else {
      for (int64_t j = 0; j < m; ++j) ASSERT_EQ(row0[j], first_row[j]) << "n " << n << " col " << j;
    }
  }
}

}  // namespace
}  // namespace tandem::cuda::testing

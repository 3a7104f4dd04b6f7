#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "tandem/kernels/cuda/gemm.h"

namespace tandem::cuda {
namespace {

cudaDataType_t ToCuda(DataType t) {
  switch (t) {
    case DataType::kF32:
      return CUDA_R_32F;
    case DataType::kF16:
      return CUDA_R_16F;
    case DataType::kBF16:
      return CUDA_R_16BF;
  }
  return CUDA_R_32F;
}

// RAII holders for the cuBLASLt descriptors of one call.
struct Descs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  ~Descs() {
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

// Row-major out[n, m] = x[n, k] · w[m, k]^T is, in cuBLAS's column-major terms,
// out^T[m, n] = op_T(A) · B with A = w viewed as [k, m] (ld k) and B = x viewed as [k, n] (ld k).
cudaError_t MakeDescs(const GemmParams& p, int64_t n, Descs* d) {
  TANDEM_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&d->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  TANDEM_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSA,
                                                               &trans_a, sizeof(trans_a)));
  TANDEM_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSB,
                                                               &trans_b, sizeof(trans_b)));
  const cudaDataType_t in = ToCuda(p.in_type), out = ToCuda(p.out_type);
  TANDEM_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&d->a, in, p.k, p.m, p.k));
  TANDEM_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&d->b, in, p.k, n, p.k));
  TANDEM_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&d->c, out, p.m, n, p.m));
  return cudaSuccess;
}

// Largest power of two (<= 256) dividing every pointer: cuBLASLt's heuristic otherwise assumes
// 256-byte aligned operands.
uint32_t Alignment(const GemmParams& p) {
  const uintptr_t bits = reinterpret_cast<uintptr_t>(p.x) | reinterpret_cast<uintptr_t>(p.w) |
                         reinterpret_cast<uintptr_t>(p.out) | uintptr_t{256};
  return static_cast<uint32_t>(bits & (~bits + 1));
}

// Deterministic mode picks one algorithm for all calls, so it assumes this much alignment
// (and rejects less) instead of the alignment of the first call's pointers.
constexpr uint32_t kDeterministicAlignment = 16;

}  // namespace

struct Gemm::Impl {
  cudaStream_t stream = nullptr;
  bool deterministic = false;
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Key: (n or -1 in deterministic mode, m, k, in, out, alignment).
  std::map<std::tuple<int64_t, int64_t, int64_t, int, int, uint32_t>, cublasLtMatmulAlgo_t> algos;

  ~Impl() {
    if (workspace != nullptr) cudaFree(workspace);
    if (handle != nullptr) cublasLtDestroy(handle);
  }

  cudaError_t FindAlgo(const GemmParams& p, cublasLtMatmulAlgo_t* algo) {
    const int64_t key_n = deterministic ? -1 : p.n;
    const uint32_t align = deterministic ? kDeterministicAlignment : Alignment(p);
    const auto key = std::make_tuple(key_n, p.m, p.k, static_cast<int>(p.in_type),
                                     static_cast<int>(p.out_type), align);
    if (auto it = algos.find(key); it != algos.end()) {
      *algo = it->second;
      return cudaSuccess;
    }
    Descs d;
    TANDEM_CUDA_RETURN_IF_ERROR(MakeDescs(p, deterministic ? kDeterministicRefRows : p.n, &d));
    cublasLtMatmulPreference_t pref = nullptr;
    TANDEM_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = workspace_bytes;
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    for (const auto attr :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
      if (st == CUBLAS_STATUS_SUCCESS) {
        st = cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align));
      }
    }
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS) {
      st = cublasLtMatmulAlgoGetHeuristic(handle, d.op, d.a, d.b, d.c, d.c, pref, 1, &result,
                                          &found);
    }
    cublasLtMatmulPreferenceDestroy(pref);
    TANDEM_CUBLAS_RETURN_IF_ERROR(st);
    if (found == 0) return cudaErrorNotSupported;
    if (deterministic) {
      // Pin the reduction order: no split-K, no split-K reduction scheme.
      const uint32_t splitk = 1;
      const uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_NONE;
      cublasLtMatmulAlgoConfigSetAttribute(&result.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk,
                                           sizeof(splitk));
      cublasLtMatmulAlgoConfigSetAttribute(&result.algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
                                           &scheme, sizeof(scheme));
    }
    algos.emplace(key, result.algo);
    *algo = result.algo;
    return cudaSuccess;
  }
};

Gemm::Gemm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Gemm::~Gemm() = default;
bool Gemm::deterministic() const { return impl_->deterministic; }
cudaStream_t Gemm::stream() const { return impl_->stream; }

cudaError_t Gemm::Create(cudaStream_t stream, bool deterministic, std::unique_ptr<Gemm>* out) {
  auto impl = std::make_unique<Impl>();
  impl->stream = stream;
  impl->deterministic = deterministic;
  TANDEM_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&impl->handle));
  if (!deterministic) {
    impl->workspace_bytes = kFastWorkspaceBytes;
    TANDEM_CUDA_RETURN_IF_ERROR(cudaMalloc(&impl->workspace, impl->workspace_bytes));
  }
  out->reset(new Gemm(std::move(impl)));
  return cudaSuccess;
}

cudaError_t Gemm::Run(const GemmParams& p) {
  if (p.x == nullptr || p.w == nullptr || p.out == nullptr || p.n < 0 || p.k <= 0 || p.m <= 0 ||
      (p.out_type != p.in_type && p.out_type != DataType::kF32)) {
    return cudaErrorInvalidValue;
  }
  if (p.n == 0) return cudaSuccess;
  if (impl_->deterministic && Alignment(p) < kDeterministicAlignment) return cudaErrorInvalidValue;
  cublasLtMatmulAlgo_t algo;
  TANDEM_CUDA_RETURN_IF_ERROR(impl_->FindAlgo(p, &algo));
  Descs d;
  TANDEM_CUDA_RETURN_IF_ERROR(MakeDescs(p, p.n, &d));
  if (impl_->deterministic) {
    cublasLtMatmulHeuristicResult_t check{};
    TANDEM_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulAlgoCheck(impl_->handle, d.op, d.a, d.b, d.c, d.c, &algo, &check));
    if (check.workspaceSize > impl_->workspace_bytes) return cudaErrorNotSupported;
  }
  TANDEM_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmul(impl_->handle, d.op, &p.alpha, p.w, d.a, p.x, d.b, &p.beta, p.out, d.c, p.out,
                     d.c, &algo, impl_->workspace, impl_->workspace_bytes, impl_->stream));
  return cudaSuccess;
}

}  // namespace tandem::cuda

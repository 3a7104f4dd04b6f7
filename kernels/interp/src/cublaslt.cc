// The fake cuBLASLt: what kernels/src/cuda/gemm.cu calls, computed on the CPU.
//
// D = alpha * op(A) * op(B) + beta * C in cuBLAS's column-major terms, for f32 / f16 / bf16
// inputs (A and B of one type) and an output of the input type or f32. Every element is one
// fp32 accumulator over k = 0..K-1 in order (products rounded to fp32, no fused multiply-add),
// so a row of the result never depends on the other rows (batch-invariant in every mode), and
// the algorithm / split-K attributes change nothing. The work is enqueued on the stream like
// any other device work, so it is captured into graphs.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>
#include <new>
#include <vector>

#include "tandem/kernels/interp/runtime.h"

struct cublasLtContext {
  int magic = 0x7a11;
};

namespace {

struct Layout {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};
static_assert(sizeof(Layout) <= sizeof(cublasLtMatrixLayoutOpaque_t));

struct MatmulDesc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  cublasOperation_t trans_a, trans_b;
};
static_assert(sizeof(MatmulDesc) <= sizeof(cublasLtMatmulDescOpaque_t));

constexpr uint64_t kAlgoMagic = 0x54616e64656d4c74ull;  // "TandemLt"

Layout* L(cublasLtMatrixLayout_t p) { return reinterpret_cast<Layout*>(p); }
MatmulDesc* M(cublasLtMatmulDesc_t p) { return reinterpret_cast<MatmulDesc*>(p); }

bool Supported(cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16F || t == CUDA_R_16BF; }

float Load(cudaDataType t, const void* base, size_t idx) {
  switch (t) {
    case CUDA_R_16F:
      return __half2float(static_cast<const __half*>(base)[idx]);
    case CUDA_R_16BF:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[idx]);
    default:
      return static_cast<const float*>(base)[idx];
  }
}

void Store(cudaDataType t, void* base, size_t idx, float v) {
  switch (t) {
    case CUDA_R_16F:
      static_cast<__half*>(base)[idx] = __float2half_rn(v);
      break;
    case CUDA_R_16BF:
      static_cast<__nv_bfloat16*>(base)[idx] = __float2bfloat16_rn(v);
      break;
    default:
      static_cast<float*>(base)[idx] = v;
      break;
  }
}

struct Shape {
  int64_t m, n, k;
};

cublasStatus_t Check(const MatmulDesc& d, const Layout& a, const Layout& b, const Layout& c,
                     const Layout& dl, Shape* s) {
  if (!Supported(a.type) || !Supported(dl.type) || a.type != b.type ||
      (dl.type != a.type && dl.type != CUDA_R_32F) || c.type != dl.type) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (d.compute != CUBLAS_COMPUTE_32F && d.compute != CUBLAS_COMPUTE_32F_PEDANTIC) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const bool ta = d.trans_a != CUBLAS_OP_N, tb = d.trans_b != CUBLAS_OP_N;
  const int64_t m = static_cast<int64_t>(ta ? a.cols : a.rows);
  const int64_t k = static_cast<int64_t>(ta ? a.rows : a.cols);
  const int64_t kb = static_cast<int64_t>(tb ? b.cols : b.rows);
  const int64_t n = static_cast<int64_t>(tb ? b.rows : b.cols);
  if (k != kb || static_cast<int64_t>(dl.rows) != m || static_cast<int64_t>(dl.cols) != n ||
      c.rows != dl.rows || c.cols != dl.cols) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  for (const Layout* l : {&a, &b, &c, &dl}) {
    if (l->ld < static_cast<int64_t>(l->rows) || l->ld < 1) return CUBLAS_STATUS_INVALID_VALUE;
  }
  *s = Shape{m, n, k};
  return CUBLAS_STATUS_SUCCESS;
}

void RunMatmul(const MatmulDesc d, const Layout a, const Layout b, const Layout c, const Layout dl,
               const Shape s, float alpha, float beta, const void* A, const void* B, const void* C,
               void* D) {
  const bool ta = d.trans_a != CUBLAS_OP_N, tb = d.trans_b != CUBLAS_OP_N;
  // at[l][i] = op(A)(i, l), bc[j][l] = op(B)(l, j): the inner loops then run over i, which
  // vectorizes without changing any element's summation order.
  std::vector<float> at(static_cast<size_t>(s.k) * s.m), bc(static_cast<size_t>(s.n) * s.k);
  for (int64_t i = 0; i < s.m; ++i) {
    for (int64_t l = 0; l < s.k; ++l) {
      const size_t idx = ta ? static_cast<size_t>(l + i * a.ld) : static_cast<size_t>(i + l * a.ld);
      at[l * s.m + i] = Load(a.type, A, idx);
    }
  }
  for (int64_t j = 0; j < s.n; ++j) {
    for (int64_t l = 0; l < s.k; ++l) {
      const size_t idx = tb ? static_cast<size_t>(j + l * b.ld) : static_cast<size_t>(l + j * b.ld);
      bc[j * s.k + l] = Load(b.type, B, idx);
    }
  }
  constexpr int64_t kBlock = 64;
  float acc[kBlock];
  for (int64_t j = 0; j < s.n; ++j) {
    const float* bj = bc.data() + j * s.k;
    for (int64_t i0 = 0; i0 < s.m; i0 += kBlock) {
      const int64_t len = std::min<int64_t>(kBlock, s.m - i0);
      for (int64_t ii = 0; ii < kBlock; ++ii) acc[ii] = 0.0f;
      for (int64_t l = 0; l < s.k; ++l) {
        const float bl = bj[l];
        const float* al = at.data() + l * s.m + i0;
        if (len == kBlock) {
          for (int64_t ii = 0; ii < kBlock; ++ii) acc[ii] += al[ii] * bl;
        } else {
          for (int64_t ii = 0; ii < len; ++ii) acc[ii] += al[ii] * bl;
        }
      }
      for (int64_t ii = 0; ii < len; ++ii) {
        const int64_t i = i0 + ii;
        float v = alpha * acc[ii];
        if (beta != 0.0f) v += beta * Load(c.type, C, static_cast<size_t>(i + j * c.ld));
        Store(dl.type, D, static_cast<size_t>(i + j * dl.ld), v);
      }
    }
  }
}

}  // namespace

extern "C" {

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "CUBLAS_STATUS_UNKNOWN";
  }
}

const char* cublasGetStatusString(cublasStatus_t status) { return cublasGetStatusName(status); }

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasLtContext();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  if (desc == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  if (scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  auto* opaque = new cublasLtMatmulDescOpaque_t();
  new (opaque) MatmulDesc{compute, scale, CUBLAS_OP_N, CUBLAS_OP_N};
  *desc = opaque;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              size_t size) {
  if (desc == nullptr || buf == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB: {
      if (size != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
      int32_t v;
      std::memcpy(&v, buf, sizeof(v));
      if (v != CUBLAS_OP_N && v != CUBLAS_OP_T) return CUBLAS_STATUS_NOT_SUPPORTED;
      (attr == CUBLASLT_MATMUL_DESC_TRANSA ? M(desc)->trans_a : M(desc)->trans_b) =
          static_cast<cublasOperation_t>(v);
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: {
      int32_t v = 0;
      std::memcpy(&v, buf, std::min(size, sizeof(v)));
      return v == CUBLASLT_POINTER_MODE_HOST ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
    }
    case CUBLASLT_MATMUL_DESC_EPILOGUE: {
      uint32_t v = 0;
      std::memcpy(&v, buf, std::min(size, sizeof(v)));
      return v == CUBLASLT_EPILOGUE_DEFAULT ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
    }
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;  // not modelled: fail loudly rather than ignore
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
  if (layout == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  if (ld < static_cast<int64_t>(rows)) return CUBLAS_STATUS_INVALID_VALUE;
  auto* opaque = new cublasLtMatrixLayoutOpaque_t();
  new (opaque) Layout{type, rows, cols, ld};
  *layout = opaque;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  if (pref == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *pref = new cublasLtMatmulPreferenceOpaque_t();
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete pref;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, size_t size) {
  (void)attr;
  if (pref == nullptr || buf == nullptr || size == 0) return CUBLAS_STATUS_INVALID_VALUE;
  return CUBLAS_STATUS_SUCCESS;  // workspace and alignment limits: the CPU needs neither
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[],
                                              int* returned) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (desc == nullptr || a == nullptr || b == nullptr || c == nullptr || d == nullptr ||
      pref == nullptr || requested <= 0 || results == nullptr || returned == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  Shape s;
  if (const cublasStatus_t st = Check(*M(desc), *L(a), *L(b), *L(c), *L(d), &s);
      st != CUBLAS_STATUS_SUCCESS) {
    return st;
  }
  std::memset(&results[0], 0, sizeof(results[0]));
  results[0].algo.data[0] = kAlgoMagic;
  results[0].algo.data[1] = 0;  // split-K (0 = the algorithm's choice)
  results[0].workspaceSize = 0;
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *returned = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoConfigSetAttribute(cublasLtMatmulAlgo_t* algo,
                                                    cublasLtMatmulAlgoConfigAttributes_t attr,
                                                    const void* buf, size_t size) {
  if (algo == nullptr || buf == nullptr || algo->data[0] != kAlgoMagic) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  uint64_t v = 0;
  std::memcpy(&v, buf, std::min(size, sizeof(v)));
  if (attr == CUBLASLT_ALGO_CONFIG_SPLITK_NUM) algo->data[1] = v;
  if (attr == CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME) algo->data[2] = v;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoCheck(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                       cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                       cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                       const cublasLtMatmulAlgo_t* algo,
                                       cublasLtMatmulHeuristicResult_t* result) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (desc == nullptr || a == nullptr || b == nullptr || c == nullptr || d == nullptr ||
      algo == nullptr || result == nullptr || algo->data[0] != kAlgoMagic) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  Shape s;
  if (const cublasStatus_t st = Check(*M(desc), *L(a), *L(b), *L(c), *L(d), &s);
      st != CUBLAS_STATUS_SUCCESS) {
    return st;
  }
  std::memset(result, 0, sizeof(*result));
  result->algo = *algo;
  result->workspaceSize = 0;
  result->state = CUBLAS_STATUS_SUCCESS;
  result->wavesCount = 1.0f;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t a, const void* B,
                              cublasLtMatrixLayout_t b, const void* beta, const void* C,
                              cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t* algo, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream) {
  (void)workspace;
  (void)workspace_bytes;
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (desc == nullptr || a == nullptr || b == nullptr || c == nullptr || d == nullptr ||
      alpha == nullptr || beta == nullptr || A == nullptr || B == nullptr || D == nullptr ||
      (algo != nullptr && algo->data[0] != kAlgoMagic)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  Shape s;
  if (const cublasStatus_t st = Check(*M(desc), *L(a), *L(b), *L(c), *L(d), &s);
      st != CUBLAS_STATUS_SUCCESS) {
    return st;
  }
  float al, be;
  std::memcpy(&al, alpha, sizeof(al));  // pointer mode host: read at call time
  std::memcpy(&be, beta, sizeof(be));
  if (be != 0.0f && C == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  const cudaError_t e = tandem::interp::Enqueue(
      stream, [md = *M(desc), la = *L(a), lb = *L(b), lc = *L(c), ld = *L(d), s, al, be, A, B, C,
               D] { RunMatmul(md, la, lb, lc, ld, s, al, be, A, B, C, D); });
  return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

}  // extern "C"

// cuBLASLt, loaded on first use. libcublasLt is ~500 MB; linked directly it is mapped and
// relocated at every process start (~210 MB resident before main), which every binary that
// carries the CUDA backend would pay even when it runs on the CPU. These definitions of the
// cuBLASLt functions gemm.cu calls dlopen the library the first time one is called and forward
// to it; without the library they return CUBLAS_STATUS_NOT_INITIALIZED after printing why once.
#include <cublasLt.h>
#include <dlfcn.h>

#include <cstdio>
#include <mutex>

namespace {

void* Library() {
  static void* handle = [] {
    void* h = nullptr;
    for (const char* name :
         {"libcublasLt.so.13", "/usr/local/cuda/lib64/libcublasLt.so.13", "libcublasLt.so"}) {
      h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (h != nullptr) break;
    }
    if (h == nullptr) {
      std::fprintf(stderr, "tandem: cannot load cuBLASLt (libcublasLt.so.13): %s\n", dlerror());
    }
    return h;
  }();
  return handle;
}

template <typename Fn>
Fn Resolve(const char* name) {
  void* lib = Library();
  if (lib == nullptr) return nullptr;
  void* sym = dlsym(lib, name);
  if (sym == nullptr) std::fprintf(stderr, "tandem: cuBLASLt lacks %s\n", name);
  return reinterpret_cast<Fn>(sym);
}

}  // namespace

// Defines `name` with parameters `params`, forwarding `args` to the library's symbol.
#define TANDEM_CUBLASLT_FORWARD(name, params, args)                 \
  extern "C" cublasStatus_t CUBLASWINAPI name params {              \
    static const auto fn = Resolve<decltype(&name)>(#name);         \
    return fn != nullptr ? fn args : CUBLAS_STATUS_NOT_INITIALIZED; \
  }

TANDEM_CUBLASLT_FORWARD(cublasLtCreate, (cublasLtHandle_t * handle), (handle))
TANDEM_CUBLASLT_FORWARD(cublasLtDestroy, (cublasLtHandle_t handle), (handle))
TANDEM_CUBLASLT_FORWARD(cublasLtMatmulDescCreate,
                        (cublasLtMatmulDesc_t * desc, cublasComputeType_t compute,
                         cudaDataType_t scale),
                        (desc, compute, scale))
TANDEM_CUBLASLT_FORWARD(cublasLtMatmulDescDestroy, (cublasLtMatmulDesc_t desc), (desc))
TANDEM_CUBLASLT_FORWARD(cublasLtMatmulDescSetAttribute,
                        (cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                         const void* buf, size_t bytes),
                        (desc, attr, buf, bytes))
TANDEM_CUBLASLT_FORWARD(cublasLtMatrixLayoutCreate,
                        (cublasLtMatrixLayout_t * layout, cudaDataType type, uint64_t rows,
                         uint64_t cols, int64_t ld),
                        (layout, type, rows, cols, ld))
TANDEM_CUBLASLT_FORWARD(cublasLtMatrixLayoutDestroy, (cublasLtMatrixLayout_t layout), (layout))
TANDEM_CUBLASLT_FORWARD(cublasLtMatmulPreferenceCreate, (cublasLtMatmulPreference_t * pref), (pref))
TANDEM_CUBLASLT_FORWARD(cublasLtMatmulPreferenceDestroy, (cublasLtMatmulPreference_t pref), (pref))
TANDEM_CUBLASLT_FORWARD(cublasLtMatmulPreferenceSetAttribute,
                        (cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
                         const void* buf, size_t bytes),
                        (pref, attr, buf, bytes))
TANDEM_CUBLASLT_FORWARD(cublasLtMatmulAlgoGetHeuristic,
                        (cublasLtHandle_t handle, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                         cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                         cublasLtMatrixLayout_t d, cublasLtMatmulPreference_t pref, int requested,
                         cublasLtMatmulHeuristicResult_t results[], int* returned),
                        (handle, op, a, b, c, d, pref, requested, results, returned))
TANDEM_CUBLASLT_FORWARD(cublasLtMatmulAlgoConfigSetAttribute,
                        (cublasLtMatmulAlgo_t * algo, cublasLtMatmulAlgoConfigAttributes_t attr,
                         const void* buf, size_t bytes),
                        (algo, attr, buf, bytes))
TANDEM_CUBLASLT_FORWARD(cublasLtMatmulAlgoCheck,
                        (cublasLtHandle_t handle, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                         cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                         cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t* algo,
                         cublasLtMatmulHeuristicResult_t* result),
                        (handle, op, a, b, c, d, algo, result))
TANDEM_CUBLASLT_FORWARD(cublasLtMatmul,
                        (cublasLtHandle_t handle, cublasLtMatmulDesc_t op, const void* alpha,
                         const void* a, cublasLtMatrixLayout_t adesc, const void* b,
                         cublasLtMatrixLayout_t bdesc, const void* beta, const void* c,
                         cublasLtMatrixLayout_t cdesc, void* d, cublasLtMatrixLayout_t ddesc,
                         const cublasLtMatmulAlgo_t* algo, void* workspace, size_t bytes,
                         cudaStream_t stream),
                        (handle, op, alpha, a, adesc, b, bdesc, beta, c, cdesc, d, ddesc, algo,
                         workspace, bytes, stream))

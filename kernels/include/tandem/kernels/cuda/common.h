// Shared pieces of the CUDA backend: the one error-macro family for CUDA and cuBLAS, the
// dtype tag, and the DISPATCH_* switches that turn runtime sizes into template parameters.
//
// Conventions of every launcher in tandem/kernels/cuda/*.h:
//  - `cudaError_t LaunchX(const XParams<T>&, cudaStream_t)`; T is float, __half or
//    __nv_bfloat16 (explicitly instantiated in the .cu), all arithmetic in fp32.
//  - Bad arguments return cudaErrorInvalidValue, an unsupported runtime size (a DISPATCH_*
//    default case) returns cudaErrorNotSupported; nothing is launched then.
//  - A launch is checked with cudaGetLastError; debug builds (no NDEBUG) also synchronize the
//    stream so that an asynchronous fault is reported by the launcher that caused it.
//  - Launchers never allocate: scratch memory is passed in by the caller (see *WorkspaceBytes).
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

namespace tandem::cuda {

enum class DataType { kF32, kF16, kBF16 };

// Maps a cuBLAS status to the closest cudaError_t, so cuBLAS calls report through the same
// return type as kernels.
inline cudaError_t CublasToCudaError(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return cudaSuccess;
    case CUBLAS_STATUS_INVALID_VALUE:
      return cudaErrorInvalidValue;
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return cudaErrorNotSupported;
    case CUBLAS_STATUS_ALLOC_FAILED:
      return cudaErrorMemoryAllocation;
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return cudaErrorInitializationError;
    default:
      return cudaErrorUnknown;
  }
}

// Our own names (cublasGetStatusName would tie every binary to libcublas, see
// src/cuda/cublaslt_loader.cc).
inline const char* CublasErrorName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED (is libcublasLt.so.13 installed?)";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "cuBLAS error";
  }
}
inline const char* CudaErrorName(cudaError_t e) { return cudaGetErrorString(e); }

}  // namespace tandem::cuda

// ---- One macro family (ggml CUDA_CHECK_GEN style) -----------------------------------------
// TANDEM_GPU_CHECK_GEN aborts with file:line and the library's message when `expr` does not
// return `success`. Use the *_CHECK forms in tests and tools, the *_RETURN_IF_ERROR forms in
// functions that return cudaError_t.
#define TANDEM_GPU_CHECK_GEN(expr, success, name_fn)                            \
  do {                                                                          \
    const auto tandem_gpu_status_ = (expr);                                     \
    if (tandem_gpu_status_ != (success)) {                                      \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, \
                   name_fn(tandem_gpu_status_));                                \
      std::abort();                                                             \
    }                                                                           \
  } while (0)

#define TANDEM_CUDA_CHECK(expr) \
  TANDEM_GPU_CHECK_GEN(expr, cudaSuccess, ::tandem::cuda::CudaErrorName)
#define TANDEM_CUBLAS_CHECK(expr) \
  TANDEM_GPU_CHECK_GEN(expr, CUBLAS_STATUS_SUCCESS, ::tandem::cuda::CublasErrorName)

#define TANDEM_CUDA_RETURN_IF_ERROR(expr)                         \
  do {                                                            \
    const cudaError_t tandem_cuda_err_ = (expr);                  \
    if (tandem_cuda_err_ != cudaSuccess) return tandem_cuda_err_; \
  } while (0)

#define TANDEM_CUBLAS_RETURN_IF_ERROR(expr)                        \
  do {                                                             \
    const cublasStatus_t tandem_cublas_st_ = (expr);               \
    if (tandem_cublas_st_ != CUBLAS_STATUS_SUCCESS)                \
      return ::tandem::cuda::CublasToCudaError(tandem_cublas_st_); \
  } while (0)

// After a kernel launch: report launch errors; in debug builds also wait for the kernel, except
// while the stream is being captured into a graph (synchronizing it would invalidate the capture).
#ifdef NDEBUG
#define TANDEM_CUDA_LAUNCH_CHECK(stream) TANDEM_CUDA_RETURN_IF_ERROR(cudaGetLastError())
#else
#define TANDEM_CUDA_LAUNCH_CHECK(stream)                                          \
  do {                                                                            \
    TANDEM_CUDA_RETURN_IF_ERROR(cudaGetLastError());                              \
    cudaStreamCaptureStatus tandem_capture_ = cudaStreamCaptureStatusNone;        \
    TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamIsCapturing(stream, &tandem_capture_)); \
    if (tandem_capture_ == cudaStreamCaptureStatusNone) {                         \
      TANDEM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));                 \
    }                                                                             \
  } while (0)
#endif

// ---- DISPATCH_* switches --------------------------------------------------------------------
// Each binds a constexpr name to the runtime value and runs the body; the default case returns
// cudaErrorNotSupported from the enclosing launcher (which must return cudaError_t).
#define TANDEM_DISPATCH_HEAD_DIM(head_dim, HEAD_DIM, ...) \
  switch (head_dim) {                                     \
    case 64: {                                            \
      constexpr int HEAD_DIM = 64;                        \
      __VA_ARGS__                                         \
      break;                                              \
    }                                                     \
    case 128: {                                           \
      constexpr int HEAD_DIM = 128;                       \
      __VA_ARGS__                                         \
      break;                                              \
    }                                                     \
    default:                                              \
      return cudaErrorNotSupported;                       \
  }

#define TANDEM_DISPATCH_BOOL(cond, NAME, ...) \
  if (cond) {                                 \
    constexpr bool NAME = true;               \
    __VA_ARGS__                               \
  } else {                                    \
    constexpr bool NAME = false;              \
    __VA_ARGS__                               \
  }

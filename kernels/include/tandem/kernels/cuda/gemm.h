// Small cuBLASLt GEMM wrapper for Linear layers: out[n, m] = alpha * x[n, k] · w[m, k]^T
// (+ beta * out), row-major, w in PyTorch Linear layout. Reference: tandem::ref::Matmul
// (without bias).
//
// Inputs fp32, fp16 or bf16 (x and w the same type); the output is the input type or fp32;
// accumulation is always fp32 (CUBLAS_COMPUTE_32F: strict fp32 for fp32 inputs, never TF32).
//
// One Gemm per stream: it owns a cuBLASLt handle, its workspace and an algorithm cache, and is
// not thread-safe (like the stream it is bound to).
//
// Modes:
//  - fast (deterministic = false): the cuBLASLt heuristic picks an algorithm per (n, m, k,
//    dtypes), with a 32 MiB workspace, so split-K and its reduction scheme may change with the
//    batch size n. Run-to-run reproducible for identical shapes, NOT batch-invariant.
//  - deterministic = true: one algorithm per (m, k, dtypes), chosen once by the heuristic for
//    a reference batch (kDeterministicRefRows) with NO workspace and then forced to split-K 1 /
//    no reduction scheme, and reused for every n (checked with cublasLtMatmulAlgoCheck; an n it
//    does not support returns cudaErrorNotSupported rather than silently switching). Each
//    output element is then one thread block's K loop in a fixed order whatever n is, so a
//    row's result does not depend on the batch (DESIGN.md Parity). Guaranteed only for one
//    GPU model + cuBLAS version (the heuristic's choice may differ elsewhere); not bit-equal to
//    the CPU reference. Pointers must be 16-byte aligned in this mode (else
//    cudaErrorInvalidValue). UNVERIFIED ON HARDWARE: that the heuristic's reference-shape algorithm
//    accepts every n, and the measured batch invariance, are to be checked by the GPU tests.
#pragma once

#include <cstdint>
#include <memory>

#include "tandem/kernels/cuda/common.h"

namespace tandem::cuda {

struct GemmParams {
  DataType in_type = DataType::kBF16;   // type of x and w
  DataType out_type = DataType::kBF16;  // in_type or kF32
  const void* x = nullptr;              // [n, k]
  const void* w = nullptr;              // [m, k]
  void* out = nullptr;                  // [n, m]
  int64_t n = 0;
  int64_t k = 0;
  int64_t m = 0;
  float alpha = 1.0f;
  float beta = 0.0f;  // out is read only when beta != 0
};

class Gemm {
 public:
  static constexpr int64_t kDeterministicRefRows = 128;
  static constexpr size_t kFastWorkspaceBytes = size_t{32} << 20;

  // Creates the handle (and, in fast mode, allocates the workspace) for `stream`.
  static cudaError_t Create(cudaStream_t stream, bool deterministic, std::unique_ptr<Gemm>* out);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Enqueues the product on the bound stream.
  cudaError_t Run(const GemmParams& p);

  bool deterministic() const;
  cudaStream_t stream() const;

 private:
  struct Impl;
  explicit Gemm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::cuda

// Token embedding lookup on the GPU. Reference: tandem::ref::Embedding.
#pragma once

#include <cstdint>

#include "tandem/kernels/cuda/common.h"

namespace tandem::cuda {

// out[i, :] = table[ids[i], :]; an id outside [0, vocab) gives a row of zeros.
template <typename T>
struct EmbeddingParams {
  const T* table = nullptr;      // [vocab, dim]
  const int32_t* ids = nullptr;  // [n]
  T* out = nullptr;              // [n, dim]
  int64_t n = 0;
  int64_t dim = 0;
  int64_t vocab = 0;
};

template <typename T>
cudaError_t LaunchEmbedding(const EmbeddingParams<T>& p, cudaStream_t stream);

}  // namespace tandem::cuda

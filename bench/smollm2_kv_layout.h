// SmolLM2-135M's KV page layout (30 layers, 3 KV heads, head_dim 64, f32, 16-token pages: 24 KiB
// pages), for the KV transfer benchmarks; `model_hash` names the run's model.
#pragma once

#include <cstdint>

#include "tandem/kvtransfer/layout.h"

namespace tandem {

inline KvPageLayout SmolLm2KvLayout(uint64_t model_hash) {
  KvPageLayout l;
  l.num_layers = 30;
  l.num_kv_heads = 3;
  l.head_dim = 64;
  l.page_size = 16;
  l.dtype = DType::kF32;
  l.model_hash = model_hash;
  return l;
}

}  // namespace tandem

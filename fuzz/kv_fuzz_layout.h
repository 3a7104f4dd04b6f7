// The KV page layout the KV transfer fuzz targets (kv_wire_fuzz.cc, kv_receiver_fuzz.cc) run
// against: 2 layers, 1 KV head of 4, 2 tokens per page, model fingerprint 0x1234. The seeds that
// tools/make_fuzz_corpus.py writes for them carry this layout.
#pragma once

#include "tandem/kvtransfer/layout.h"

namespace tandem::fuzz {

inline KvPageLayout FuzzKvLayout() {
  KvGeometry g;
  g.num_layers = 2;
  g.num_kv_heads = 1;
  g.head_dim = 4;
  g.page_size = 2;
  return MakeKvPageLayout(g, 0x1234);
}

}  // namespace tandem::fuzz

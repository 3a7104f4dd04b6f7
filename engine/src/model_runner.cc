#include "tandem/engine/model_runner.h"

namespace tandem {

int64_t ForwardBatch::NumTokens() const {
  int64_t n = static_cast<int64_t>(decode.size());
  for (const ForwardChunk& c : prefill) n += static_cast<int64_t>(c.tokens.size());
  return n;
}

int64_t ForwardBatch::NumLogitRows() const {
  int64_t n = static_cast<int64_t>(decode.size());
  for (const ForwardChunk& c : prefill) n += c.want_logits ? 1 : 0;
  return n;
}

Status ModelRunner::Forward(std::span<const ForwardChunk> chunks, KvCache& cache,
                            std::vector<float>* logits, const LayerWrittenFn& on_layer_written) {
  ForwardBatch batch;
  batch.prefill.assign(chunks.begin(), chunks.end());
  TANDEM_RETURN_IF_ERROR(Forward(batch, cache, on_layer_written));
  return CopyLogits(logits);
}

}  // namespace tandem

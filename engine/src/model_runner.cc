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

Status ValidateForwardBatch(const ForwardBatch& batch, const ModelConfig& c, int32_t page_size) {
  auto check = [&](const ForwardChunk& ch) -> Status {
    if (ch.tokens.empty()) return InvalidArgumentError("forward chunk has no tokens");
    const int64_t end = ch.start_pos + static_cast<int64_t>(ch.tokens.size());
    if (static_cast<int64_t>(ch.block_table.size()) * page_size < end) {
      return InvalidArgumentError("block table of {} blocks cannot hold position {}",
                                  ch.block_table.size(), end - 1);
    }
    if (end > c.max_position_embeddings && c.max_position_embeddings > 0) {
      return InvalidArgumentError("position {} exceeds max_position_embeddings {}", end - 1,
                                  c.max_position_embeddings);
    }
    for (int32_t token : ch.tokens) {
      if (token < 0 || token >= c.vocab_size) {
        return InvalidArgumentError("token id {} is outside the vocabulary [0, {})", token,
                                    c.vocab_size);
      }
    }
    return Status::Ok();
  };
  for (const ForwardChunk& ch : batch.decode) {
    if (ch.tokens.size() != 1 || !ch.want_logits) {
      return InvalidArgumentError("a decode row has exactly one token and wants logits");
    }
    TANDEM_RETURN_IF_ERROR(check(ch));
  }
  for (const ForwardChunk& ch : batch.prefill) TANDEM_RETURN_IF_ERROR(check(ch));
  return Status::Ok();
}

Status ModelRunner::Forward(std::span<const ForwardChunk> chunks, KvCache& cache,
                            std::vector<float>* logits, const LayerWrittenFn& on_layer_written) {
  ForwardBatch batch;
  batch.prefill.assign(chunks.begin(), chunks.end());
  TANDEM_RETURN_IF_ERROR(Forward(batch, cache, on_layer_written));
  return CopyLogits(logits);
}

KvGeometry KvGeometryOf(const ModelConfig& config, int32_t page_size, DType dtype) {
  KvGeometry g;
  g.num_layers = config.num_layers;
  g.num_kv_heads = config.num_kv_heads;
  g.head_dim = config.head_dim;
  g.page_size = page_size;
  g.dtype = dtype;
  return g;
}

}  // namespace tandem

// ModelRunner: the seam between the engine (tokenizer, sampler parameters, scheduling, block
// allocation) and a compute backend (CPU today; CUDA behind the same interface). See DESIGN.md
// "Engine backends".
//
// A backend owns its weights (it chooses their dtype and layout), its workspace and the logits
// of its last forward (they stay where they were computed; sampling is a backend call). K/V are
// written into the pages of a KvCache whose PagePool the backend created, and every layer's
// "K/V written" point is signalled so a KV sender can ship layer l while layer l+1 computes.
//
// Thread safety: one thread drives a runner (Forward, Sample, CopyLogits must not overlap); the
// runner may be moved between threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/kv_geometry.h"
#include "tandem/common/status.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/engine/model_config.h"
#include "tandem/engine/sampling.h"

namespace tandem {

// Tokens of one sequence at positions start_pos .. start_pos + tokens.size() - 1.
struct ForwardChunk {
  std::span<const int32_t> tokens;
  int64_t start_pos = 0;
  // The sequence's blocks; must cover every position up to start_pos + tokens.size() - 1.
  std::span<const int32_t> block_table;
  // Produce logits for the chunk's last token.
  bool want_logits = false;
};

// One step's work as planned (tandem/engine/batch_planner.h): decode rows — one token each,
// each wanting logits — apart from prefill chunks, so a GPU backend can run the decode part as
// a graph captured per batch-size bucket while the CPU backend runs both as one batch.
// Logits rows come out in this order: every decode row, then each prefill chunk with
// want_logits, in order.
struct ForwardBatch {
  std::vector<ForwardChunk> decode;
  std::vector<ForwardChunk> prefill;

  int64_t NumTokens() const;
  int64_t NumLogitRows() const;
  bool empty() const { return decode.empty() && prefill.empty(); }
};

// "K/V of `layer` are in the pages" for every chunk of the batch. The CPU backend calls it
// inline on the forward's thread right after the layer's write; a GPU backend calls it once the
// layer's write is enqueued, with the event recorded behind it available to the sender (never a
// host callback inside the forward).
using LayerWrittenFn = std::function<void(int32_t layer)>;

// What sampling one logits row needs (the row's sequence; spans must live through the call).
struct SampleRow {
  const SamplingParams* params = nullptr;
  std::span<const int32_t> prompt;
  std::span<const int32_t> generated;
  int64_t position = 0;  // the index the sampled token will occupy in its sequence
};

// The checks every backend's Forward makes on `batch` before it runs anything:
// INVALID_ARGUMENT naming the bad chunk (a decode row that is not one token wanting logits, no
// tokens, a block table too short for its positions, a position past max_position_embeddings,
// a token outside the vocabulary).
Status ValidateForwardBatch(const ForwardBatch& batch, const ModelConfig& config,
                            int32_t page_size);

// The KV geometry of `config`'s attention with `page_size` tokens per page of `dtype` elements:
// what every backend's KvGeometryFor returns, each with its own page dtype.
KvGeometry KvGeometryOf(const ModelConfig& config, int32_t page_size, DType dtype);

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;

  virtual const ModelConfig& config() const = 0;
  // For logs: backend, weight dtype, kernel target, e.g. "cpu: bf16 weights, AVX3".
  virtual std::string Describe() const = 0;
  // Bytes of weights as stored by the backend.
  virtual int64_t weight_bytes() const = 0;

  // Geometry of the pages this backend reads and writes, with `page_size` tokens per page.
  virtual KvGeometry KvGeometryFor(int32_t page_size) const = 0;
  // Page memory this backend computes on (host for the CPU backend, device memory for CUDA).
  // With `exportable`, memory other processes on this host may map through shared_fd(): a
  // memfd (HostPagePool "shm") for host backends, device memory of the CUDA virtual memory
  // API for CUDA (the cuda_ipc KV transport; UNAVAILABLE where the device cannot export it).
  virtual StatusOr<std::unique_ptr<PagePool>> CreatePagePool(const KvGeometry& geometry,
                                                             int32_t num_blocks,
                                                             bool exportable) = 0;
  // Not exportable. (Backends add `using ModelRunner::CreatePagePool;` to keep this visible.)
  StatusOr<std::unique_ptr<PagePool>> CreatePagePool(const KvGeometry& geometry,
                                                     int32_t num_blocks) {
    return CreatePagePool(geometry, num_blocks, /*exportable=*/false);
  }
  // Free bytes of the memory CreatePagePool allocates from, when the backend knows them (a GPU's
  // free memory after its weights); sizes the KV cache when none is asked for.
  virtual std::optional<int64_t> FreeMemoryBytes() const { return std::nullopt; }

  // Runs `batch`: writes the K/V of every input token into its sequence's pages and keeps the
  // logits rows (see ForwardBatch) for Sample / CopyLogits. INVALID_ARGUMENT names a bad chunk
  // (no tokens, token outside the vocabulary, block table too short, position past the
  // context); FAILED_PRECONDITION when `cache` was not made for this model.
  virtual Status Forward(const ForwardBatch& batch, KvCache& cache,
                         const LayerWrittenFn& on_layer_written = nullptr) = 0;
  // Samples logits row r of the last Forward with rows[r], into (*out)[r]. INVALID_ARGUMENT
  // when there are more rows than the last Forward produced.
  virtual Status Sample(std::span<const SampleRow> rows, std::vector<SampleResult>* out) = 0;
  // Host copy of the last Forward's logits, [NumLogitRows, vocab].
  virtual Status CopyLogits(std::vector<float>* out) const = 0;

  // Convenience for tools and tests: runs `chunks` in the given order (all as prefill chunks)
  // and copies the logits out ([chunks with want_logits, vocab], in chunk order).
  Status Forward(std::span<const ForwardChunk> chunks, KvCache& cache, std::vector<float>* logits,
                 const LayerWrittenFn& on_layer_written = nullptr);
};

}  // namespace tandem

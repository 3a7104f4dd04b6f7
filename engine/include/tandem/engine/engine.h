// Engine: a loaded model (config, weights, tokenizer) with its KV cache and forward pass.
// Generator: continuous batching over an Engine in one process — requests join and leave at
// every step, prompts are prefilled in chunks under a token budget beside the decode rows.
#pragma once

#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/detokenizer.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/engine/model_config.h"
#include "tandem/engine/model_runner.h"
#include "tandem/engine/prefix_cache.h"
#include "tandem/engine/sampling.h"
#include "tandem/engine/text_stream.h"
#include "tandem/engine/tokenizer.h"

namespace tandem {

enum class Device { kCpu, kCuda };

struct EngineOptions {
  // Which backend computes: the CPU, or a CUDA GPU (tandem/engine/cuda_runner.h). Default: CPU.
  Device device = Device::kCpu;
  // CUDA only: device ordinal, and batch-invariant (deterministic) kernels.
  int32_t cuda_device = 0;
  bool deterministic = false;
  // Tokens per KV page. Default: 16.
  int32_t page_size = 16;
  // Memory for the KV cache; 0 = 90% of the backend's free memory after the weights (a GPU's;
  // the CPU backend needs an explicit size). Default: 256 MiB.
  int64_t kv_cache_bytes = int64_t{256} << 20;
  // Host KV pages in shared memory (a memfd, HostPagePool "shm") that same-host KV senders may
  // write into (the shm transport). CPU device only; a CUDA decode worker shares its staging
  // mirror instead. Default: false.
  bool kv_shared_memory = false;
  // CUDA: the KV pages are exportable device memory (shared_fd() is its POSIX fd) for the
  // cuda_ipc transport; Engine::Load fails UNAVAILABLE where the device cannot export memory.
  // Host backends: the same as kv_shared_memory. Default: false.
  bool kv_device_export = false;
  // Compute threads; 0 = every core. Default: 0.
  int32_t num_threads = 0;
  // How the backend stores weight matrices. CPU: f32, bf16, q8_0, q4_0, q4_1 (compute is f32);
  // default the checkpoint's own dtype. CUDA: f32, f16 or bf16 (compute in that dtype with f32
  // accumulation); default bf16.
  std::optional<DType> weights;
  // A compute profile (tandem/engine/sim_runner.h): when set, the forward pass is simulated from
  // it — no weights are read, KV pages are still written and moved — and `device`, `weights` and
  // `num_threads` are ignored. The model hash then covers config.json and the marker
  // "simulated", so simulated and real workers never exchange KV pages. Default: unset.
  std::filesystem::path simulate_compute;
  // Keep the K/V of full prompt blocks after their request ends and reuse them for prompts
  // that share the prefix (PrefixCache; Generator::Add and the prefill worker use it).
  // Default: true.
  bool prefix_cache = true;
};

class Engine {
 public:
  // Loads config, weights and (when the checkpoint has one) the tokenizer from `dir`, a checkpoint
  // folder or a .gguf file (see LoadModelConfig, Checkpoint::Open, LoadTokenizer), and creates
  // the backend (CPU) with its KV cache.
  static StatusOr<std::unique_ptr<Engine>> Load(const std::filesystem::path& dir,
                                                const EngineOptions& options);

  const ModelConfig& config() const { return config_; }
  // nullptr when the checkpoint folder has no tokenizer.
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }
  ModelRunner& runner() { return *runner_; }
  KvCache& kv_cache() { return *kv_cache_; }
  // The prefix cache over kv_cache()'s blocks; nullptr when EngineOptions::prefix_cache is off.
  PrefixCache* prefix_cache() { return prefix_cache_.get(); }
  // KV blocks held by requests: blocks in use minus cached blocks nobody uses (those are free
  // for the taking: an allocation evicts them). 0 when no request holds pages.
  int32_t kv_blocks_in_use() const;
  const std::filesystem::path& dir() const { return dir_; }
  // Token ids that end generation (generation_config's eos, else the tokenizer's).
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  // Identifies the checkpoint (ModelHash: config, weight headers and a sample of every tensor;
  // see model_identity.h): KV pages are exchanged only between workers that agree on it.
  uint64_t model_hash() const { return model_hash_; }

 private:
  Engine() = default;
  std::filesystem::path dir_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<KvCache> kv_cache_;
  std::unique_ptr<PrefixCache> prefix_cache_;  // after kv_cache_: destroyed before it
  std::vector<int32_t> eos_ids_;
  uint64_t model_hash_ = 0;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  // Tokens to generate at most. Default: 256.
  int32_t max_tokens = 256;
  std::vector<int32_t> stop_token_ids;
  // Generation ends where the text contains one; the stop string itself is not returned.
  std::vector<std::string> stop_strings;
  // Keep going past EOS. Default: false.
  bool ignore_eos = false;
  // Tokens this request generated before it came here (a request resumed after its decode
  // worker failed): they follow the prompt in the sequence, their K/V are prefilled with the
  // prompt's, and they count as generated for penalties and for max_tokens (which still counts
  // from the request's start). Fewer than max_tokens. Only AddPrefilled takes them.
  std::vector<int32_t> generated;
};

enum class FinishReason { kNone, kLength, kStop, kCancelled };
std::string_view FinishReasonName(FinishReason r);

struct TokenEvent {
  int64_t request = 0;  // handle returned by Generator::Add
  int32_t token = -1;   // the sampled token
  std::string text;     // text that became final with this token (may be empty)
  SampleResult sample;  // logprob and top logprobs
  FinishReason finish = FinishReason::kNone;  // set on the request's last event
};

struct GeneratorOptions {
  // Token budget of one step (decode rows + prefill chunk tokens; see batch_planner.h).
  // Default: 512.
  int32_t max_batch_tokens = 512;
  // Sequences running at once. Default: 32.
  int32_t max_running = 32;
  // Largest prefill chunk of one sequence per step; 0 = the whole budget. Default: 0.
  int32_t max_chunk_tokens = 0;
  // With the engine's prefix cache: a prefilled request (AddPrefilled) gives the full blocks
  // of the K/V it arrived with (prompt, plus tokens generated before a failover) to the cache
  // when it ends, so a later prompt with that prefix can take them (the decode worker's
  // reservations). Default: false.
  bool cache_prefilled = false;
  // With cache_prefilled: the full blocks of the tokens this generator decoded are cached too.
  // Only for a backend whose decode rows write the K/V a prefill chunk would write for the same
  // tokens, bit for bit (batch-invariant: the CPU backend, tests/engine/decode_kv_parity_test),
  // else a later prompt would read K/V its cold run would not have. Default: false.
  bool cache_decoded = false;
};

// Pages are taken on demand: a sequence gets the blocks of its prefill when admitted and one
// more whenever a decode row needs it. When none is free (after evicting idle cached blocks),
// the youngest running sequence is preempted: its blocks go back (through the prefix cache,
// which keeps what it may) and it waits, ahead of younger requests, to recompute the K/V of
// every token it knows — one prefill whose last row gives its next token, as the decode row
// would have; on the CPU backend the tokens are the same as without the preemption
// (tests/engine/generator_preemption_test). A waiting sequence older than running ones
// preempts them to get its pages, so the oldest request always progresses.
//
// Not thread-safe: one thread drives Add / Step / Cancel.
class Generator {
 public:
  Generator(Engine& engine, const GeneratorOptions& options);
  ~Generator();

  // Validates and queues a request; returns its handle. With the engine's prefix cache on, the
  // request reuses the cached K/V of its prompt's longest cached prefix of full blocks (all but
  // the last token at most) and caches its prompt's full blocks once computed; the tokens are
  // the same with the cache cold or warm. INVALID_ARGUMENT naming the field
  // (empty prompt, prompt + max_tokens past the context, bad sampling values, token ids out of
  // the vocabulary); RESOURCE_EXHAUSTED when it could never fit in the KV cache.
  StatusOr<int64_t> Add(GenerationRequest request);
  // Queues a request whose prompt K/V (prompt + generated, when resumed) are already in
  // `blocks` (position order, covering at least those positions; more are taken as it grows)
  // and whose first generated
  // token `first_token` was sampled elsewhere (the prefill worker). On success the generator owns
  // `blocks` and releases them exactly once, on finish, cancel or destruction; on error nothing is
  // taken (the caller still owns them). The next Step emits the first token's event (text delta;
  // finish when it is EOS, a stop id / stop string, or max_tokens == 1 — then it gets no forward
  // row); otherwise the sequence joins that same step's decode rows. The first event's `sample`
  // carries only the token (logprob 0, no top logprobs): the sampler that chose it reports those.
  // Validation as Add, plus INVALID_ARGUMENT for too few blocks or a first token outside the
  // vocabulary. Prefilled requests are admitted ahead of requests still waiting for pages.
  StatusOr<int64_t> AddPrefilled(GenerationRequest request, std::vector<int32_t> blocks,
                                 int32_t first_token);
  // Ends a request now; its pages are freed and a kCancelled event is returned by the next Step.
  void Cancel(int64_t handle);
  // Runs one batched forward step and appends the resulting events.
  Status Step(std::vector<TokenEvent>* events);
  bool HasWork() const { return !waiting_.empty() || !running_.empty() || !cancelled_.empty(); }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  // Preemptions so far (a sequence preempted twice counts twice).
  int64_t num_preemptions() const { return num_preemptions_; }
  // Preempted sequences waiting for pages to recompute.
  int32_t num_preempted_waiting() const;

 private:
  struct Sequence;
  std::unique_ptr<TextStream> MakeTextStream(const GenerationRequest& req) const;
  Status Validate(const GenerationRequest& req) const;
  void Admit();
  // Blocks for a waiting sequence's prefill (a cached prefix first, with the prefix cache);
  // false (nothing taken) when there are too few.
  bool AllocateForPrefill(Sequence& s);
  // One more block at the end of s.blocks; false when none is free.
  bool AllocateOne(Sequence& s);
  // Index in running_ of the youngest sequence that may be preempted among those younger than
  // (with a handle above) `younger_than`; -1 when none.
  int32_t YoungestRunning(int64_t younger_than) const;
  // Moves running_[index] back to the waiting sequences, its blocks released.
  void Preempt(int32_t index);
  // Gives every sequence about to run a decode row the block it writes, oldest first,
  // preempting the youngest when none is free.
  void GrowForDecode();
  // Appends `ev.token` to `s`, fills the event's text and finish reason; on finish releases the
  // sequence's blocks and appends it to `done`.
  void AcceptToken(Sequence& s, TokenEvent& ev, std::vector<Sequence*>* done);
  // Gives the sequence's blocks back (through the prefix cache when there is one).
  void ReleaseBlocks(Sequence& s);
  // Caches the prompt's full blocks computed since the last offer (Add sequences only).
  void OfferToPrefixCache(Sequence& s);

  Engine& engine_;
  GeneratorOptions options_;
  int64_t next_handle_ = 0;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  std::vector<int64_t> cancelled_;
  int64_t num_preemptions_ = 0;
};

}  // namespace tandem

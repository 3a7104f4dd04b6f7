// The CUDA ModelRunner (see tandem/engine/cuda_runner.h). One stream per runner; every op of a
// forward is enqueued on it. Per layer:
//   normed = RmsNorm(x); qkv = normed · Wqkvᵀ (+ bias); RoPE on q, k; K/V into the pages;
//   attn = decode attention (decode rows) | paged prefill attention (prefill chunks);
//   x = attn · Woᵀ + x (the residual as the GEMM's beta = 1 epilogue);
//   normed = RmsNorm(x); gu = normed · [Wgate; Wup]ᵀ; act = SwiGLU(gu); x = act · Wdownᵀ + x.
// Then the logits rows are gathered (the embedding kernel as a row gather), normed, and
// multiplied by the head into f32 logits that stay on the device for Sample.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <vector>

#include <fmt/format.h>

#include "cuda/device_memory.h"
#include "cuda/host_weights.h"
#include "tandem/engine/cpu_ops.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/kernels/cuda/argmax.h"
#include "tandem/kernels/cuda/decode_attention.h"
#include "tandem/kernels/cuda/embedding.h"
#include "tandem/kernels/cuda/gemm.h"
#include "tandem/kernels/cuda/kv_write.h"
#include "tandem/kernels/cuda/paged_kv.h"
#include "tandem/kernels/cuda/prefill_attention.h"
#include "tandem/kernels/cuda/rmsnorm.h"
#include "tandem/kernels/cuda/rope.h"
#include "tandem/kernels/cuda/sampling.h"
#include "tandem/kernels/cuda/swiglu.h"
#include "tandem/kernels/ref/dequant.h"

namespace tandem::cuda_backend {

namespace {

using cuda::DataType;
using host_weights::FromFloat;
using host_weights::ToHost;
using host_weights::TypeTraits;

// Decode graphs are captured for batch sizes rounded up to one of these.
constexpr int32_t kGraphBuckets[] = {1, 2, 4, 8, 16, 32, 64, 128};

template <typename T>
class CudaRunner final : public ModelRunner {
 public:
  CudaRunner(const ModelConfig& config, const CudaRunnerOptions& options, std::string_view flavour)
      : config_(config), options_(options), flavour_(flavour) {}
  ~CudaRunner() override;

  Status Init(const ModelWeights& w);

  const ModelConfig& config() const override { return config_; }
  std::string Describe() const override {
    return fmt::format("{}: {} on {}, {} weights ({} MiB){}{}", flavour_, device_name_,
                       options_.device, DTypeName(TypeTraits<T>::kDType), weight_bytes_ >> 20,
                       options_.deterministic ? ", deterministic" : "",
                       options_.cuda_graphs ? ", decode graphs" : "");
  }
  int64_t weight_bytes() const override { return weight_bytes_; }

  KvGeometry KvGeometryFor(int32_t page_size) const override {
    return KvGeometryOf(config_, page_size, TypeTraits<T>::kDType);
  }
  using ModelRunner::CreatePagePool;
  StatusOr<std::unique_ptr<PagePool>> CreatePagePool(const KvGeometry& geometry, int32_t num_blocks,
                                                     bool exportable) override {
    TANDEM_CUDA_STATUS(cudaSetDevice(options_.device));
    TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<DevicePagePool> pool,
                            DevicePagePool::Create(geometry, num_blocks, exportable));
    return std::unique_ptr<PagePool>(std::move(pool));
  }
  std::optional<int64_t> FreeMemoryBytes() const override {
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) return std::nullopt;
    return static_cast<int64_t>(free);
  }

  Status Forward(const ForwardBatch& batch, KvCache& cache,
                 const LayerWrittenFn& on_layer_written) override;
  Status Sample(std::span<const SampleRow> rows, std::vector<SampleResult>* out) override;
  Status CopyLogits(std::vector<float>* out) const override;

 private:
  struct Layer {
    DeviceBuffer input_norm, qkv, qkv_bias, o, post_norm, gate_up, down;
  };
  // Per-step inputs, laid out in one device buffer so a captured graph reads fixed addresses.
  struct StepInputs {
    int32_t* tokens;      // [n]
    int32_t* positions;   // [n]
    int64_t* slots;       // [n] block * page_size + slot
    int32_t* tables;      // [batch, max_blocks]: decode rows, then prefill chunks
    int32_t* seq_lens;    // [decode rows]
    int32_t* q_indptr;    // [prefill chunks + 1]
    int32_t* kv_lens;     // [prefill chunks]
    int32_t* logit_rows;  // [logit rows]
  };
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    int32_t max_blocks = 0;
  };

  Status Upload(const WeightTensor& t, DeviceBuffer* out);
  Status UploadConcat(std::initializer_list<const WeightTensor*> parts, DeviceBuffer* out);
  // Everything of a forward after the inputs are on the device, enqueued on stream_.
  Status Enqueue(int32_t decode_rows, int32_t max_decode_len, int32_t prefill_chunks,
                 int32_t max_q_len, int64_t n, int64_t num_logit_rows, int32_t max_blocks,
                 const KvCache& cache, const LayerWrittenFn& on_layer_written);
  Status EnsureActivations(int64_t n, int64_t logit_rows, int32_t decode_rows,
                           int32_t max_decode_len, int32_t max_blocks);
  Status Gemm(const void* x, const DeviceBuffer& w, void* out, int64_t n, int64_t k, int64_t m,
              float beta, DataType out_type);

  ModelConfig config_;
  CudaRunnerOptions options_;
  std::string flavour_;
  std::string device_name_;
  int64_t weight_bytes_ = 0;
  int64_t q_dim_ = 0, kv_dim_ = 0, qkv_dim_ = 0;
  float scale_ = 0.0f;

  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Gemm> gemm_;
  std::vector<Layer> layers_;
  DeviceBuffer embed_, final_norm_, lm_head_, inv_freq_, ones_;
  std::vector<cudaEvent_t> layer_events_;

  // Activations (sized for the largest step so far) and the step inputs.
  int64_t act_rows_ = 0;
  DeviceBuffer x_, normed_, qkv_, attn_, gu_, act_, last_, logits_, attn_workspace_, inputs_;
  std::vector<std::byte> host_inputs_;
  StepInputs in_{};
  int64_t num_logit_rows_ = 0;
  std::map<int64_t, Graph> graphs_;  // (batch bucket << 32 | padded length) → captured step

  // Sampling scratch.
  DeviceBuffer sample_params_, history_, history_offsets_, prompt_lens_, sample_tokens_,
      sample_logprobs_, sample_workspace_;
};

template <typename T>
CudaRunner<T>::~CudaRunner() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  for (auto& [bucket, g] : graphs_) cudaGraphExecDestroy(g.exec);
  for (cudaEvent_t e : layer_events_) cudaEventDestroy(e);
  gemm_.reset();
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

template <typename T>
Status CudaRunner<T>::Upload(const WeightTensor& t, DeviceBuffer* out) {
  return UploadConcat({&t}, out);
}

template <typename T>
Status CudaRunner<T>::UploadConcat(std::initializer_list<const WeightTensor*> parts,
                                   DeviceBuffer* out) {
  std::vector<T> all;
  for (const WeightTensor* t : parts) {
    std::vector<T> h = ToHost<T>(*t);
    all.insert(all.end(), h.begin(), h.end());
  }
  TANDEM_RETURN_IF_ERROR(out->Allocate(all.size() * sizeof(T)));
  TANDEM_CUDA_STATUS(
      cudaMemcpy(out->get(), all.data(), all.size() * sizeof(T), cudaMemcpyHostToDevice));
  weight_bytes_ += static_cast<int64_t>(all.size() * sizeof(T));
  return Status::Ok();
}

template <typename T>
Status CudaRunner<T>::Init(const ModelWeights& w) {
  const ModelConfig& c = config_;
  if (c.head_dim != 64 && c.head_dim != 128) {
    return InvalidArgumentError("the CUDA backend supports head_dim 64 or 128, not {}", c.head_dim);
  }
  if (c.num_heads % c.num_kv_heads != 0 || c.num_heads / c.num_kv_heads > 16) {
    return InvalidArgumentError(
        "the CUDA backend needs heads / kv_heads to be a whole number <= 16 (got {} / {})",
        c.num_heads, c.num_kv_heads);
  }
  TANDEM_CUDA_STATUS(cudaSetDevice(options_.device));
  cudaDeviceProp prop{};
  TANDEM_CUDA_STATUS(cudaGetDeviceProperties(&prop, options_.device));
  device_name_ = prop.name;
  TANDEM_CUDA_STATUS(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  TANDEM_CUDA_STATUS(cuda::Gemm::Create(stream_, options_.deterministic, &gemm_));

  q_dim_ = int64_t{c.num_heads} * c.head_dim;
  kv_dim_ = int64_t{c.num_kv_heads} * c.head_dim;
  qkv_dim_ = q_dim_ + 2 * kv_dim_;
  scale_ = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  for (const LayerWeights& L : w.layers) {
    Layer D;
    TANDEM_RETURN_IF_ERROR(Upload(L.input_norm, &D.input_norm));
    TANDEM_RETURN_IF_ERROR(UploadConcat({&L.q_proj, &L.k_proj, &L.v_proj}, &D.qkv));
    if (L.q_bias.data != nullptr) {
      TANDEM_RETURN_IF_ERROR(UploadConcat({&L.q_bias, &L.k_bias, &L.v_bias}, &D.qkv_bias));
    }
    TANDEM_RETURN_IF_ERROR(Upload(L.o_proj, &D.o));
    TANDEM_RETURN_IF_ERROR(Upload(L.post_norm, &D.post_norm));
    TANDEM_RETURN_IF_ERROR(UploadConcat({&L.gate_proj, &L.up_proj}, &D.gate_up));
    TANDEM_RETURN_IF_ERROR(Upload(L.down_proj, &D.down));
    layers_.push_back(std::move(D));
  }
  TANDEM_RETURN_IF_ERROR(Upload(w.embed, &embed_));
  TANDEM_RETURN_IF_ERROR(Upload(w.final_norm, &final_norm_));
  if (w.lm_head.raw != w.embed.raw || w.lm_head.data != w.embed.data) {
    TANDEM_RETURN_IF_ERROR(Upload(w.lm_head, &lm_head_));
  }
  const std::vector<float> inv_freq = cpu::RopeInvFreq(c);
  TANDEM_RETURN_IF_ERROR(inv_freq_.Allocate(inv_freq.size() * sizeof(float)));
  TANDEM_CUDA_STATUS(cudaMemcpy(inv_freq_.get(), inv_freq.data(), inv_freq.size() * sizeof(float),
                                cudaMemcpyHostToDevice));
  layer_events_.resize(c.num_layers);
  for (cudaEvent_t& e : layer_events_) {
    TANDEM_CUDA_STATUS(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  return Status::Ok();
}

template <typename T>
Status CudaRunner<T>::Gemm(const void* x, const DeviceBuffer& w, void* out, int64_t n, int64_t k,
                           int64_t m, float beta, DataType out_type) {
  cuda::GemmParams p;
  p.in_type = TypeTraits<T>::kData;
  p.out_type = out_type;
  p.x = x;
  p.w = w.get();
  p.out = out;
  p.n = n;
  p.k = k;
  p.m = m;
  p.beta = beta;
  return CudaStatus(gemm_->Run(p), "GEMM");
}

template <typename T>
Status CudaRunner<T>::EnsureActivations(int64_t n, int64_t logit_rows, int32_t decode_rows,
                                        int32_t max_decode_len, int32_t max_blocks) {
  const ModelConfig& c = config_;
  const int64_t h = c.hidden_size, f = c.intermediate_size;
  if (n > act_rows_) {
    // Buffers in use by queued work must not be freed under it.
    TANDEM_CUDA_STATUS(cudaStreamSynchronize(stream_));
    const int64_t rows = std::max<int64_t>(n, 8);
    TANDEM_RETURN_IF_ERROR(x_.Allocate(rows * h * sizeof(T)));
    TANDEM_RETURN_IF_ERROR(normed_.Allocate(rows * h * sizeof(T)));
    TANDEM_RETURN_IF_ERROR(qkv_.Allocate(rows * qkv_dim_ * sizeof(T)));
    TANDEM_RETURN_IF_ERROR(attn_.Allocate(rows * q_dim_ * sizeof(T)));
    TANDEM_RETURN_IF_ERROR(gu_.Allocate(rows * 2 * f * sizeof(T)));
    TANDEM_RETURN_IF_ERROR(act_.Allocate(rows * f * sizeof(T)));
    std::vector<T> ones(rows, FromFloat<T>(1.0f));
    TANDEM_RETURN_IF_ERROR(ones_.Allocate(rows * sizeof(T)));
    TANDEM_CUDA_STATUS(
        cudaMemcpy(ones_.get(), ones.data(), rows * sizeof(T), cudaMemcpyHostToDevice));
    act_rows_ = rows;
    // Captured graphs point at the old buffers.
    for (auto& [bucket, g] : graphs_) cudaGraphExecDestroy(g.exec);
    graphs_.clear();
  }
  if (static_cast<size_t>(logit_rows) * h * sizeof(T) > last_.bytes() ||
      static_cast<size_t>(logit_rows) * c.vocab_size * sizeof(float) > logits_.bytes()) {
    TANDEM_CUDA_STATUS(cudaStreamSynchronize(stream_));
    TANDEM_RETURN_IF_ERROR(last_.Grow(logit_rows * h * sizeof(T)));
    TANDEM_RETURN_IF_ERROR(logits_.Grow(logit_rows * c.vocab_size * sizeof(float)));
    for (auto& [bucket, g] : graphs_) cudaGraphExecDestroy(g.exec);
    graphs_.clear();
  }
  if (decode_rows > 0) {
    cuda::DecodeAttentionParams<T> p;
    p.batch = decode_rows;
    p.heads = c.num_heads;
    p.cache.head_dim = c.head_dim;
    p.cache.kv_heads = c.num_kv_heads;
    p.max_seq_len = max_decode_len;
    p.deterministic = options_.deterministic;
    const size_t need = cuda::DecodeAttentionWorkspaceBytes(p);
    if (need > attn_workspace_.bytes()) {
      TANDEM_CUDA_STATUS(cudaStreamSynchronize(stream_));
      TANDEM_RETURN_IF_ERROR(attn_workspace_.Grow(need));
      for (auto& [bucket, g] : graphs_) cudaGraphExecDestroy(g.exec);
      graphs_.clear();
    }
  }
  (void)max_blocks;
  return Status::Ok();
}

template <typename T>
Status CudaRunner<T>::Enqueue(int32_t decode_rows, int32_t max_decode_len, int32_t prefill_chunks,
                              int32_t max_q_len, int64_t n, int64_t num_logit_rows,
                              int32_t max_blocks, const KvCache& cache,
                              const LayerWrittenFn& on_layer_written) {
  const ModelConfig& c = config_;
  const KvGeometry& kv = cache.geometry();
  const int64_t h = c.hidden_size, f = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  T* x = x_.template get<T>();
  T* normed = normed_.template get<T>();
  T* qkv = qkv_.template get<T>();
  T* attn = attn_.template get<T>();
  const DataType in_type = TypeTraits<T>::kData;

  cuda::EmbeddingParams<T> ep;
  ep.table = embed_.template get<T>();
  ep.ids = in_.tokens;
  ep.out = x;
  ep.n = n;
  ep.dim = h;
  ep.vocab = c.vocab_size;
  TANDEM_CUDA_STATUS(cuda::LaunchEmbedding(ep, stream_));

  cuda::PagedKv<T> paged;
  paged.base = reinterpret_cast<T*>(cache.pool().base());
  paged.num_blocks = cache.pool().num_blocks();
  paged.page_size = kv.page_size;
  paged.kv_heads = c.num_kv_heads;
  paged.head_dim = c.head_dim;

  int32_t pending = -1;  // the layer whose "written" signal waits for the next layer's enqueue
  for (int32_t li = 0; li < c.num_layers; ++li) {
    const Layer& L = layers_[li];
    paged.layer = li;
    cuda::RmsNormParams<T> np;
    np.x = x;
    np.weight = L.input_norm.template get<T>();
    np.out = normed;
    np.n = n;
    np.dim = h;
    np.eps = eps;
    TANDEM_CUDA_STATUS(cuda::LaunchRmsNorm(np, stream_));
    TANDEM_RETURN_IF_ERROR(Gemm(normed, L.qkv, qkv, n, h, qkv_dim_, 0.0f, in_type));
    if (L.qkv_bias.get() != nullptr) {
      // qkv += ones[n, 1] · bias[qkv_dim, 1]ᵀ: the bias added in f32, like the CPU's Linear.
      TANDEM_RETURN_IF_ERROR(Gemm(ones_.get(), L.qkv_bias, qkv, n, 1, qkv_dim_, 1.0f, in_type));
    }
    cuda::RopeParams<T> rp;
    rp.q = qkv;
    rp.k = qkv + q_dim_;
    rp.positions = in_.positions;
    rp.inv_freq = inv_freq_.template get<float>();
    rp.n = n;
    rp.heads = c.num_heads;
    rp.kv_heads = c.num_kv_heads;
    rp.head_dim = c.head_dim;
    rp.q_stride = qkv_dim_;
    rp.k_stride = qkv_dim_;
    TANDEM_CUDA_STATUS(cuda::LaunchRope(rp, stream_));
    cuda::KvWriteParams<T> kw;
    kw.cache = paged;
    kw.k = qkv + q_dim_;
    kw.v = qkv + q_dim_ + kv_dim_;
    kw.slot_mapping = in_.slots;
    kw.n = n;
    kw.k_stride = qkv_dim_;
    kw.v_stride = qkv_dim_;
    TANDEM_CUDA_STATUS(cuda::LaunchKvWrite(kw, stream_));
    if (on_layer_written) {
      TANDEM_CUDA_STATUS(cudaEventRecord(layer_events_[li], stream_));
      if (pending >= 0) {
        TANDEM_CUDA_STATUS(cudaEventSynchronize(layer_events_[pending]));
        on_layer_written(pending);
      }
      pending = li;
    }
    const int32_t window = c.SlidingWindowForLayer(li);
    if (decode_rows > 0) {
      cuda::DecodeAttentionParams<T> dp;
      dp.q = qkv;
      dp.out = attn;
      dp.cache = paged;
      dp.tables = {in_.tables, max_blocks};
      dp.seq_lens = in_.seq_lens;
      dp.batch = decode_rows;
      dp.heads = c.num_heads;
      dp.max_seq_len = max_decode_len;
      dp.window = window;
      dp.scale = scale_;
      dp.q_stride = qkv_dim_;
      dp.deterministic = options_.deterministic;
      dp.workspace = attn_workspace_.template get<float>();
      dp.workspace_bytes = attn_workspace_.bytes();
      TANDEM_CUDA_STATUS(cuda::LaunchDecodeAttention(dp, stream_));
    }
    if (prefill_chunks > 0) {
      cuda::PrefillAttentionParams<T> pp;
      pp.q = qkv + int64_t{decode_rows} * qkv_dim_;
      pp.out = attn + int64_t{decode_rows} * q_dim_;
      pp.cache = paged;
      pp.tables = {in_.tables + int64_t{decode_rows} * max_blocks, max_blocks};
      pp.q_indptr = in_.q_indptr;
      pp.kv_lens = in_.kv_lens;
      pp.batch = prefill_chunks;
      pp.heads = c.num_heads;
      pp.max_q_len = max_q_len;
      pp.window = window;
      pp.scale = scale_;
      pp.q_stride = qkv_dim_;
      TANDEM_CUDA_STATUS(cuda::LaunchPrefillAttention(pp, stream_));
    }
    TANDEM_RETURN_IF_ERROR(Gemm(attn, L.o, x, n, q_dim_, h, 1.0f, in_type));
    np.weight = L.post_norm.template get<T>();
    TANDEM_CUDA_STATUS(cuda::LaunchRmsNorm(np, stream_));
    TANDEM_RETURN_IF_ERROR(Gemm(normed, L.gate_up, gu_.get(), n, h, 2 * f, 0.0f, in_type));
    cuda::SwiGluParams<T> sp;
    sp.gate = gu_.template get<T>();
    sp.up = gu_.template get<T>() + f;
    sp.out = act_.template get<T>();
    sp.n = n;
    sp.f = f;
    sp.in_stride = 2 * f;
    TANDEM_CUDA_STATUS(cuda::LaunchSwiGlu(sp, stream_));
    TANDEM_RETURN_IF_ERROR(Gemm(act_.get(), L.down, x, n, f, h, 1.0f, in_type));
  }
  if (pending >= 0) {
    TANDEM_CUDA_STATUS(cudaEventSynchronize(layer_events_[pending]));
    on_layer_written(pending);
  }
  if (num_logit_rows == 0) return Status::Ok();
  cuda::EmbeddingParams<T> gather;  // a row gather: last[r] = x[logit_rows[r]]
  gather.table = x;
  gather.ids = in_.logit_rows;
  gather.out = last_.template get<T>();
  gather.n = num_logit_rows;
  gather.dim = h;
  gather.vocab = n;
  TANDEM_CUDA_STATUS(cuda::LaunchEmbedding(gather, stream_));
  cuda::RmsNormParams<T> fp;
  fp.x = last_.template get<T>();
  fp.weight = final_norm_.template get<T>();
  fp.out = last_.template get<T>();
  fp.n = num_logit_rows;
  fp.dim = h;
  fp.eps = eps;
  TANDEM_CUDA_STATUS(cuda::LaunchRmsNorm(fp, stream_));
  const DeviceBuffer& head = lm_head_.get() != nullptr ? lm_head_ : embed_;
  return Gemm(last_.get(), head, logits_.get(), num_logit_rows, h, c.vocab_size, 0.0f,
              DataType::kF32);
}

template <typename T>
Status CudaRunner<T>::Forward(const ForwardBatch& batch, KvCache& cache,
                              const LayerWrittenFn& on_layer_written) {
  const ModelConfig& c = config_;
  const KvGeometry& kv = cache.geometry();
  num_logit_rows_ = 0;
  // The thread that drives the runner may change (ModelRunner's contract): make its current
  // device ours before anything is enqueued.
  TANDEM_CUDA_STATUS(cudaSetDevice(options_.device));
  if (kv.num_layers != c.num_layers || kv.num_kv_heads != c.num_kv_heads ||
      kv.head_dim != c.head_dim || kv.dtype != TypeTraits<T>::kDType ||
      cache.pool().kind() != "cuda") {
    return FailedPreconditionError("KV cache ({} pages of {}) does not match the model's {}",
                                   cache.pool().kind(), DTypeName(kv.dtype),
                                   DTypeName(TypeTraits<T>::kDType));
  }
  if (batch.empty()) return Status::Ok();
  std::vector<int32_t> tokens, positions, seq_lens, q_indptr{0}, kv_lens, logit_rows;
  std::vector<int64_t> slots;
  int32_t max_blocks = 1, max_decode_len = 0, max_q_len = 0;
  TANDEM_RETURN_IF_ERROR(ValidateForwardBatch(batch, c, kv.page_size));
  // Flatten: rows' tokens, positions and page slots (blocks must lie in this pool).
  auto add = [&](const ForwardChunk& ch) -> Status {
    const int64_t end = ch.start_pos + static_cast<int64_t>(ch.tokens.size());
    for (size_t t = 0; t < ch.tokens.size(); ++t) {
      const int64_t pos = ch.start_pos + static_cast<int64_t>(t);
      const int32_t block = ch.block_table[pos / kv.page_size];
      if (block < 0 || block >= cache.pool().num_blocks()) {
        return InvalidArgumentError("block {} is outside the KV pool of {} blocks", block,
                                    cache.pool().num_blocks());
      }
      tokens.push_back(ch.tokens[t]);
      positions.push_back(static_cast<int32_t>(pos));
      slots.push_back(int64_t{block} * kv.page_size + pos % kv.page_size);
    }
    max_blocks = std::max<int32_t>(max_blocks,
                                   static_cast<int32_t>((end + kv.page_size - 1) / kv.page_size));
    if (ch.want_logits) logit_rows.push_back(static_cast<int32_t>(tokens.size()) - 1);
    return Status::Ok();
  };
  for (const ForwardChunk& ch : batch.decode) {
    TANDEM_RETURN_IF_ERROR(add(ch));
    seq_lens.push_back(static_cast<int32_t>(ch.start_pos + 1));
    max_decode_len = std::max<int32_t>(max_decode_len, seq_lens.back());
  }
  for (const ForwardChunk& ch : batch.prefill) {
    TANDEM_RETURN_IF_ERROR(add(ch));
    q_indptr.push_back(q_indptr.back() + static_cast<int32_t>(ch.tokens.size()));
    kv_lens.push_back(static_cast<int32_t>(ch.start_pos + ch.tokens.size()));
    max_q_len = std::max<int32_t>(max_q_len, static_cast<int32_t>(ch.tokens.size()));
  }
  const int32_t decode_rows = static_cast<int32_t>(batch.decode.size());
  const int32_t prefill_chunks = static_cast<int32_t>(batch.prefill.size());
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t nl = static_cast<int64_t>(logit_rows.size());

  // A decode-only step without a layer hook runs as a graph captured for its (batch bucket,
  // length bucket): rows padded to the batch bucket (padding writes no K/V: slot -1), block
  // tables padded to the length bucket — the smallest power of two >= 64 that holds the
  // longest row, capped at the context — so one capture serves many steps, and the tables and
  // the attention workspace stay sized for the sequences at hand, not the whole context.
  int32_t bucket = 0;
  if (options_.cuda_graphs && prefill_chunks == 0 && !on_layer_written) {
    for (int32_t b : kGraphBuckets) {
      if (b >= decode_rows) {
        bucket = b;
        break;
      }
    }
  }
  int32_t rows = decode_rows, table_cols = max_blocks, max_len = max_decode_len;
  if (bucket > 0) {
    rows = bucket;
    const int64_t pool_tokens = int64_t{cache.pool().num_blocks()} * kv.page_size;
    const int64_t context = c.max_position_embeddings > 0
                                ? std::min<int64_t>(c.max_position_embeddings, pool_tokens)
                                : pool_tokens;
    int64_t len = 64;
    while (len < max_decode_len) len *= 2;
    len = std::max<int64_t>(std::min(len, context), max_decode_len);
    table_cols = static_cast<int32_t>((len + kv.page_size - 1) / kv.page_size);
    max_len = table_cols * kv.page_size;
    for (int32_t r = decode_rows; r < rows; ++r) {
      tokens.push_back(0);
      positions.push_back(0);
      slots.push_back(-1);
      seq_lens.push_back(1);
      logit_rows.push_back(r);
    }
  }
  const int64_t n_run = bucket > 0 ? rows : n;
  const int64_t nl_run = bucket > 0 ? rows : nl;
  TANDEM_RETURN_IF_ERROR(EnsureActivations(n_run, nl_run, rows, max_len, table_cols));

  // Step inputs into one buffer: [tokens | positions | slots | tables | seq_lens | q_indptr |
  // kv_lens | logit_rows], each 256-byte aligned.
  const int32_t table_rows = rows + prefill_chunks;
  std::vector<int32_t> tables(int64_t{table_rows} * table_cols, 0);
  int32_t r = 0;
  for (const auto* list : {&batch.decode, &batch.prefill}) {
    for (const ForwardChunk& ch : *list) {
      const size_t used = std::min<size_t>(ch.block_table.size(), table_cols);
      std::copy(ch.block_table.begin(), ch.block_table.begin() + used,
                tables.begin() + int64_t{r} * table_cols);
      ++r;
      if (list == &batch.decode && r == decode_rows) r = rows;  // skip the padding rows
    }
  }
  size_t offset = 0;
  auto place = [&](size_t bytes) {
    const size_t at = offset;
    offset += (bytes + 255) & ~size_t{255};
    return at;
  };
  const size_t o_tokens = place(tokens.size() * 4), o_pos = place(positions.size() * 4),
               o_slots = place(slots.size() * 8), o_tables = place(tables.size() * 4),
               o_seq = place(seq_lens.size() * 4), o_indptr = place(q_indptr.size() * 4),
               o_kvlens = place(kv_lens.size() * 4), o_logit = place(logit_rows.size() * 4);
  if (offset > inputs_.bytes()) {
    TANDEM_CUDA_STATUS(cudaStreamSynchronize(stream_));
    TANDEM_RETURN_IF_ERROR(inputs_.Grow(offset));
    for (auto& [b, g] : graphs_) cudaGraphExecDestroy(g.exec);
    graphs_.clear();
  }
  // A copy from pageable memory has left host_inputs_ when cudaMemcpyAsync returns.
  host_inputs_.assign(offset, std::byte{0});
  auto put = [&](size_t at, const auto& v) {
    if (!v.empty()) std::memcpy(host_inputs_.data() + at, v.data(), v.size() * sizeof(v[0]));
  };
  put(o_tokens, tokens);
  put(o_pos, positions);
  put(o_slots, slots);
  put(o_tables, tables);
  put(o_seq, seq_lens);
  put(o_indptr, q_indptr);
  put(o_kvlens, kv_lens);
  put(o_logit, logit_rows);
  std::byte* base = inputs_.template get<std::byte>();
  in_ = StepInputs{
      reinterpret_cast<int32_t*>(base + o_tokens), reinterpret_cast<int32_t*>(base + o_pos),
      reinterpret_cast<int64_t*>(base + o_slots),  reinterpret_cast<int32_t*>(base + o_tables),
      reinterpret_cast<int32_t*>(base + o_seq),    reinterpret_cast<int32_t*>(base + o_indptr),
      reinterpret_cast<int32_t*>(base + o_kvlens), reinterpret_cast<int32_t*>(base + o_logit)};
  TANDEM_CUDA_STATUS(
      cudaMemcpyAsync(base, host_inputs_.data(), offset, cudaMemcpyHostToDevice, stream_));

  if (bucket == 0) {
    TANDEM_RETURN_IF_ERROR(Enqueue(decode_rows, max_decode_len, prefill_chunks, max_q_len, n, nl,
                                   max_blocks, cache, on_layer_written));
    num_logit_rows_ = nl;
    return Status::Ok();
  }
  const int64_t key = (int64_t{bucket} << 32) | max_len;
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    cudaGraph_t graph = nullptr;
    TANDEM_CUDA_STATUS(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    const Status st = Enqueue(rows, max_len, 0, 0, rows, rows, table_cols, cache, nullptr);
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    TANDEM_RETURN_IF_ERROR(st);
    TANDEM_CUDA_STATUS(end);
    Graph g;
    g.max_blocks = table_cols;
    const cudaError_t inst = cudaGraphInstantiate(&g.exec, graph, 0);
    cudaGraphDestroy(graph);
    TANDEM_CUDA_STATUS(inst);
    it = graphs_.emplace(key, g).first;
  }
  TANDEM_CUDA_STATUS(cudaGraphLaunch(it->second.exec, stream_));
  num_logit_rows_ = nl;  // the padding rows' logits are never sampled
  return Status::Ok();
}

template <typename T>
Status CudaRunner<T>::CopyLogits(std::vector<float>* out) const {
  out->resize(num_logit_rows_ * config_.vocab_size);
  if (out->empty()) return Status::Ok();
  TANDEM_CUDA_STATUS(cudaSetDevice(options_.device));
  TANDEM_CUDA_STATUS(cudaMemcpyAsync(out->data(), logits_.get(), out->size() * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream_));
  TANDEM_CUDA_STATUS(cudaStreamSynchronize(stream_));
  return Status::Ok();
}

template <typename T>
Status CudaRunner<T>::Sample(std::span<const SampleRow> rows, std::vector<SampleResult>* out) {
  if (static_cast<int64_t>(rows.size()) > num_logit_rows_) {
    return InvalidArgumentError("{} rows to sample, the last forward produced {} logits rows",
                                rows.size(), num_logit_rows_);
  }
  out->assign(rows.size(), SampleResult{});
  if (rows.empty()) return Status::Ok();
  TANDEM_CUDA_STATUS(cudaSetDevice(options_.device));
  const int64_t vocab = config_.vocab_size;
  const int64_t nr = static_cast<int64_t>(rows.size());
  // Device sampling for every row (the CPU sampler's order and rounding, tandem/kernels/cuda/
  // sampling.h); rows that ask for top_logprobs are sampled on the host from their logits row
  // by the CPU sampler itself (the device kernel does not produce them).
  std::vector<cuda::SampleRowParams> params(nr);
  std::vector<int32_t> history, prompt_lens(nr);
  std::vector<int64_t> offsets{0};
  bool any_filter = false;
  for (int64_t r = 0; r < nr; ++r) {
    const SamplingParams& sp = *rows[r].params;
    cuda::SampleRowParams& p = params[r];
    p.temperature = sp.temperature;
    p.top_k = sp.top_k;
    p.top_p = sp.top_p;
    p.min_p = sp.min_p;
    p.repetition_penalty = sp.repetition_penalty;
    p.presence_penalty = sp.presence_penalty;
    p.frequency_penalty = sp.frequency_penalty;
    p.seed = sp.seed;
    p.position = rows[r].position;
    any_filter |= sp.top_k > 0 || sp.top_p < 1.0f || sp.min_p > 0.0f;
    history.insert(history.end(), rows[r].prompt.begin(), rows[r].prompt.end());
    history.insert(history.end(), rows[r].generated.begin(), rows[r].generated.end());
    offsets.push_back(static_cast<int64_t>(history.size()));
    prompt_lens[r] = static_cast<int32_t>(rows[r].prompt.size());
  }
  size_t ws = 0;
  TANDEM_CUDA_STATUS(cuda::SampleWorkspaceBytes(nr, vocab, &ws));
  const size_t hist_bytes = std::max<size_t>(history.size(), 1) * sizeof(int32_t);
  if (ws > sample_workspace_.bytes() || hist_bytes > history_.bytes() ||
      static_cast<size_t>(nr) * sizeof(cuda::SampleRowParams) > sample_params_.bytes() ||
      static_cast<size_t>(nr + 1) * sizeof(int64_t) > history_offsets_.bytes()) {
    TANDEM_CUDA_STATUS(cudaStreamSynchronize(stream_));
    TANDEM_RETURN_IF_ERROR(sample_workspace_.Grow(ws));
    TANDEM_RETURN_IF_ERROR(history_.Grow(hist_bytes));
    TANDEM_RETURN_IF_ERROR(sample_params_.Grow(nr * sizeof(cuda::SampleRowParams)));
    TANDEM_RETURN_IF_ERROR(history_offsets_.Grow((nr + 1) * sizeof(int64_t)));
    TANDEM_RETURN_IF_ERROR(prompt_lens_.Grow(nr * sizeof(int32_t)));
    TANDEM_RETURN_IF_ERROR(sample_tokens_.Grow(nr * sizeof(int32_t)));
    TANDEM_RETURN_IF_ERROR(sample_logprobs_.Grow(nr * sizeof(float)));
  }
  auto h2d = [&](const DeviceBuffer& dst, const void* src, size_t bytes) {
    return CudaStatus(cudaMemcpyAsync(dst.get(), src, bytes, cudaMemcpyHostToDevice, stream_),
                      "sampling inputs");
  };
  TANDEM_RETURN_IF_ERROR(h2d(sample_params_, params.data(), nr * sizeof(params[0])));
  if (!history.empty()) {
    TANDEM_RETURN_IF_ERROR(h2d(history_, history.data(), history.size() * sizeof(int32_t)));
  }
  TANDEM_RETURN_IF_ERROR(h2d(history_offsets_, offsets.data(), offsets.size() * sizeof(int64_t)));
  TANDEM_RETURN_IF_ERROR(h2d(prompt_lens_, prompt_lens.data(), nr * sizeof(int32_t)));
  cuda::SampleParams p;
  p.logits = logits_.template get<float>();
  p.row_params = sample_params_.template get<cuda::SampleRowParams>();
  p.history = history_.get<int32_t>();
  p.history_offsets = history_offsets_.get<int64_t>();
  p.prompt_lens = prompt_lens_.get<int32_t>();
  p.out_tokens = sample_tokens_.get<int32_t>();
  p.out_logprobs = sample_logprobs_.template get<float>();
  p.rows = nr;
  p.vocab = vocab;
  p.any_filter = any_filter;
  p.workspace = sample_workspace_.get();
  p.workspace_bytes = sample_workspace_.bytes();
  TANDEM_CUDA_STATUS(cuda::LaunchSample(p, stream_));
  std::vector<int32_t> tokens(nr);
  std::vector<float> logprobs(nr);
  TANDEM_CUDA_STATUS(cudaMemcpyAsync(tokens.data(), p.out_tokens, nr * sizeof(int32_t),
                                     cudaMemcpyDeviceToHost, stream_));
  TANDEM_CUDA_STATUS(cudaMemcpyAsync(logprobs.data(), p.out_logprobs, nr * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream_));
  TANDEM_CUDA_STATUS(cudaStreamSynchronize(stream_));
  std::vector<float> row_logits;
  for (int64_t r = 0; r < nr; ++r) {
    if (rows[r].params->top_logprobs > 0 || tokens[r] < 0) {
      row_logits.resize(vocab);
      TANDEM_CUDA_STATUS(cudaMemcpy(row_logits.data(), logits_.template get<float>() + r * vocab,
                                    vocab * sizeof(float), cudaMemcpyDeviceToHost));
      (*out)[r] = tandem::Sample(row_logits, *rows[r].params, rows[r].prompt, rows[r].generated,
                                 rows[r].position);
    } else {
      (*out)[r].token = tokens[r];
      (*out)[r].logprob = logprobs[r];
    }
  }
  return Status::Ok();
}

template <typename T>
StatusOr<std::unique_ptr<ModelRunner>> Make(const ModelConfig& config, const ModelWeights& w,
                                            const CudaRunnerOptions& options,
                                            std::string_view flavour) {
  auto runner = std::make_unique<CudaRunner<T>>(config, options, flavour);
  TANDEM_RETURN_IF_ERROR(runner->Init(w));
  return std::unique_ptr<ModelRunner>(std::move(runner));
}

}  // namespace

StatusOr<std::unique_ptr<ModelRunner>> CreateRunner(const ModelConfig& config,
                                                    std::unique_ptr<ModelWeights> weights,
                                                    const CudaRunnerOptions& options,
                                                    std::string_view flavour) {
  TANDEM_RETURN_IF_ERROR(CheckDeviceExists(options.device, "--device cuda"));
  const DType dtype = options.weights.value_or(DType::kBF16);
  switch (dtype) {
    case DType::kF32:
      return Make<float>(config, *weights, options, flavour);
    case DType::kF16:
      return Make<__half>(config, *weights, options, flavour);
    case DType::kBF16:
      return Make<__nv_bfloat16>(config, *weights, options, flavour);
    default:
      return InvalidArgumentError("the CUDA backend stores weights as f32, f16 or bf16, not {}",
                                  DTypeName(dtype));
  }
}

}  // namespace tandem::cuda_backend

namespace tandem {
namespace {

#ifdef TANDEM_CUDA_INTERP
constexpr std::string_view kFlavour = "cuda-interp";
#else
constexpr std::string_view kFlavour = "cuda";
#endif

StatusOr<std::unique_ptr<ModelRunner>> CreateThisFlavour(const ModelConfig& config,
                                                         std::unique_ptr<ModelWeights> weights,
                                                         const CudaRunnerOptions& options) {
  return cuda_backend::CreateRunner(config, std::move(weights), options, kFlavour);
}

// This object file is linked whole into the binaries that carry the backend (an OBJECT
// library), so its initialiser runs.
[[maybe_unused]] const bool registered = RegisterCudaBackend(kFlavour, &CreateThisFlavour);

}  // namespace
}  // namespace tandem

// Memory-mapped checkpoints: a folder with a single model.safetensors or shards listed in
// model.safetensors.index.json, or a GGUF file (llama architecture) whose tensors appear under
// Hugging Face names and shapes. Tensors are views into the mapped files (except GGUF q/k
// projections, whose rows are reordered into a copy the Checkpoint owns).
//
// Thread safety: immutable after Open(); views stay valid while the Checkpoint lives.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/model_config.h"

namespace tandem {

struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // into the mapped file
  size_t num_bytes = 0;
  std::string file;  // the shard (or GGUF file) it lives in, for messages

  int64_t NumElements() const;
};

class MappedFile;
class GgufFile;

class Checkpoint {
 public:
  // Opens dir/model.safetensors.index.json if present, else dir/model.safetensors; a path that
  // names a .gguf file (IsGgufPath) opens as OpenGguf does.
  // Errors name the file: missing, truncated (header or data past the end), bad header JSON,
  // unsupported dtype, shard referenced by the index but absent.
  static StatusOr<std::unique_ptr<Checkpoint>> Open(const std::filesystem::path& dir);

  // Opens a GGUF file of the llama architecture. Tensors take Hugging Face names
  // (token_embd.weight -> model.embed_tokens.weight, blk.N.attn_q.weight ->
  // model.layers.N.self_attn.q_proj.weight, …, output_norm.weight -> model.norm.weight,
  // output.weight -> lm_head.weight; names it does not know, such as rope_freqs.weight, stay as
  // they are), shapes in Hugging Face order ([out, in]: GGUF's ne reversed) and the stored dtype.
  // q_proj / k_proj rows are un-permuted from llama.cpp's rope layout (as tools/gguf_to_hf.py
  // does; whole rows of quantized blocks move, nothing is dequantized). Errors: those of
  // GgufFile::Open; INVALID_ARGUMENT naming general.architecture when it is not "llama", and
  // naming the ggml type and the tensor for a type other than F32, F16, BF16, Q8_0, Q4_0, Q4_1.
  static StatusOr<std::unique_ptr<Checkpoint>> OpenGguf(const std::filesystem::path& file);
  ~Checkpoint();

  bool Has(const std::string& name) const { return tensors_.count(name) > 0; }
  // NOT_FOUND naming the tensor and the checkpoint when absent.
  StatusOr<const TensorView*> Get(const std::string& name) const;
  // As Get, and INVALID_ARGUMENT naming tensor, file, expected and actual shapes on mismatch.
  StatusOr<const TensorView*> Get(const std::string& name, const std::vector<int64_t>& shape) const;

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

  // Copies `t` into `out` as float32 through kernels::ref::Dequantize (f16 / bf16 widened
  // exactly; q8_0 / q4_0 / q4_1 blocks dequantized).
  static void ToFloat32(const TensorView& t, float* out);

 private:
  Checkpoint();  // out of line: MappedFile and GgufFile are incomplete here
  Status AddFile(const std::filesystem::path& file);

  std::filesystem::path dir_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::unique_ptr<GgufFile> gguf_;                // OpenGguf only
  std::vector<std::vector<uint8_t>> owned_data_;  // OpenGguf: un-permuted q/k rows
  std::map<std::string, TensorView> tensors_;
};

std::string ShapeString(const std::vector<int64_t>& shape);

// The tensors of one safetensors file held in memory (`size` bytes at `data`: a u64 header
// length, the JSON header, the tensor data), as views into `data` whose `file` is `name`.
// DATA_LOSS naming `name` for a truncated file, a header that is not a JSON object, a malformed
// entry or data_offsets that do not fit; INVALID_ARGUMENT for a dtype other than F32, F16, BF16.
StatusOr<std::map<std::string, TensorView>> ParseSafetensors(const uint8_t* data, size_t size,
                                                             const std::string& name);

}  // namespace tandem

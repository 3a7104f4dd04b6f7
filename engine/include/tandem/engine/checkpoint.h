// Memory-mapped safetensors checkpoints: a single model.safetensors or shards listed in
// model.safetensors.index.json. Tensors are views into the mapped files.
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
  std::string file;  // the shard it lives in, for messages

  int64_t NumElements() const;
};

class MappedFile;

class Checkpoint {
 public:
  // Opens dir/model.safetensors.index.json if present, else dir/model.safetensors.
  // Errors name the file: missing, truncated (header or data past the end), bad header JSON,
  // unsupported dtype, shard referenced by the index but absent.
  static StatusOr<std::unique_ptr<Checkpoint>> Open(const std::filesystem::path& dir);
  ~Checkpoint();

  bool Has(const std::string& name) const { return tensors_.count(name) > 0; }
  // NOT_FOUND naming the tensor and the checkpoint when absent.
  StatusOr<const TensorView*> Get(const std::string& name) const;
  // As Get, and INVALID_ARGUMENT naming tensor, file, expected and actual shapes on mismatch.
  StatusOr<const TensorView*> Get(const std::string& name, const std::vector<int64_t>& shape) const;

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

  // Copies `t` into `out` as float32 (f16 / bf16 widened exactly).
  static void ToFloat32(const TensorView& t, float* out);

 private:
  Checkpoint() = default;
  Status AddFile(const std::filesystem::path& file);

  std::filesystem::path dir_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorView> tensors_;
};

std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace tandem

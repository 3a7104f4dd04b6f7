#include "tandem/engine/checkpoint.h"

#include "tandem/engine/gguf.h"
#include "tandem/kernels/ref/dequant.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace tandem {

// A read-only mapping of a whole file; unmapped on destruction.
class MappedFile {
 public:
  static StatusOr<std::unique_ptr<MappedFile>> Open(const std::filesystem::path& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NotFoundError("{}: cannot open: {}", path.string(), std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      return InternalError("{}: fstat failed", path.string());
    }
    auto f = std::unique_ptr<MappedFile>(new MappedFile());
    f->path_ = path.string();
    f->size_ = static_cast<size_t>(st.st_size);
    if (f->size_ > 0) {
      void* p = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        return InternalError("{}: mmap failed: {}", path.string(), std::strerror(errno));
      }
      f->data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
    return f;
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

namespace {
using nlohmann::json;
}  // namespace

Checkpoint::Checkpoint() = default;
Checkpoint::~Checkpoint() = default;

Status Checkpoint::AddFile(const std::filesystem::path& path) {
  TANDEM_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  TANDEM_ASSIGN_OR_RETURN(auto tensors,
                          ParseSafetensors(file->data(), file->size(), path.string()));
  for (auto& [name, t] : tensors) tensors_[name] = std::move(t);
  files_.push_back(std::move(file));
  return Status::Ok();
}

StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::filesystem::path& dir) {
  if (IsGgufPath(dir)) return OpenGguf(dir);
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ckpt->dir_ = dir;
  const auto index = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(index)) {
    std::ifstream in(index);
    json j;
    try {
      j = json::parse(in);
    } catch (const json::exception& e) {
      return InvalidArgumentError("{}: not valid JSON: {}", index.string(), e.what());
    }
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) {
      return InvalidArgumentError("{}: missing \"weight_map\"", index.string());
    }
    std::set<std::string> shards;
    for (const auto& [name, shard] : wm->items()) {
      if (!shard.is_string())
        return InvalidArgumentError("{}: bad entry for {}", index.string(), name);
      shards.insert(shard.get<std::string>());
    }
    for (const auto& s : shards) TANDEM_RETURN_IF_ERROR(ckpt->AddFile(dir / s));
    for (const auto& [name, shard] : wm->items()) {
      if (!ckpt->Has(name)) {
        return DataLossError("{}: tensor \"{}\" listed in the index is not in {}", index.string(),
                             name, shard.get<std::string>());
      }
    }
  } else {
    TANDEM_RETURN_IF_ERROR(ckpt->AddFile(dir / "model.safetensors"));
  }
  return ckpt;
}

StatusOr<const TensorView*> Checkpoint::Get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return NotFoundError("{}: missing tensor \"{}\"", dir_.string(), name);
  }
  return &it->second;
}

StatusOr<const TensorView*> Checkpoint::Get(const std::string& name,
                                            const std::vector<int64_t>& shape) const {
  TANDEM_ASSIGN_OR_RETURN(const TensorView* t, Get(name));
  if (t->shape != shape) {
    return InvalidArgumentError("{}: tensor \"{}\" has shape {}, expected {}", t->file, name,
                                ShapeString(t->shape), ShapeString(shape));
  }
  return t;
}

void Checkpoint::ToFloat32(const TensorView& t, float* out) {
  kernels::ref::Dequantize(t.dtype, t.data, t.NumElements(), out);
}

}  // namespace tandem

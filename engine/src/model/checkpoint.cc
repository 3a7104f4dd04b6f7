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

StatusOr<DType> ParseSafetensorsDType(const std::string& s, const std::string& file,
                                      const std::string& name) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  return InvalidArgumentError("{}: tensor \"{}\" has unsupported dtype {} (F32, F16, BF16)", file,
                              name, s);
}

}  // namespace

int64_t TensorView::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

Checkpoint::Checkpoint() = default;
Checkpoint::~Checkpoint() = default;

Status Checkpoint::AddFile(const std::filesystem::path& path) {
  TANDEM_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  const std::string fname = path.string();
  if (file->size() < 8) return DataLossError("{}: truncated (no header length)", fname);
  uint64_t header_len = 0;
  std::memcpy(&header_len, file->data(), 8);
  if (header_len > file->size() - 8) {
    return DataLossError("{}: truncated (header of {} bytes, file of {})", fname, header_len,
                         file->size());
  }
  json header;
  try {
    header = json::parse(file->data() + 8, file->data() + 8 + header_len);
  } catch (const json::exception& e) {
    return DataLossError("{}: header is not valid JSON: {}", fname, e.what());
  }
  if (!header.is_object()) return DataLossError("{}: header is not a JSON object", fname);
  const uint8_t* base = file->data() + 8 + header_len;
  const size_t data_size = file->size() - 8 - header_len;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    try {
      TensorView t;
      t.name = name;
      t.file = fname;
      TANDEM_ASSIGN_OR_RETURN(
          t.dtype, ParseSafetensorsDType(info.at("dtype").get<std::string>(), fname, name));
      t.shape = info.at("shape").get<std::vector<int64_t>>();
      auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[1] < offsets[0]) {
        return DataLossError("{}: tensor \"{}\" has bad data_offsets", fname, name);
      }
      if (offsets[1] > data_size) {
        return DataLossError("{}: truncated: tensor \"{}\" ends at byte {} of {} data bytes", fname,
                             name, offsets[1], data_size);
      }
      t.num_bytes = offsets[1] - offsets[0];
      if (static_cast<size_t>(t.NumElements()) * DTypeSize(t.dtype) != t.num_bytes) {
        return DataLossError("{}: tensor \"{}\" has {} bytes for shape {}", fname, name,
                             t.num_bytes, ShapeString(t.shape));
      }
      t.data = base + offsets[0];
      tensors_[name] = std::move(t);
    } catch (const json::exception& e) {
      return DataLossError("{}: tensor \"{}\" has a malformed header entry: {}", fname, name,
                           e.what());
    }
  }
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

#include "tandem/engine/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <limits>

#include <fmt/format.h>

namespace tandem {

// A read-only mapping of a whole file; unmapped on destruction.
class GgufMapping {
 public:
  static StatusOr<std::unique_ptr<GgufMapping>> Open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NotFoundError("{}: cannot open: {}", path, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      return InternalError("{}: fstat failed", path);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      return InvalidArgumentError("{}: not a regular file", path);
    }
    auto m = std::unique_ptr<GgufMapping>(new GgufMapping());
    m->size_ = static_cast<size_t>(st.st_size);
    if (m->size_ > 0) {
      void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        return InternalError("{}: mmap failed: {}", path, std::strerror(errno));
      }
      m->data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
    return m;
  }
  // A copy of `bytes` held in memory instead of a mapping.
  static std::unique_ptr<GgufMapping> Copy(std::string_view bytes) {
    auto m = std::unique_ptr<GgufMapping>(new GgufMapping());
    m->copy_.assign(bytes.begin(), bytes.end());
    m->size_ = m->copy_.size();
    m->data_ = m->copy_.empty() ? nullptr : m->copy_.data();
    return m;
  }
  ~GgufMapping() {
    if (data_ && copy_.empty()) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  GgufMapping() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::vector<uint8_t> copy_;  // Copy() only
};

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxDims = 4;              // GGML_MAX_DIMS

struct GgmlTypeTraits {
  const char* name;
  int64_t block_elems;  // 0: an id ggml no longer uses
  size_t block_bytes;
};

// ggml's type table (ggml.c type_traits; block sizes as gguf-py's GGML_QUANT_SIZES).
constexpr GgmlTypeTraits kGgmlTypes[] = {
    {"F32", 1, 4},        {"F16", 1, 2},        {"Q4_0", 32, 18},     {"Q4_1", 32, 20},
    {"Q4_2", 0, 0},       {"Q4_3", 0, 0},       {"Q5_0", 32, 22},     {"Q5_1", 32, 24},
    {"Q8_0", 32, 34},     {"Q8_1", 32, 40},     {"Q2_K", 256, 84},    {"Q3_K", 256, 110},
    {"Q4_K", 256, 144},   {"Q5_K", 256, 176},   {"Q6_K", 256, 210},   {"Q8_K", 256, 292},
    {"IQ2_XXS", 256, 66}, {"IQ2_XS", 256, 74},  {"IQ3_XXS", 256, 98}, {"IQ1_S", 256, 50},
    {"IQ4_NL", 32, 18},   {"IQ3_S", 256, 110},  {"IQ2_S", 256, 82},   {"IQ4_XS", 256, 136},
    {"I8", 1, 1},         {"I16", 1, 2},        {"I32", 1, 4},        {"I64", 1, 8},
    {"F64", 1, 8},        {"IQ1_M", 256, 56},   {"BF16", 1, 2},       {"Q4_0_4_4", 0, 0},
    {"Q4_0_4_8", 0, 0},   {"Q4_0_8_8", 0, 0},   {"TQ1_0", 256, 54},   {"TQ2_0", 256, 66},
    {"IQ4_NL_4_4", 0, 0}, {"IQ4_NL_4_8", 0, 0}, {"IQ4_NL_8_8", 0, 0}, {"MXFP4", 32, 17},
    {"NVFP4", 64, 36},    {"Q1_0", 128, 18},
};
constexpr uint32_t kNumGgmlTypes = sizeof(kGgmlTypes) / sizeof(kGgmlTypes[0]);

const GgmlTypeTraits* GgmlTraits(uint32_t t) {
  return t < kNumGgmlTypes && kGgmlTypes[t].block_elems > 0 ? &kGgmlTypes[t] : nullptr;
}

// A bounds-checked little-endian cursor over the mapping. Every read names what it reads in the
// truncation error.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, size_t size)
      : path_(path), data_(data), size_(size) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  Status Need(size_t n, std::string_view what) const {
    if (n > size_ - pos_) {
      return DataLossError("{}: truncated: {} at byte {} needs {} bytes, the file has {}", path_,
                           what, pos_, n, size_);
    }
    return Status::Ok();
  }
  template <typename T>
  Status Read(T* out, std::string_view what) {
    TANDEM_RETURN_IF_ERROR(Need(sizeof(T), what));
    std::memcpy(out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }
  Status ReadString(std::string* out, std::string_view what) {
    uint64_t len = 0;
    TANDEM_RETURN_IF_ERROR(Read(&len, what));
    TANDEM_RETURN_IF_ERROR(Need(len, what));
    out->assign(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return Status::Ok();
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Smallest encoded size of one value of type `t` (for bounding array counts before allocating).
size_t MinValueBytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kString:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    case GgufValueType::kArray:
      return 12;
  }
  return 1;
}

bool IsKnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kFloat64); }

Status ReadValue(Cursor& c, GgufValueType type, const std::string& key, const std::string& path,
                 int depth, GgufValue* out) {
  out->type = type;
  const std::string what = fmt::format("value of \"{}\"", key);
  switch (type) {
    case GgufValueType::kUint8: {
      uint8_t v = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&v, what));
      out->integer = v;
      return Status::Ok();
    }
    case GgufValueType::kInt8: {
      int8_t v = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&v, what));
      out->integer = v;
      return Status::Ok();
    }
    case GgufValueType::kUint16: {
      uint16_t v = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&v, what));
      out->integer = v;
      return Status::Ok();
    }
    case GgufValueType::kInt16: {
      int16_t v = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&v, what));
      out->integer = v;
      return Status::Ok();
    }
    case GgufValueType::kUint32: {
      uint32_t v = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&v, what));
      out->integer = v;
      return Status::Ok();
    }
    case GgufValueType::kInt32: {
      int32_t v = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&v, what));
      out->integer = v;
      return Status::Ok();
    }
    case GgufValueType::kUint64: {
      uint64_t v = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&v, what));
      out->integer = static_cast<int64_t>(v);
      return Status::Ok();
    }
    case GgufValueType::kInt64: {
      int64_t v = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&v, what));
      out->integer = v;
      return Status::Ok();
    }
    case GgufValueType::kFloat32: {
      float v = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&v, what));
      out->floating = v;
      return Status::Ok();
    }
    case GgufValueType::kFloat64: {
      double v = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&v, what));
      out->floating = v;
      return Status::Ok();
    }
    case GgufValueType::kBool: {
      uint8_t v = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&v, what));
      if (v > 1) {
        return InvalidArgumentError("{}: metadata \"{}\": bool value {} is not 0 or 1", path, key,
                                    v);
      }
      out->integer = v;
      return Status::Ok();
    }
    case GgufValueType::kString:
      return c.ReadString(&out->string, what);
    case GgufValueType::kArray: {
      if (depth > 8) {
        return InvalidArgumentError("{}: metadata \"{}\": arrays nested too deep", path, key);
      }
      uint32_t elem_type = 0;
      uint64_t count = 0;
      TANDEM_RETURN_IF_ERROR(c.Read(&elem_type, what));
      if (!IsKnownValueType(elem_type)) {
        return InvalidArgumentError("{}: metadata \"{}\": unknown array element type {}", path, key,
                                    elem_type);
      }
      TANDEM_RETURN_IF_ERROR(c.Read(&count, what));
      out->array_type = static_cast<GgufValueType>(elem_type);
      const size_t min_bytes = MinValueBytes(out->array_type);
      if (count > c.remaining() / min_bytes) {
        return DataLossError(
            "{}: truncated: array \"{}\" of {} {} values at byte {} runs past the "
            "end of the file",
            path, key, count, GgufValueTypeName(out->array_type), c.pos());
      }
      out->elements.resize(count);
      for (uint64_t i = 0; i < count; ++i) {
        TANDEM_RETURN_IF_ERROR(
            ReadValue(c, out->array_type, key, path, depth + 1, &out->elements[i]));
      }
      return Status::Ok();
    }
  }
  return InvalidArgumentError("{}: metadata \"{}\": unknown value type {}", path, key,
                              static_cast<uint32_t>(type));
}

}  // namespace

bool IsGgufPath(const std::filesystem::path& path) {
  std::string ext = path.extension().string();
  for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (ext != ".gguf") return false;
  std::error_code ec;
  return !std::filesystem::is_directory(path, ec);
}

std::string_view GgufValueTypeName(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
      return "uint8";
    case GgufValueType::kInt8:
      return "int8";
    case GgufValueType::kUint16:
      return "uint16";
    case GgufValueType::kInt16:
      return "int16";
    case GgufValueType::kUint32:
      return "uint32";
    case GgufValueType::kInt32:
      return "int32";
    case GgufValueType::kFloat32:
      return "float32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "uint64";
    case GgufValueType::kInt64:
      return "int64";
    case GgufValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

std::optional<int64_t> GgufValue::AsInt() const {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kInt64:
      return integer;
    case GgufValueType::kUint64:
      if (integer < 0) return std::nullopt;  // above INT64_MAX
      return integer;
    default:
      return std::nullopt;
  }
}

std::optional<double> GgufValue::AsFloat() const {
  if (type == GgufValueType::kFloat32 || type == GgufValueType::kFloat64) return floating;
  return std::nullopt;
}

std::string GgmlTypeName(uint32_t ggml_type) {
  if (ggml_type < kNumGgmlTypes) return kGgmlTypes[ggml_type].name;
  return fmt::format("unknown({})", ggml_type);
}

std::optional<DType> DTypeFromGgmlType(uint32_t ggml_type) {
  switch (ggml_type) {
    case 0:
      return DType::kF32;
    case 1:
      return DType::kF16;
    case 2:
      return DType::kQ4_0;
    case 3:
      return DType::kQ4_1;
    case 8:
      return DType::kQ8_0;
    case 30:
      return DType::kBF16;
    default:
      return std::nullopt;
  }
}

int64_t GgufTensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

GgufFile::~GgufFile() = default;

StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::filesystem::path& path) {
  auto f = std::unique_ptr<GgufFile>(new GgufFile());
  f->path_ = path.string();
  TANDEM_ASSIGN_OR_RETURN(f->mapping_, GgufMapping::Open(f->path_));
  TANDEM_RETURN_IF_ERROR(f->Parse());
  return f;
}

StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromMemory(std::string_view bytes, std::string name) {
  auto f = std::unique_ptr<GgufFile>(new GgufFile());
  f->path_ = std::move(name);
  f->mapping_ = GgufMapping::Copy(bytes);
  TANDEM_RETURN_IF_ERROR(f->Parse());
  return f;
}

std::string_view GgufFile::header_bytes() const {
  return std::string_view(reinterpret_cast<const char*>(mapping_->data()), data_offset_);
}

Status GgufFile::Parse() {
  const uint8_t* base = mapping_->data();
  const size_t size = mapping_->size();
  Cursor c(path_, base, size);
  uint32_t magic = 0;
  if (size < 4)
    return InvalidArgumentError("{}: not a GGUF file ({} bytes, no magic)", path_, size);
  TANDEM_RETURN_IF_ERROR(c.Read(&magic, "magic"));
  if (magic != kMagic) {
    return InvalidArgumentError(
        "{}: not a GGUF file (bad magic {:02x} {:02x} {:02x} {:02x}, "
        "expected \"GGUF\")",
        path_, base[0], base[1], base[2], base[3]);
  }
  TANDEM_RETURN_IF_ERROR(c.Read(&version_, "version"));
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xffff) == 0 && (version_ >> 24) != 0) {
      return InvalidArgumentError("{}: big-endian GGUF (version field {:#x}) is not supported",
                                  path_, version_);
    }
    return InvalidArgumentError("{}: unsupported GGUF version {} (2 and 3 are supported)", path_,
                                version_);
  }
  uint64_t tensor_count = 0, kv_count = 0;
  TANDEM_RETURN_IF_ERROR(c.Read(&tensor_count, "tensor count"));
  TANDEM_RETURN_IF_ERROR(c.Read(&kv_count, "metadata count"));

  // Metadata. Each entry takes at least 8 (key length) + 4 (type) + 1 bytes.
  if (kv_count > c.remaining() / 13) {
    return DataLossError("{}: truncated: {} metadata entries cannot fit in the {} bytes left",
                         path_, kv_count, c.remaining());
  }
  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key;
    TANDEM_RETURN_IF_ERROR(c.ReadString(&key, fmt::format("key of metadata entry {}", i)));
    uint32_t type = 0;
    TANDEM_RETURN_IF_ERROR(c.Read(&type, fmt::format("type of \"{}\"", key)));
    if (!IsKnownValueType(type)) {
      return InvalidArgumentError("{}: metadata \"{}\" has unknown value type {}", path_, key,
                                  type);
    }
    GgufValue v;
    TANDEM_RETURN_IF_ERROR(ReadValue(c, static_cast<GgufValueType>(type), key, path_, 0, &v));
    if (metadata_.count(key)) {
      return InvalidArgumentError("{}: duplicate metadata key \"{}\"", path_, key);
    }
    metadata_.emplace(std::move(key), std::move(v));
  }

  if (const GgufValue* a = Find("general.alignment")) {
    std::optional<int64_t> v = a->AsInt();
    if (a->type != GgufValueType::kUint32 || !v || *v == 0 || (*v & (*v - 1)) != 0) {
      return InvalidArgumentError("{}: general.alignment must be a uint32 power of two, got {} {}",
                                  path_, GgufValueTypeName(a->type),
                                  v ? fmt::format("{}", *v) : std::string("(not an integer)"));
    }
    alignment_ = static_cast<uint64_t>(*v);
  }

  // Tensor table. Each entry takes at least 8 + 4 + 4 + 8 bytes.
  if (tensor_count > c.remaining() / 24) {
    return DataLossError("{}: truncated: {} tensor infos cannot fit in the {} bytes left", path_,
                         tensor_count, c.remaining());
  }
  tensors_.resize(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo& t = tensors_[i];
    TANDEM_RETURN_IF_ERROR(c.ReadString(&t.name, fmt::format("name of tensor {}", i)));
    const std::string what = fmt::format("info of tensor \"{}\"", t.name);
    uint32_t n_dims = 0;
    TANDEM_RETURN_IF_ERROR(c.Read(&n_dims, what));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return InvalidArgumentError("{}: tensor \"{}\" has {} dimensions (1 to {} allowed)", path_,
                                  t.name, n_dims, kMaxDims);
    }
    t.ne.resize(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      TANDEM_RETURN_IF_ERROR(c.Read(&t.ne[d], what));
      if (t.ne[d] < 0) {
        return InvalidArgumentError("{}: tensor \"{}\" has negative dimension ne[{}] = {}", path_,
                                    t.name, d, t.ne[d]);
      }
    }
    TANDEM_RETURN_IF_ERROR(c.Read(&t.ggml_type, what));
    TANDEM_RETURN_IF_ERROR(c.Read(&t.offset, what));
    const GgmlTypeTraits* traits = GgmlTraits(t.ggml_type);
    if (traits == nullptr) {
      return InvalidArgumentError("{}: tensor \"{}\" has unknown ggml type {}", path_, t.name,
                                  GgmlTypeName(t.ggml_type));
    }
    t.dtype = DTypeFromGgmlType(t.ggml_type);
    if (t.ne[0] % traits->block_elems != 0) {
      return InvalidArgumentError(
          "{}: tensor \"{}\" of type {} has rows of {} elements, not a multiple of its block ({})",
          path_, t.name, traits->name, t.ne[0], traits->block_elems);
    }
    // Bytes = rows * row bytes, and the element count (NumElements, an int64; blocks pack
    // elements in fewer bytes, so it overflows first), checked for overflow (the data must fit
    // in the file anyway).
    uint64_t bytes = static_cast<uint64_t>(t.ne[0] / traits->block_elems) * traits->block_bytes;
    int64_t elements = t.ne[0];
    for (uint32_t d = 1; d < n_dims; ++d) {
      const uint64_t n = static_cast<uint64_t>(t.ne[d]);
      if ((n != 0 && bytes > std::numeric_limits<uint64_t>::max() / n) ||
          __builtin_mul_overflow(elements, t.ne[d], &elements)) {
        return InvalidArgumentError("{}: tensor \"{}\" is too large (shape overflows)", path_,
                                    t.name);
      }
      bytes *= n;
    }
    if (t.offset % alignment_ != 0) {
      return InvalidArgumentError(
          "{}: tensor \"{}\" offset {} is not a multiple of the alignment "
          "{}",
          path_, t.name, t.offset, alignment_);
    }
    t.num_bytes = bytes;
    if (!tensor_index_.emplace(t.name, i).second) {
      return InvalidArgumentError("{}: duplicate tensor \"{}\"", path_, t.name);
    }
  }

  data_offset_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (tensor_count > 0 && data_offset_ > size) {
    return DataLossError("{}: truncated: the data section would start at byte {}, the file has {}",
                         path_, data_offset_, size);
  }
  if (data_offset_ > size) data_offset_ = size;  // no tensors: padding may be absent
  const uint64_t data_size = size - data_offset_;
  for (GgufTensorInfo& t : tensors_) {
    if (t.offset > data_size || t.num_bytes > data_size - t.offset) {
      return DataLossError(
          "{}: tensor \"{}\" data (bytes {} to {} of the data section) lies past "
          "the end of the file (data section of {} bytes)",
          path_, t.name, t.offset, t.offset + t.num_bytes, data_size);
    }
    t.data = base + data_offset_ + t.offset;
  }
  return Status::Ok();
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

StatusOr<int64_t> GgufFile::GetInt(std::string_view key, std::optional<int64_t> fallback) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return NotFoundError("{}: missing metadata key \"{}\"", path_, key);
  }
  if (auto i = v->AsInt()) return *i;
  return InvalidArgumentError("{}: metadata \"{}\" must be an integer, got {}", path_, key,
                              GgufValueTypeName(v->type));
}

StatusOr<double> GgufFile::GetFloat(std::string_view key, std::optional<double> fallback) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return NotFoundError("{}: missing metadata key \"{}\"", path_, key);
  }
  if (auto f = v->AsFloat()) return *f;
  return InvalidArgumentError("{}: metadata \"{}\" must be a float, got {}", path_, key,
                              GgufValueTypeName(v->type));
}

StatusOr<bool> GgufFile::GetBool(std::string_view key, std::optional<bool> fallback) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return NotFoundError("{}: missing metadata key \"{}\"", path_, key);
  }
  if (v->type == GgufValueType::kBool) return v->integer != 0;
  return InvalidArgumentError("{}: metadata \"{}\" must be a bool, got {}", path_, key,
                              GgufValueTypeName(v->type));
}

StatusOr<std::string> GgufFile::GetString(std::string_view key,
                                          std::optional<std::string> fallback) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return NotFoundError("{}: missing metadata key \"{}\"", path_, key);
  }
  if (v->type == GgufValueType::kString) return v->string;
  return InvalidArgumentError("{}: metadata \"{}\" must be a string, got {}", path_, key,
                              GgufValueTypeName(v->type));
}

StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFoundError("{}: missing metadata key \"{}\"", path_, key);
  if (v->type != GgufValueType::kArray || v->array_type != GgufValueType::kString) {
    return InvalidArgumentError("{}: metadata \"{}\" must be an array of strings", path_, key);
  }
  std::vector<std::string> out;
  out.reserve(v->elements.size());
  for (const GgufValue& e : v->elements) out.push_back(e.string);
  return out;
}

StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return NotFoundError("{}: missing metadata key \"{}\"", path_, key);
  if (v->type != GgufValueType::kArray) {
    return InvalidArgumentError("{}: metadata \"{}\" must be an array of integers", path_, key);
  }
  std::vector<int64_t> out;
  out.reserve(v->elements.size());
  for (const GgufValue& e : v->elements) {
    std::optional<int64_t> i = e.AsInt();
    if (!i) {
      return InvalidArgumentError("{}: metadata \"{}\" must be an array of integers, has {}", path_,
                                  key, GgufValueTypeName(e.type));
    }
    out.push_back(*i);
  }
  return out;
}

}  // namespace tandem

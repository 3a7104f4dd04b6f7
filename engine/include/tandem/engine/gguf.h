// GGUF files (llama.cpp's single-file model format, versions 2 and 3, little-endian),
// memory-mapped: the header, the typed metadata key/values (arrays included), the tensor table and
// the tensor data, aligned to general.alignment (default 32) after the table.
//
// Layout: "GGUF" u32 version, u64 tensor_count, u64 kv_count; kv_count x {string key, u32 type,
// value}; tensor_count x {string name, u32 n_dims, n_dims x u64 ne, u32 ggml_type, u64 offset};
// padding to the alignment; tensor data. A string is u64 length + bytes; an array is u32 element
// type, u64 count, elements. ne[0] is the length of a row (ggml order, the reverse of torch's).
//
// Thread safety: immutable after Open(); values and tensor data stay valid while the GgufFile
// lives.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"

namespace tandem {

// True when `path` names a .gguf file rather than a checkpoint folder (by extension; the file
// need not exist — opening it reports that).
bool IsGgufPath(const std::filesystem::path& path);

enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "uint8" … "float64"; "unknown(N)" otherwise.
std::string_view GgufValueTypeName(GgufValueType t);

// One metadata value. Scalars use one field by type; arrays hold their elements (of one type).
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  // Integer types and bool. A uint64 above INT64_MAX keeps its bit pattern here (AsInt refuses it).
  int64_t integer = 0;
  double floating = 0.0;                             // float32 (widened exactly) and float64
  std::string string;                                // kString
  GgufValueType array_type = GgufValueType::kUint8;  // kArray: the elements' type
  std::vector<GgufValue> elements;                   // kArray

  // The value of an integer-typed scalar (not bool); nullopt otherwise.
  std::optional<int64_t> AsInt() const;
  // The value of a float32 / float64 scalar; nullopt otherwise.
  std::optional<double> AsFloat() const;
};

// ggml tensor type ids as GGUF stores them (ggml.h's enum ggml_type).
// The name of a ggml type ("F32", "Q4_K", …); "unknown(N)" for an id outside ggml's table.
std::string GgmlTypeName(uint32_t ggml_type);
// The DType of a ggml type Tandem reads: F32, F16, BF16, Q8_0, Q4_0, Q4_1 (ids 0, 1, 30, 8, 2, 3);
// nullopt for every other type (K-quants, IQ types, integers…).
std::optional<DType> DTypeFromGgmlType(uint32_t ggml_type);

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;
  std::optional<DType> dtype;     // nullopt: a ggml type Tandem does not read (see type_name)
  std::vector<int64_t> ne;        // ggml order: ne[0] is the row length
  uint64_t offset = 0;            // from the start of the data section
  const uint8_t* data = nullptr;  // into the mapping
  size_t num_bytes = 0;

  int64_t NumElements() const;
};

class GgufMapping;

class GgufFile {
 public:
  // Maps and parses `path`. Errors name the file and the problem: cannot open (NOT_FOUND), bad
  // magic or unsupported version (INVALID_ARGUMENT; big-endian files included), truncated header,
  // metadata or tensor table (DATA_LOSS), tensor data past the end of the file (DATA_LOSS), an
  // unknown ggml type id, a bad general.alignment, duplicate keys or tensors, misaligned offsets, a
  // row length not a multiple of the type's block (INVALID_ARGUMENT).
  static StatusOr<std::unique_ptr<GgufFile>> Open(const std::filesystem::path& path);
  // The same from a copy of `bytes` (fuzzers, tests); errors name `name` as they name the file.
  static StatusOr<std::unique_ptr<GgufFile>> FromMemory(std::string_view bytes, std::string name);
  ~GgufFile();

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  // Byte offset of the data section in the file.
  uint64_t data_offset() const { return data_offset_; }
  // The file's bytes before the data section: header, metadata and tensor table.
  std::string_view header_bytes() const;

  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  // nullptr when absent.
  const GgufValue* Find(std::string_view key) const;
  const GgufTensorInfo* FindTensor(std::string_view name) const;

  // Typed getters. A missing key gives `fallback` when one is given, else NOT_FOUND naming the file
  // and the key; a value of another type gives INVALID_ARGUMENT naming file, key and its type.
  StatusOr<int64_t> GetInt(std::string_view key, std::optional<int64_t> fallback = {}) const;
  StatusOr<double> GetFloat(std::string_view key, std::optional<double> fallback = {}) const;
  StatusOr<bool> GetBool(std::string_view key, std::optional<bool> fallback = {}) const;
  StatusOr<std::string> GetString(std::string_view key,
                                  std::optional<std::string> fallback = {}) const;
  // Arrays: strings, and integers of any integer type.
  StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;

 private:
  GgufFile() = default;
  Status Parse();

  std::string path_;
  std::unique_ptr<GgufMapping> mapping_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace tandem

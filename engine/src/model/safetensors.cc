// The safetensors format (a u64 header length, a JSON header naming each tensor's dtype, shape
// and data_offsets, then the data), parsed from memory; Checkpoint maps the files.
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tandem/engine/checkpoint.h"

namespace tandem {
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

StatusOr<std::map<std::string, TensorView>> ParseSafetensors(const uint8_t* data, size_t size,
                                                             const std::string& fname) {
  if (size < 8) return DataLossError("{}: truncated (no header length)", fname);
  uint64_t header_len = 0;
  std::memcpy(&header_len, data, 8);
  if (header_len > size - 8) {
    return DataLossError("{}: truncated (header of {} bytes, file of {})", fname, header_len, size);
  }
  json header;
  try {
    header = json::parse(data + 8, data + 8 + header_len);
  } catch (const json::exception& e) {
    return DataLossError("{}: header is not valid JSON: {}", fname, e.what());
  }
  if (!header.is_object()) return DataLossError("{}: header is not a JSON object", fname);
  const uint8_t* base = data + 8 + header_len;
  const size_t data_size = size - 8 - header_len;
  std::map<std::string, TensorView> tensors;
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
      tensors[name] = std::move(t);
    } catch (const json::exception& e) {
      return DataLossError("{}: tensor \"{}\" has a malformed header entry: {}", fname, name,
                           e.what());
    }
  }
  return tensors;
}

}  // namespace tandem

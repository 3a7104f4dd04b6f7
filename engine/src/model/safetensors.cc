// The safetensors format (a u64 header length, a JSON header naming each tensor's dtype, shape
// and data_offsets, then the data), parsed from memory; Checkpoint maps the files.
#include <climits>
#include <cstring>
#include <optional>
#include <vector>

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

// A JSON list of non-negative integers (shape, data_offsets); nullopt for anything else (floats,
// negative or huge numbers: nlohmann's get<> would convert those with undefined results).
std::optional<std::vector<uint64_t>> Naturals(const json& v) {
  if (!v.is_array()) return std::nullopt;
  std::vector<uint64_t> out;
  for (const json& e : v) {
    if (!e.is_number_unsigned() && !(e.is_number_integer() && e.get<int64_t>() >= 0)) {
      return std::nullopt;
    }
    out.push_back(e.get<uint64_t>());
  }
  return out;
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
      const auto shape = Naturals(info.at("shape"));
      if (!shape) {
        return DataLossError("{}: tensor \"{}\" has a bad shape (non-negative integers)", fname,
                             name);
      }
      // Elements and bytes without overflow (the dimensions come from the file).
      uint64_t elems = 1;
      for (uint64_t d : *shape) {
        if (d > uint64_t{INT64_MAX} || __builtin_mul_overflow(elems, d, &elems) ||
            elems > uint64_t{INT64_MAX}) {
          return DataLossError("{}: tensor \"{}\" has a shape too large", fname, name);
        }
        t.shape.push_back(static_cast<int64_t>(d));
      }
      const auto offsets = Naturals(info.at("data_offsets"));
      if (!offsets || offsets->size() != 2 || (*offsets)[1] < (*offsets)[0]) {
        return DataLossError("{}: tensor \"{}\" has bad data_offsets", fname, name);
      }
      if ((*offsets)[1] > data_size) {
        return DataLossError("{}: truncated: tensor \"{}\" ends at byte {} of {} data bytes", fname,
                             name, (*offsets)[1], data_size);
      }
      t.num_bytes = (*offsets)[1] - (*offsets)[0];
      uint64_t bytes = 0;
      if (__builtin_mul_overflow(elems, DTypeSize(t.dtype), &bytes) || bytes != t.num_bytes) {
        return DataLossError("{}: tensor \"{}\" has {} bytes for shape {}", fname, name,
                             t.num_bytes, ShapeString(t.shape));
      }
      t.data = base + (*offsets)[0];
      tensors[name] = std::move(t);
    } catch (const json::exception& e) {
      return DataLossError("{}: tensor \"{}\" has a malformed header entry: {}", fname, name,
                           e.what());
    }
  }
  return tensors;
}

}  // namespace tandem

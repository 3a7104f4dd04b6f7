#include "tandem/engine/model_identity.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/common/hash.h"
#include "tandem/engine/gguf.h"

namespace tandem {
namespace {

using nlohmann::json;

// A tag, the byte count, the bytes: no two different sequences of pieces concatenate alike.
void AppendPiece(std::string& out, std::string_view tag, std::string_view bytes) {
  out.append(tag);
  const uint64_t n = bytes.size();
  out.append(reinterpret_cast<const char*>(&n), sizeof(n));
  out.append(bytes);
}

// `size` bytes at `offset` of `in`; DATA_LOSS naming `file` when the file is shorter.
StatusOr<std::string> ReadAt(std::ifstream& in, const std::filesystem::path& file, uint64_t offset,
                             uint64_t size) {
  std::string bytes(size, '\0');
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(bytes.data(), static_cast<std::streamsize>(size));
  if (!in) {
    return DataLossError("{}: cannot read {} bytes at offset {}", file.string(), size, offset);
  }
  return bytes;
}

StatusOr<std::string> ReadWholeFile(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return NotFoundError("cannot read {}", file.string());
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return DataLossError("error reading {}", file.string());
  return bytes;
}

// The shard file names of a safetensors folder, in name order.
StatusOr<std::set<std::string>> ShardNames(const std::filesystem::path& dir) {
  const auto index = dir / "model.safetensors.index.json";
  if (!std::filesystem::exists(index)) return std::set<std::string>{"model.safetensors"};
  TANDEM_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(index));
  std::set<std::string> shards;
  try {
    const json index_json = json::parse(text);  // outlives the loop over its items
    for (const auto& [name, shard] : index_json.at("weight_map").items()) {
      shards.insert(shard.get<std::string>());
    }
  } catch (const json::exception& e) {
    return DataLossError("{}: bad weight_map: {}", index.string(), e.what());
  }
  return shards;
}

// One shard's name, header and tensor samples.
Status AppendShard(const std::filesystem::path& dir, const std::string& name, std::string& out) {
  const auto file = dir / name;
  std::ifstream in(file, std::ios::binary);
  if (!in) return NotFoundError("cannot read {}", file.string());
  TANDEM_ASSIGN_OR_RETURN(std::string len_bytes, ReadAt(in, file, 0, 8));
  uint64_t header_len = 0;
  std::memcpy(&header_len, len_bytes.data(), 8);
  const uint64_t file_size = std::filesystem::file_size(file);
  if (header_len > file_size - 8) {
    return DataLossError("{}: truncated (header of {} bytes, file of {})", file.string(),
                         header_len, file_size);
  }
  TANDEM_ASSIGN_OR_RETURN(std::string header, ReadAt(in, file, 8, header_len));
  AppendPiece(out, "shard", name);
  AppendPiece(out, "header", len_bytes + header);
  // [begin, end) of every tensor's data, from the start of the data section.
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  try {
    const json entries = json::parse(header);  // outlives the loop over its items
    for (const auto& [tensor, info] : entries.items()) {
      if (tensor == "__metadata__") continue;
      const auto offsets = info.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[1] < offsets[0]) {
        return DataLossError("{}: tensor \"{}\" has bad data_offsets", file.string(), tensor);
      }
      spans.emplace_back(offsets[0], offsets[1]);
    }
  } catch (const json::exception& e) {
    return DataLossError("{}: bad header: {}", file.string(), e.what());
  }
  std::sort(spans.begin(), spans.end());
  const uint64_t data_start = 8 + header_len;
  for (const auto& [begin, end] : spans) {
    const uint64_t n = std::min<uint64_t>(end - begin, kModelIdentitySampleBytes);
    TANDEM_ASSIGN_OR_RETURN(std::string sample, ReadAt(in, file, data_start + begin, n));
    AppendPiece(out, "data", sample);
  }
  return Status::Ok();
}

StatusOr<std::string> GgufIdentity(const std::filesystem::path& file) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(file));
  std::string out;
  AppendPiece(out, "gguf", gguf->header_bytes());
  for (const GgufTensorInfo& t : gguf->tensors()) {
    const size_t n = std::min(t.num_bytes, kModelIdentitySampleBytes);
    AppendPiece(out, "data", std::string_view(reinterpret_cast<const char*>(t.data), n));
  }
  return out;
}

}  // namespace

StatusOr<std::string> ReadModelIdentityBytes(const std::filesystem::path& model) {
  if (IsGgufPath(model)) return GgufIdentity(model);
  std::string out;
  TANDEM_ASSIGN_OR_RETURN(std::string config, ReadWholeFile(model / "config.json"));
  AppendPiece(out, "config", config);
  TANDEM_ASSIGN_OR_RETURN(std::set<std::string> shards, ShardNames(model));
  for (const std::string& shard : shards) TANDEM_RETURN_IF_ERROR(AppendShard(model, shard, out));
  return out;
}

StatusOr<uint64_t> ModelHash(const std::filesystem::path& model) {
  TANDEM_ASSIGN_OR_RETURN(std::string identity, ReadModelIdentityBytes(model));
  return Hash64(identity);
}

}  // namespace tandem

// What identifies a checkpoint in the KV layout fingerprint (KvPageLayout::model_hash): two
// workers exchange KV pages only when these bytes hash equal.
//
// Thread safety: pure functions (they read files).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "tandem/common/status.h"

namespace tandem {

// Bytes of each tensor's data sampled into the identity, from its start.
inline constexpr size_t kModelIdentitySampleBytes = 4096;

// The identity of the checkpoint at `model` (a folder or a .gguf file), as length-prefixed
// pieces in a fixed order, so it does not depend on where the files lie:
// - folder: config.json; then for each safetensors shard in name order (model.safetensors, or
//   those model.safetensors.index.json lists) its name, its header (the 8-byte length and the
//   JSON: names, dtypes, shapes, data offsets, __metadata__) and the first
//   kModelIdentitySampleBytes bytes of every tensor's data, in data-offset order;
// - GGUF file: the bytes before the data section (header, metadata, tensor table with the
//   offsets) and the same sample of every tensor's data, in table order.
// So a different config, converter, dtype or shape changes it, and so do different weights when
// any tensor's first 4 KiB differ (two fine-tunes of one base); a change confined to bytes past
// the first 4 KiB of every tensor does not. Reads the headers and a few KiB per tensor, never
// whole files. NOT_FOUND / DATA_LOSS naming the file when one is missing or malformed.
StatusOr<std::string> ReadModelIdentityBytes(const std::filesystem::path& model);

// Hash64 of ReadModelIdentityBytes(model): Engine::model_hash().
StatusOr<uint64_t> ModelHash(const std::filesystem::path& model);

}  // namespace tandem

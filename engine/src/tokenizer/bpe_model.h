// Hugging Face "BPE" model: vocabulary + ranked merges, applied to one pre-tokenized piece.
//
// Merging: every adjacent pair with a merge rule is in a min-heap keyed by (rank, position);
// the lowest is merged and its neighbours' pairs are pushed again, so a piece of n characters
// costs O(n log n) (a 100 KB run of one character is fine). Results for short pieces are cached.
//
// Thread safety: Encode may run concurrently (the cache has its own mutex).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/common/status.h"

namespace tandem::tokenizer_internal {

class BpeModel {
 public:
  // `spec` is tokenizer.json's "model" object. Merges may be "a b" strings or [a, b] pairs.
  static StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& spec);

  // Appends the ids of one piece (already normalized / byte-level mapped).
  void Encode(std::string_view piece, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The vocabulary string of `id`, or nullptr when `id` is not in the vocabulary.
  const std::string* IdToToken(int32_t id) const;
  // One more than the largest id.
  int32_t size() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  struct MergeRule {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void InitialSymbols(std::string_view piece, std::vector<int32_t>* ids) const;
  void Merge(std::vector<int32_t>* symbols) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  std::unordered_map<uint64_t, MergeRule> merges_;
  std::optional<int32_t> unk_id_;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  int32_t byte_ids_[256];  // <0xXX> ids when byte_fallback, else -1

  static constexpr size_t kMaxCachedPieceBytes = 256;
  static constexpr size_t kMaxCacheEntries = 100000;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace tandem::tokenizer_internal

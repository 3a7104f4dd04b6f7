#include "bpe_model.h"

#include <queue>

#include <fmt/format.h>

#include "json_token_id.h"
#include "unicode.h"

namespace tandem::tokenizer_internal {

StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const nlohmann::json& spec) {
  if (!spec.is_object()) return InvalidArgumentError("\"model\" is missing or not an object");
  const std::string type = spec.value("type", "BPE");
  if (type != "BPE") return UnimplementedError("model type '{}' is not supported (BPE only)", type);
  if (!spec.contains("vocab") || !spec["vocab"].is_object()) {
    return InvalidArgumentError("model.vocab is missing or not an object");
  }
  if (!spec.value("continuing_subword_prefix", nlohmann::json()).is_null() ||
      !spec.value("end_of_word_suffix", nlohmann::json()).is_null()) {
    return UnimplementedError("BPE continuing_subword_prefix / end_of_word_suffix not supported");
  }
  auto m = std::unique_ptr<BpeModel>(new BpeModel());
  int32_t max_id = -1;
  for (const auto& [token, id_json] : spec["vocab"].items()) {
    TANDEM_ASSIGN_OR_RETURN(int32_t id,
                            JsonTokenId(id_json, fmt::format("model.vocab['{}']", token)));
    m->vocab_[token] = id;
    max_id = std::max(max_id, id);
  }
  m->id_to_token_.resize(max_id + 1);
  m->has_id_.assign(max_id + 1, false);
  for (const auto& [token, id] : m->vocab_) {
    m->id_to_token_[id] = token;
    m->has_id_[id] = true;
  }
  if (spec.contains("merges")) {
    int32_t rank = 0;
    for (const auto& merge : spec["merges"]) {
      std::string a, b;
      if (merge.is_string()) {
        const std::string s = merge.get<std::string>();
        size_t space = s.find(' ', 1);
        if (space == std::string::npos) {
          return InvalidArgumentError("model.merges[{}]: '{}' is not 'a b'", rank, s);
        }
        a = s.substr(0, space);
        b = s.substr(space + 1);
      } else if (merge.is_array() && merge.size() == 2) {
        a = merge[0].get<std::string>();
        b = merge[1].get<std::string>();
      } else {
        return InvalidArgumentError("model.merges[{}]: expected \"a b\" or [a, b]", rank);
      }
      auto ia = m->vocab_.find(a), ib = m->vocab_.find(b), inew = m->vocab_.find(a + b);
      if (ia == m->vocab_.end() || ib == m->vocab_.end() || inew == m->vocab_.end()) {
        return InvalidArgumentError("model.merges[{}]: '{}' + '{}' is not in the vocabulary", rank,
                                    a, b);
      }
      m->merges_.emplace(PairKey(ia->second, ib->second), MergeRule{rank, inew->second});
      ++rank;
    }
  }
  const auto unk = spec.value("unk_token", nlohmann::json());
  if (unk.is_string()) {
    auto it = m->vocab_.find(unk.get<std::string>());
    if (it != m->vocab_.end()) m->unk_id_ = it->second;
  }
  m->byte_fallback_ = spec.value("byte_fallback", false);
  m->fuse_unk_ = spec.value("fuse_unk", false);
  m->ignore_merges_ = spec.value("ignore_merges", false);
  for (int b = 0; b < 256; ++b) {
    auto it = m->vocab_.find(fmt::format("<0x{:02X}>", b));
    m->byte_ids_[b] = (m->byte_fallback_ && it != m->vocab_.end()) ? it->second : -1;
  }
  return m;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id >= size() || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

// One symbol per character; characters outside the vocabulary become byte tokens
// (byte_fallback), the unknown token (fused when fuse_unk), or are dropped, as Hugging Face does.
void BpeModel::InitialSymbols(std::string_view piece, std::vector<int32_t>* ids) const {
  std::string ch;
  bool last_unk = false;
  for (size_t pos = 0; pos < piece.size();) {
    size_t start = pos;
    pos += std::min(Utf8CharLen(static_cast<unsigned char>(piece[pos])), piece.size() - pos);
    ch.assign(piece.substr(start, pos - start));
    auto it = vocab_.find(ch);
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      last_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : ch) all = all && byte_ids_[b] >= 0;
      if (all) {
        for (unsigned char b : ch) ids->push_back(byte_ids_[b]);
        last_unk = false;
        continue;
      }
    }
    if (unk_id_.has_value()) {
      if (!(fuse_unk_ && last_unk)) ids->push_back(*unk_id_);
      last_unk = true;
    }
  }
}

void BpeModel::Merge(std::vector<int32_t>* symbols) const {
  std::vector<int32_t>& id = *symbols;
  const int n = static_cast<int>(id.size());
  if (n < 2) return;
  std::vector<int> next(n), prev(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t left_id, right_id, new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    auto it = merges_.find(PairKey(id[left], id[next[left]]));
    if (it == merges_.end()) return;
    heap.push({it->second.rank, left, id[left], id[next[left]], it->second.new_id});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    Candidate c = heap.top();
    heap.pop();
    int left = c.pos;
    if (!alive[left] || id[left] != c.left_id) continue;
    int right = next[left];
    if (right < 0 || id[right] != c.right_id) continue;
    id[left] = c.new_id;
    alive[right] = false;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    push(prev[left]);
    push(left);
  }
  int out = 0;
  for (int i = 0; i >= 0 && i < n; i = next[i]) id[out++] = id[i];
  id.resize(out);
}

void BpeModel::Encode(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    auto it = vocab_.find(std::string(piece));
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  std::string key;
  if (cacheable) {
    key.assign(piece);
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> symbols;
  InitialSymbols(piece, &symbols);
  Merge(&symbols);
  ids->insert(ids->end(), symbols.begin(), symbols.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::move(key), std::move(symbols));
  }
}

}  // namespace tandem::tokenizer_internal

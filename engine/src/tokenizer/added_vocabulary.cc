#include "added_vocabulary.h"

#include <algorithm>

#include "json_token_id.h"
#include "unicode.h"

namespace tandem::tokenizer_internal {
namespace {

// Hugging Face's is_word_character: alphanumeric or '_'.
bool IsWordChar(char32_t cp) { return cp == '_' || IsAlphanumeric(cp); }

bool EndsWithWord(std::string_view s) {
  if (s.empty()) return false;
  size_t start = s.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
  size_t pos = start;
  return IsWordChar(NextCodePoint(s, &pos));
}

bool StartsWithWord(std::string_view s) {
  if (s.empty()) return false;
  size_t pos = 0;
  return IsWordChar(NextCodePoint(s, &pos));
}

}  // namespace

StatusOr<AddedVocabulary> AddedVocabulary::FromJson(const nlohmann::json& spec) {
  AddedVocabulary v;
  if (spec.is_null()) return v;
  if (!spec.is_array()) return InvalidArgumentError("added_tokens is not an array");
  for (const auto& t : spec) {
    AddedToken tok;
    TANDEM_ASSIGN_OR_RETURN(tok.id, JsonTokenId(t.at("id"), "added_tokens[].id"));
    tok.content = t.at("content").get<std::string>();
    tok.special = t.value("special", false);
    tok.lstrip = t.value("lstrip", false);
    tok.rstrip = t.value("rstrip", false);
    tok.single_word = t.value("single_word", false);
    tok.normalized = t.value("normalized", !tok.special);
    if (tok.content.empty()) return InvalidArgumentError("added token {} is empty", tok.id);
    v.end_id_ = std::max(v.end_id_, tok.id + 1);
    v.by_id_[tok.id] = v.tokens_.size();
    v.by_content_[tok.content] = v.tokens_.size();
    v.tokens_.push_back(std::move(tok));
  }
  for (size_t i = 0; i < v.tokens_.size(); ++i) {
    Matcher& m = v.tokens_[i].normalized ? v.normalized_ : v.raw_;
    m.by_first_byte[static_cast<unsigned char>(v.tokens_[i].content[0])].push_back(i);
    m.empty = false;
  }
  for (Matcher* m : {&v.raw_, &v.normalized_}) {
    for (auto& list : m->by_first_byte) {
      std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
        return v.tokens_[a].content.size() > v.tokens_[b].content.size();
      });
    }
  }
  return v;
}

std::vector<Segment> AddedVocabulary::Split(std::string_view text, bool normalized) const {
  const Matcher& m = normalized ? normalized_ : raw_;
  std::vector<Segment> out;
  if (m.empty) {
    if (!text.empty()) out.push_back({-1, 0, text.size()});
    return out;
  }
  size_t start_offset = 0;  // end of the previous token (after rstrip)
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedToken* hit = nullptr;
    for (size_t idx : m.by_first_byte[static_cast<unsigned char>(text[pos])]) {
      const std::string& c = tokens_[idx].content;
      if (text.compare(pos, c.size(), c) == 0) {
        hit = &tokens_[idx];
        break;
      }
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + hit->content.size();
    if (hit->single_word && ((start > 0 && EndsWithWord(text.substr(0, start))) ||
                             (stop < text.size() && StartsWithWord(text.substr(stop))))) {
      pos = stop;  // non-overlapping matches: the matcher resumes after this one
      continue;
    }
    if (hit->lstrip) {
      size_t s = start;
      while (s > start_offset) {
        size_t b = s - 1;
        while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        size_t p = b;
        if (!IsWhitespace(NextCodePoint(text, &p))) break;
        s = b;
      }
      start = s;
    }
    if (hit->rstrip) {
      while (stop < text.size()) {
        size_t p = stop;
        if (!IsWhitespace(NextCodePoint(text, &p))) break;
        stop = p;
      }
    }
    if (start_offset < start) out.push_back({-1, start_offset, start});
    out.push_back({hit->id, start, stop});
    start_offset = stop;
    pos = stop;
  }
  if (start_offset < text.size()) out.push_back({-1, start_offset, text.size()});
  return out;
}

const AddedToken* AddedVocabulary::ById(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocabulary::IdOf(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  if (it == by_content_.end()) return std::nullopt;
  return tokens_[it->second].id;
}

}  // namespace tandem::tokenizer_internal

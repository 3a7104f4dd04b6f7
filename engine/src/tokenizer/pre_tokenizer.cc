#include "pre_tokenizer.h"

#include <algorithm>

#include "byte_level.h"

namespace tandem::tokenizer_internal {
namespace {

constexpr std::string_view kMetaspace = "\xE2\x96\x81";  // U+2581 '▁'

}  // namespace

StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::FromJson(const nlohmann::json& spec) {
  auto p = std::unique_ptr<PreTokenizer>(new PreTokenizer());
  TANDEM_RETURN_IF_ERROR(p->AddSteps(spec));
  return p;
}

Status PreTokenizer::AddSteps(const nlohmann::json& spec) {
  if (spec.is_null()) return Status::Ok();
  if (!spec.is_object() || !spec.contains("type")) {
    return InvalidArgumentError("pre_tokenizer: expected an object with a \"type\"");
  }
  const std::string type = spec["type"].get<std::string>();
  Step step;
  if (type == "Sequence") {
    for (const auto& child : spec.at("pretokenizers")) TANDEM_RETURN_IF_ERROR(AddSteps(child));
    return Status::Ok();
  } else if (type == "ByteLevel") {
    step.kind = Step::kByteLevel;
    step.add_prefix_space = spec.value("add_prefix_space", true);
    if (spec.value("use_regex", true)) {
      TANDEM_ASSIGN_OR_RETURN(step.regex, Regex::Compile(kGpt2Pattern));
    }
    byte_level_ = true;
  } else if (type == "Digits") {
    step.kind = Step::kSplit;
    TANDEM_ASSIGN_OR_RETURN(
        step.regex, Regex::Compile(spec.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+"));
  } else if (type == "Split") {
    step.kind = Step::kSplit;
    const auto& pattern = spec.at("pattern");
    std::string re;
    if (pattern.contains("Regex")) {
      re = pattern["Regex"].get<std::string>();
    } else if (pattern.contains("String")) {
      re = QuoteRegex(pattern["String"].get<std::string>());
    } else {
      return InvalidArgumentError("pre_tokenizer Split: pattern needs Regex or String");
    }
    TANDEM_ASSIGN_OR_RETURN(step.regex, Regex::Compile(re));
    const std::string behavior = spec.value("behavior", "Isolated");
    if (behavior == "Removed") {
      step.behavior = Behavior::kRemoved;
    } else if (behavior == "Isolated") {
      step.behavior = Behavior::kIsolated;
    } else if (behavior == "MergedWithPrevious") {
      step.behavior = Behavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      step.behavior = Behavior::kMergedWithNext;
    } else if (behavior == "Contiguous") {
      step.behavior = Behavior::kContiguous;
    } else {
      return InvalidArgumentError("pre_tokenizer Split: unknown behavior '{}'", behavior);
    }
    step.invert = spec.value("invert", false);
  } else if (type == "Metaspace") {
    step.kind = Step::kMetaspace;
    step.replacement = spec.value("replacement", std::string(kMetaspace));
    if (spec.contains("prepend_scheme")) {
      step.prepend_scheme = spec["prepend_scheme"].get<std::string>();
    } else {
      step.prepend_scheme = spec.value("add_prefix_space", true) ? "always" : "never";
    }
    step.split = spec.value("split", true);
    if (step.split) {
      TANDEM_ASSIGN_OR_RETURN(step.regex, Regex::Compile(QuoteRegex(step.replacement)));
    }
  } else {
    return UnimplementedError("pre_tokenizer type '{}' is not supported", type);
  }
  steps_.push_back(std::move(step));
  return Status::Ok();
}

StatusOr<std::vector<std::string>> PreTokenizer::SplitPiece(const std::string& piece,
                                                            const Regex& re, Behavior behavior,
                                                            bool invert) {
  TANDEM_ASSIGN_OR_RETURN(auto matches, re.FindAll(piece));
  struct Span {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Span> spans;
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev < b) spans.push_back({prev, b, invert});
    spans.push_back({b, e, !invert});
    prev = e;
  }
  if (prev < piece.size()) spans.push_back({prev, piece.size(), invert});

  std::vector<std::pair<size_t, size_t>> out;  // [begin, end)
  switch (behavior) {
    case Behavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) out.emplace_back(s.begin, s.end);
      }
      break;
    case Behavior::kIsolated:
      for (const Span& s : spans) out.emplace_back(s.begin, s.end);
      break;
    case Behavior::kContiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool next_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !next_match && !out.empty()) {
          out.back().first = it->begin;
        } else {
          out.emplace_back(it->begin, it->end);
        }
        next_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  std::vector<std::string> pieces;
  pieces.reserve(out.size());
  for (auto [b, e] : out) {
    if (e > b) pieces.push_back(piece.substr(b, e - b));
  }
  return pieces;
}

StatusOr<std::vector<std::string>> PreTokenizer::Split(std::string segment,
                                                       bool at_text_start) const {
  std::vector<std::string> pieces;
  if (!segment.empty()) pieces.push_back(std::move(segment));
  for (const Step& step : steps_) {
    std::vector<std::string> next;
    for (size_t i = 0; i < pieces.size(); ++i) {
      std::string piece = std::move(pieces[i]);
      if (step.kind == Step::kByteLevel && step.add_prefix_space && piece[0] != ' ') {
        piece.insert(piece.begin(), ' ');
      }
      if (step.kind == Step::kMetaspace) {
        std::string replaced;
        for (char c : piece) {
          if (c == ' ') {
            replaced += step.replacement;
          } else {
            replaced.push_back(c);
          }
        }
        piece = std::move(replaced);
        bool prepend = step.prepend_scheme == "always" ||
                       (step.prepend_scheme == "first" && i == 0 && at_text_start);
        if (prepend && piece.compare(0, step.replacement.size(), step.replacement) != 0) {
          piece = step.replacement + piece;
        }
      }
      std::vector<std::string> parts;
      if (step.regex != nullptr) {
        Behavior behavior = step.kind == Step::kMetaspace ? Behavior::kMergedWithNext
                            : step.kind == Step::kSplit   ? step.behavior
                                                          : Behavior::kIsolated;
        TANDEM_ASSIGN_OR_RETURN(parts, SplitPiece(piece, *step.regex, behavior, step.invert));
      } else if (!piece.empty()) {
        parts.push_back(std::move(piece));
      }
      for (std::string& part : parts) {
        next.push_back(step.kind == Step::kByteLevel ? BytesToByteLevel(part) : std::move(part));
      }
    }
    pieces = std::move(next);
  }
  return pieces;
}

}  // namespace tandem::tokenizer_internal

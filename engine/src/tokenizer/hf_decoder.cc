#include "hf_decoder.h"

#include "byte_level.h"
#include "unicode.h"

namespace tandem::tokenizer_internal {
namespace {

// "<0xAB>" -> 0xAB, or -1.
int ByteToken(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    char c = t[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

std::string ReplaceAll(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos);
  return out;
}

}  // namespace

StatusOr<std::unique_ptr<HfDecoder>> HfDecoder::FromJson(const nlohmann::json& spec) {
  auto d = std::unique_ptr<HfDecoder>(new HfDecoder());
  if (spec.is_null()) {
    d->null_ = true;
  } else {
    TANDEM_RETURN_IF_ERROR(d->AddSteps(spec));
  }
  return d;
}

Status HfDecoder::AddSteps(const nlohmann::json& spec) {
  if (!spec.is_object() || !spec.contains("type")) {
    return InvalidArgumentError("decoder: expected an object with a \"type\"");
  }
  const std::string type = spec["type"].get<std::string>();
  Step step;
  if (type == "Sequence") {
    for (const auto& child : spec.at("decoders")) TANDEM_RETURN_IF_ERROR(AddSteps(child));
    return Status::Ok();
  } else if (type == "ByteLevel") {
    step.kind = Step::kByteLevel;
  } else if (type == "Replace") {
    const auto& pattern = spec.at("pattern");
    if (!pattern.contains("String")) {
      return UnimplementedError("decoder Replace: only String patterns are supported");
    }
    step.kind = Step::kReplace;
    step.a = pattern["String"].get<std::string>();
    step.b = spec.at("content").get<std::string>();
  } else if (type == "ByteFallback") {
    step.kind = Step::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = Step::kFuse;
  } else if (type == "Strip") {
    step.kind = Step::kStrip;
    step.a = spec.at("content").get<std::string>();
    step.start = spec.value("start", 0);
    step.stop = spec.value("stop", 0);
  } else if (type == "Metaspace") {
    step.kind = Step::kMetaspace;
    step.a = spec.value("replacement", std::string("\xE2\x96\x81"));
    if (spec.contains("prepend_scheme")) {
      step.prepend = spec["prepend_scheme"].get<std::string>() != "never";
    } else {
      step.prepend = spec.value("add_prefix_space", true);
    }
  } else {
    return UnimplementedError("decoder type '{}' is not supported", type);
  }
  steps_.push_back(std::move(step));
  return Status::Ok();
}

std::string HfDecoder::Decode(std::vector<std::string> tokens) const {
  if (null_) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return Utf8Lossy(out);
  }
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Step::kByteLevel: {
        std::string bytes;
        for (const std::string& t : tokens) {
          auto raw = ByteLevelToBytes(t);
          bytes += raw.has_value() ? *raw : t;
        }
        tokens.assign(1, Utf8Lossy(bytes));
        break;
      }
      case Step::kReplace:
        for (std::string& t : tokens) t = ReplaceAll(t, step.a, step.b);
        break;
      case Step::kByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        size_t pending_count = 0;
        auto flush = [&] {
          if (pending_count == 0) return;
          if (IsValidUtf8(pending)) {
            out.push_back(pending);
          } else {
            for (size_t i = 0; i < pending_count; ++i) out.emplace_back(kReplacementChar);
          }
          pending.clear();
          pending_count = 0;
        };
        for (std::string& t : tokens) {
          int b = ByteToken(t);
          if (b >= 0) {
            pending.push_back(static_cast<char>(b));
            ++pending_count;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case Step::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case Step::kStrip:
        for (std::string& t : tokens) {
          if (step.a.empty()) continue;
          for (int i = 0; i < step.start && t.compare(0, step.a.size(), step.a) == 0; ++i) {
            t.erase(0, step.a.size());
          }
          for (int i = 0; i < step.stop && t.size() >= step.a.size() &&
                          t.compare(t.size() - step.a.size(), step.a.size(), step.a) == 0;
               ++i) {
            t.erase(t.size() - step.a.size());
          }
        }
        break;
      case Step::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          tokens[i] = ReplaceAll(tokens[i], step.a, " ");
          if (i == 0 && step.prepend && !tokens[i].empty() && tokens[i][0] == ' ') {
            tokens[i].erase(0, 1);
          }
        }
        break;
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return Utf8Lossy(out);
}

std::string HfDecoder::TokenBytes(const std::string& token) const {
  std::string t = token;
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Step::kByteLevel: {
        auto raw = ByteLevelToBytes(t);
        if (raw.has_value()) t = *raw;
        return t;
      }
      case Step::kReplace:
        t = ReplaceAll(t, step.a, step.b);
        break;
      case Step::kByteFallback: {
        int b = ByteToken(t);
        if (b >= 0) return std::string(1, static_cast<char>(b));
        break;
      }
      case Step::kMetaspace:
        t = ReplaceAll(t, step.a, " ");
        break;
      case Step::kFuse:
      case Step::kStrip:
        break;
    }
  }
  return t;
}

}  // namespace tandem::tokenizer_internal

#include "normalizer.h"

#include "unicode.h"

namespace tandem::tokenizer_internal {

StatusOr<std::unique_ptr<Normalizer>> Normalizer::FromJson(const nlohmann::json& spec) {
  auto n = std::unique_ptr<Normalizer>(new Normalizer());
  TANDEM_RETURN_IF_ERROR(AddSteps(spec, &n->steps_));
  return n;
}

Status Normalizer::AddSteps(const nlohmann::json& spec, std::vector<Step>* steps) {
  if (spec.is_null()) return Status::Ok();
  if (!spec.is_object() || !spec.contains("type")) {
    return InvalidArgumentError("normalizer: expected an object with a \"type\"");
  }
  const std::string type = spec["type"].get<std::string>();
  if (type == "Sequence") {
    for (const auto& child : spec.at("normalizers")) TANDEM_RETURN_IF_ERROR(AddSteps(child, steps));
  } else if (type == "NFC") {
    steps->push_back({Step::kNfc, "", ""});
  } else if (type == "NFKC") {
    steps->push_back({Step::kNfkc, "", ""});
  } else if (type == "Prepend") {
    steps->push_back({Step::kPrepend, spec.at("prepend").get<std::string>(), ""});
  } else if (type == "Replace") {
    const auto& pattern = spec.at("pattern");
    if (!pattern.contains("String")) {
      return UnimplementedError("normalizer Replace: only String patterns are supported");
    }
    steps->push_back({Step::kReplace, pattern["String"].get<std::string>(),
                      spec.at("content").get<std::string>()});
  } else {
    return UnimplementedError("normalizer type '{}' is not supported", type);
  }
  return Status::Ok();
}

StatusOr<std::string> Normalizer::Apply(std::string text) const {
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Step::kNfc: {
        TANDEM_ASSIGN_OR_RETURN(text, NormalizeNfc(text));
        break;
      }
      case Step::kNfkc: {
        TANDEM_ASSIGN_OR_RETURN(text, NormalizeNfkc(text));
        break;
      }
      case Step::kPrepend:
        if (!text.empty()) text = step.a + text;
        break;
      case Step::kReplace: {
        if (step.a.empty()) break;
        std::string out;
        size_t pos = 0;
        for (size_t hit; (hit = text.find(step.a, pos)) != std::string::npos;
             pos = hit + step.a.size()) {
          out.append(text, pos, hit - pos);
          out += step.b;
        }
        out.append(text, pos);
        text = std::move(out);
        break;
      }
    }
  }
  return text;
}

}  // namespace tandem::tokenizer_internal

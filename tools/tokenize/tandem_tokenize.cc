// tandem-tokenize PATH
//
// PATH is a model folder (tokenizer.json or tokenizer.model inside), a .gguf file, a tokenizer.json
// or a SentencePiece .model file. Reads one JSON object per stdin line and writes one per stdout
// line:
//   {"text": "...", "add_special": true}      -> {"ids": [...]}
//   {"ids": [...], "skip_special": false}     -> {"text": "...", "incremental": "...",
//                                                 "chunks": ["..", ...]}
//     ("incremental" is the concatenation of IncrementalDetokenizer outputs and its Flush;
//      "chunks" the individual outputs, Flush last)
//   {"chat": [{"role": .., "content": ..}], "format": "chatml"|"llama2"|"llama3"|"auto",
//    "add_generation_prompt": true}           -> {"prompt": "..."} ("auto": DetectChatFormat(PATH))
//   {"info": true}                            -> {"vocab_size": n, "bos_id": .., "eos_id": ..}
// Errors are reported per line as {"error": "..."}; a load failure exits with status 1.
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include "tandem/engine/chat_template.h"
#include "tandem/engine/detokenizer.h"
#include "tandem/engine/gguf.h"
#include "tandem/engine/tokenizer.h"

namespace {

nlohmann::json Chat(const std::filesystem::path& path, const nlohmann::json& req) {
  const std::string name = req.value("format", "auto");
  tandem::ChatFormat format;
  if (name == "chatml") {
    format = tandem::ChatFormat::kChatML;
  } else if (name == "llama2") {
    format = tandem::ChatFormat::kLlama2;
  } else if (name == "llama3") {
    format = tandem::ChatFormat::kLlama3;
  } else {
    auto detected = tandem::DetectChatFormat(path);
    if (!detected.ok()) return {{"error", detected.status().ToString()}};
    format = *detected;
  }
  std::vector<tandem::ChatMessage> messages;
  for (const auto& m : req["chat"]) {
    messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
  }
  auto prompt =
      tandem::ApplyChatTemplate(format, messages, req.value("add_generation_prompt", true));
  if (!prompt.ok()) return {{"error", prompt.status().ToString()}};
  return {{"prompt", *prompt}};
}

nlohmann::json Handle(const std::filesystem::path& path, const tandem::Tokenizer& tok,
                      const nlohmann::json& req) {
  nlohmann::json resp;
  if (req.contains("chat")) {
    return Chat(path, req);
  } else if (req.contains("text")) {
    auto ids = tok.Encode(req["text"].get<std::string>(), req.value("add_special", false));
    if (!ids.ok()) return {{"error", ids.status().ToString()}};
    resp["ids"] = *ids;
  } else if (req.contains("ids")) {
    auto ids = req["ids"].get<std::vector<int32_t>>();
    const bool skip = req.value("skip_special", false);
    resp["text"] = tok.Decode(ids, skip);
    tandem::IncrementalDetokenizer detok(tok, skip);
    std::string all;
    nlohmann::json chunks = nlohmann::json::array();
    for (int32_t id : ids) {
      std::string piece = detok.Add(id);
      all += piece;
      chunks.push_back(piece);
    }
    std::string rest = detok.Flush();
    all += rest;
    chunks.push_back(rest);
    resp["incremental"] = all;
    resp["chunks"] = chunks;
  } else if (req.contains("info")) {
    resp["vocab_size"] = tok.vocab_size();
    resp["bos_id"] = tok.bos_id().has_value() ? nlohmann::json(*tok.bos_id()) : nlohmann::json();
    resp["eos_id"] = tok.eos_id().has_value() ? nlohmann::json(*tok.eos_id()) : nlohmann::json();
  } else {
    return {{"error", "expected \"text\", \"ids\" or \"info\""}};
  }
  return resp;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: tandem-tokenize MODEL_DIR|MODEL.gguf|tokenizer.json|tokenizer.model\n";
    return 2;
  }
  const std::filesystem::path path = argv[1];
  // A folder or a .gguf file is a whole model: LoadTokenizer and DetectChatFormat take it as is.
  const bool model = std::filesystem::is_directory(path) || tandem::IsGgufPath(path);
  auto tok = model                         ? tandem::LoadTokenizer(path)
             : path.extension() == ".json" ? tandem::LoadHfTokenizerJson(path)
                                           : tandem::LoadSentencePieceModel(path);
  if (!tok.ok()) {
    std::cerr << tok.status().ToString() << "\n";
    return 1;
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    nlohmann::json resp;
    try {
      resp = Handle(model ? path : path.parent_path(), **tok, nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception& e) {
      resp = {{"error", e.what()}};
    }
    std::cout << resp.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n"
              << std::flush;
  }
  return 0;
}

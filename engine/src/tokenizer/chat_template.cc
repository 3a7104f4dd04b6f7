// The three chat formats Tandem renders natively, each equal to its Jinja template:
//
// ChatML (SmolLM2-Instruct):
//   {% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}
//   {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging
//   Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' +
//   message['content'] + '<|im_end|>' + '\n'}}{% endfor %}
//   {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
// Llama-2-chat: bos_token + '[INST] ' + content.strip() + ' [/INST]' per user turn (the first
//   user turn carrying '<<SYS>>\n' + system + '\n<</SYS>>\n\n'), ' ' + content.strip() + ' ' +
//   eos_token per assistant turn; roles must alternate user/assistant.
// Llama-3-instruct: bos_token once, then '<|start_header_id|>' + role + '<|end_header_id|>\n\n' +
//   content|trim + '<|eot_id|>' per message, and the assistant header as generation prompt.
//
// The leading BOS the templates render is left out: callers encode the prompt with
// add_special_tokens=true, which inserts it (Llama-2's later "<s>" stay in the text).
#include "tandem/engine/chat_template.h"

#include <initializer_list>
#include <optional>

#include "gguf_tokenizer.h"
#include "tandem/engine/gguf.h"
#include "tokenizer_config.h"
#include "unicode.h"

namespace tandem {
namespace {

using tokenizer_internal::StripWhitespace;

constexpr std::string_view kSmolLmSystem =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

// out += every part (GCC 12 warns falsely, -Wrestrict, on chains of std::string operator+).
void Append(std::string* out, std::initializer_list<std::string_view> parts) {
  for (std::string_view p : parts) out->append(p);
}

bool Contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

Status CheckRoles(const std::vector<ChatMessage>& messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant") {
      return InvalidArgumentError("messages[{}].role: unknown role '{}'", i, r);
    }
  }
  return Status::Ok();
}

std::string RenderChatMl(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0 && messages[0].role != "system") {
      out += "<|im_start|>system\n";
      out += kSmolLmSystem;
      out += "<|im_end|>\n";
    }
    Append(&out, {"<|im_start|>", messages[i].role, "\n", messages[i].content, "<|im_end|>\n"});
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

StatusOr<std::string> RenderLlama2(const std::vector<ChatMessage>& messages) {
  size_t first = 0;
  std::optional<std::string> system;
  if (!messages.empty() && messages[0].role == "system") {
    system = messages[0].content;
    first = 1;
  }
  std::string out;
  for (size_t i = first; i < messages.size(); ++i) {
    const size_t index0 = i - first;
    const ChatMessage& m = messages[i];
    if ((m.role == "user") != (index0 % 2 == 0)) {
      return InvalidArgumentError(
          "messages[{}].role: Llama-2 conversation roles must alternate "
          "user/assistant/user/assistant/...",
          i);
    }
    std::string content = m.content;
    if (index0 == 0 && system.has_value()) {
      content.clear();
      Append(&content, {"<<SYS>>\n", *system, "\n<</SYS>>\n\n", m.content});
    }
    if (m.role == "user") {
      if (index0 != 0) out += "<s>";
      Append(&out, {"[INST] ", StripWhitespace(content), " [/INST]"});
    } else {
      Append(&out, {" ", StripWhitespace(content), " </s>"});
    }
  }
  return out;
}

std::string RenderLlama3(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out;
  for (const ChatMessage& m : messages) {
    Append(&out, {"<|start_header_id|>", m.role, "<|end_header_id|>\n\n",
                  StripWhitespace(m.content), "<|eot_id|>"});
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace

StatusOr<ChatFormat> DetectChatFormat(const std::filesystem::path& dir) {
  tokenizer_internal::TokenizerConfig config;
  std::filesystem::path file = dir / "tokenizer_config.json";
  if (IsGgufPath(dir)) {
    // A GGUF file carries the template as tokenizer.chat_template.
    file = dir;
    TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(dir));
    TANDEM_ASSIGN_OR_RETURN(config, tokenizer_internal::GgufTokenizerConfig(*gguf));
    if (!config.chat_template.has_value()) {
      return FailedPreconditionError("{}: no tokenizer.chat_template; the model has no chat format",
                                     file.string());
    }
  } else {
    TANDEM_ASSIGN_OR_RETURN(config, tokenizer_internal::ReadTokenizerConfig(file));
  }
  if (!config.present) {
    return FailedPreconditionError("{}: file not found, so the chat format is unknown",
                                   file.string());
  }
  if (!config.chat_template.has_value()) {
    return FailedPreconditionError("{}: no \"chat_template\"; the model has no chat format",
                                   file.string());
  }
  return ChatFormatOfTemplate(*config.chat_template, file.string());
}

StatusOr<ChatFormat> ChatFormatOfTemplate(std::string_view t, const std::string& source) {
  if (Contains(t, "<|im_start|>")) {
    if (Contains(t, kSmolLmSystem)) return ChatFormat::kChatML;
    return FailedPreconditionError(
        "{}: chat_template is a ChatML variant other than SmolLM2's (different default system "
        "prompt or tools); not supported",
        source);
  }
  if (Contains(t, "<|start_header_id|>") && Contains(t, "<|eot_id|>")) {
    if (Contains(t, "Cutting Knowledge Date") || Contains(t, "tools")) {
      return FailedPreconditionError(
          "{}: chat_template is a Llama-3.1+ template (tools, date system prompt); only the "
          "Llama-3 template is supported",
          source);
    }
    return ChatFormat::kLlama3;
  }
  if (Contains(t, "[INST]") && Contains(t, "<<SYS>>")) return ChatFormat::kLlama2;
  return FailedPreconditionError(
      "{}: chat_template is not a known format (ChatML, Llama-2 [INST] <<SYS>>, Llama-3 "
      "<|start_header_id|>)",
      source);
}

StatusOr<std::string> ApplyChatTemplate(ChatFormat format, const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt) {
  TANDEM_RETURN_IF_ERROR(CheckRoles(messages));
  switch (format) {
    case ChatFormat::kChatML:
      return RenderChatMl(messages, add_generation_prompt);
    case ChatFormat::kLlama2:
      return RenderLlama2(messages);
    case ChatFormat::kLlama3:
      return RenderLlama3(messages, add_generation_prompt);
  }
  return InvalidArgumentError("unknown chat format {}", static_cast<int>(format));
}

}  // namespace tandem

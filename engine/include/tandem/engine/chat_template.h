// Chat templates known to Tandem. A model's Jinja template (tokenizer_config.json "chat_template")
// is recognised as one of these formats; any other template is refused with a clear message.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/status.h"

namespace tandem {

enum class ChatFormat { kChatML, kLlama2, kLlama3 };

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// Detects the format of the model in `dir` from tokenizer_config.json's chat_template, or, when
// `dir` names a .gguf file, from its tokenizer.chat_template.
// FAILED_PRECONDITION naming the file when there is none or it is not a known format.
StatusOr<ChatFormat> DetectChatFormat(const std::filesystem::path& dir);

// The format a chat_template's text is recognised as; FAILED_PRECONDITION naming `source`
// (where the template came from) when it is not a known format.
StatusOr<ChatFormat> ChatFormatOfTemplate(std::string_view chat_template,
                                          const std::string& source);

// The prompt text for `messages`, ending with the assistant's turn opener when
// `add_generation_prompt`. Text identical to what the model's Jinja template renders
// (including its default system prompt, e.g. SmolLM2's). INVALID_ARGUMENT for unknown roles.
StatusOr<std::string> ApplyChatTemplate(ChatFormat format, const std::vector<ChatMessage>& messages,
                                        bool add_generation_prompt);

}  // namespace tandem

// Chat templates (engine/src/tokenizer/chat_template.cc): recognising a chat_template's text and
// rendering messages in every format. Input: the template, a NUL, then messages separated by
// NULs, each a role byte (0 system, 1 user, 2 assistant, else the next bytes up to ':') and
// its content.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/engine/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tandem;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t end = in.find('\0');
  (void)ChatFormatOfTemplate(in.substr(0, end), "fuzz");
  if (end == std::string_view::npos) return 0;
  std::vector<ChatMessage> messages;
  std::string_view rest = in.substr(end + 1);
  while (!rest.empty() && messages.size() < 64) {
    const size_t next = rest.find('\0');
    std::string_view m = rest.substr(0, next);
    rest = next == std::string_view::npos ? std::string_view() : rest.substr(next + 1);
    if (m.empty()) continue;
    ChatMessage msg;
    static const char* kRoles[] = {"system", "user", "assistant"};
    const auto r = static_cast<uint8_t>(m[0]);
    if (r < 3) {
      msg.role = kRoles[r];
      msg.content = std::string(m.substr(1));
    } else {
      const size_t colon = m.find(':');
      msg.role = std::string(m.substr(0, colon));
      if (colon != std::string_view::npos) msg.content = std::string(m.substr(colon + 1));
    }
    messages.push_back(std::move(msg));
  }
  for (ChatFormat f : {ChatFormat::kChatML, ChatFormat::kLlama2, ChatFormat::kLlama3}) {
    for (bool gen : {false, true}) (void)ApplyChatTemplate(f, messages, gen);
  }
  return 0;
}

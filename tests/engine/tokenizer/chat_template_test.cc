// Chat formats: detection from tokenizer_config.json and rendering (the Python test compares
// the rendering with the Jinja templates themselves).
#include <gtest/gtest.h>

#include "tandem/engine/chat_template.h"
#include "test_util.h"

namespace tandem {
namespace {

using testing::TempDir;

constexpr char kSmolTemplate[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\\n' }}{% endif %}";

StatusOr<ChatFormat> DetectFrom(const TempDir& dir, const nlohmann::json& config) {
  dir.Write("tokenizer_config.json", config.dump());
  return DetectChatFormat(dir.path());
}

TEST(ChatTemplate, DetectsFormats) {
  TempDir dir;
  EXPECT_EQ(DetectFrom(dir, {{"chat_template", kSmolTemplate}}).value(), ChatFormat::kChatML);
  EXPECT_EQ(DetectFrom(dir, {{"chat_template",
                              "{% if messages[0]['role'] == 'system' %}<<SYS>>{% endif %}"
                              "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"}})
                .value(),
            ChatFormat::kLlama2);
  EXPECT_EQ(DetectFrom(dir, {{"chat_template",
                              "{{ '<|start_header_id|>' + message['role'] + "
                              "'<|end_header_id|>\\n\\n' + message['content'] | trim + "
                              "'<|eot_id|>' }}"}})
                .value(),
            ChatFormat::kLlama3);
}

TEST(ChatTemplate, UnknownFormatsAreRefusedNamingTheFile) {
  TempDir dir;
  auto none = DetectChatFormat(dir.path());
  EXPECT_EQ(none.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(none.status().message().find("tokenizer_config.json"), std::string::npos);
  auto no_template = DetectFrom(dir, {{"bos_token", "<s>"}});
  EXPECT_EQ(no_template.status().code(), StatusCode::kFailedPrecondition);
  auto other = DetectFrom(dir, {{"chat_template", "{{ messages }}"}});
  EXPECT_EQ(other.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(other.status().message().find("tokenizer_config.json"), std::string::npos);
  auto qwen = DetectFrom(dir, {{"chat_template", "<|im_start|>system\nYou are Qwen<|im_end|>"}});
  EXPECT_EQ(qwen.status().code(), StatusCode::kFailedPrecondition);
}

TEST(ChatTemplate, ChatMlAddsSmolLmDefaultSystem) {
  auto text = ApplyChatTemplate(ChatFormat::kChatML, {{"user", "Hi"}}, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  text = ApplyChatTemplate(ChatFormat::kChatML, {{"system", "S"}, {"user", "Hi"}}, false);
  EXPECT_EQ(*text, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplate, Llama2) {
  auto text = ApplyChatTemplate(
      ChatFormat::kLlama2,
      {{"system", "Sys"}, {"user", " Hi "}, {"assistant", "Yo"}, {"user", "Q"}}, true);
  ASSERT_TRUE(text.ok());
  // Jinja strips the whole content (system block + message), so " Hi" keeps its space.
  EXPECT_EQ(*text, "[INST] <<SYS>>\nSys\n<</SYS>>\n\n Hi [/INST] Yo </s><s>[INST] Q [/INST]");
  auto bad = ApplyChatTemplate(ChatFormat::kLlama2, {{"user", "a"}, {"user", "b"}}, true);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST(ChatTemplate, Llama3) {
  auto text = ApplyChatTemplate(ChatFormat::kLlama3, {{"system", "S "}, {"user", "Hi"}}, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, UnknownRoleIsInvalid) {
  auto bad = ApplyChatTemplate(ChatFormat::kChatML, {{"tool", "x"}}, true);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("role"), std::string::npos);
}

TEST(ChatTemplate, SmolLm2ModelFolder) {
  const auto dir = testing::SmolLm2Dir();
  if (!std::filesystem::exists(dir / "tokenizer_config.json")) GTEST_SKIP() << dir;
  auto format = DetectChatFormat(dir);
  ASSERT_TRUE(format.ok()) << format.status().ToString();
  EXPECT_EQ(*format, ChatFormat::kChatML);
}

}  // namespace
}  // namespace tandem

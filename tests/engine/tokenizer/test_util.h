// Helpers shared by the tokenizer tests: temporary folders and tiny handcrafted tokenizers.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

namespace tandem::testing {

// A fresh folder under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("tandem_tok_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path Write(const std::string& name, const std::string& content) const {
    std::ofstream(path_ / name, std::ios::binary) << content;
    return path_ / name;
  }

 private:
  std::filesystem::path path_;
};

// GPT-2's byte -> printable code point mapping, as UTF-8 (the test's own copy).
inline std::string ByteChar(int b) {
  int n = 0;
  for (int c = 0; c < 256; ++c) {
    bool printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE;
    int cp = printable ? c : 256 + n++;
    if (c == b) {
      std::string s;
      if (cp < 0x80) {
        s.push_back(static_cast<char>(cp));
      } else {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
      return s;
    }
  }
  return "";
}

// The smollm2 model folder: $TANDEM_MODEL_DIR or <repo>/models/SmolLM2-135M-Instruct.
inline std::filesystem::path SmolLm2Dir() {
  if (const char* env = std::getenv("TANDEM_MODEL_DIR")) return env;
  return std::filesystem::path(TANDEM_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct";
}

}  // namespace tandem::testing

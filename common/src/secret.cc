#include "tandem/common/secret.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace tandem {
namespace {

std::string_view Trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n";
  const size_t b = s.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kSpace) - b + 1);
}

}  // namespace

StatusOr<std::string> LoadClusterKey(const std::string& file) {
  std::string key;
  std::string from;
  if (!file.empty()) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return InvalidArgumentError("--cluster-key-file {}: cannot read it", file);
    std::ostringstream text;
    text << in.rdbuf();
    key = std::string(Trim(text.str()));
    from = "--cluster-key-file " + file;
  } else if (const char* env = std::getenv(kClusterKeyEnv); env != nullptr) {
    key = std::string(Trim(env));
    from = kClusterKeyEnv;
  } else {
    return std::string();
  }
  if (key.size() < kMinClusterKeyBytes) {
    return InvalidArgumentError("{}: the cluster key must be at least {} bytes, got {}", from,
                                kMinClusterKeyBytes, key.size());
  }
  return key;
}

StatusOr<std::string> NewClusterKey() {
  unsigned char bytes[32];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return InternalError("getrandom: {}", std::strerror(errno));
    got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string key;
  for (unsigned char b : bytes) {
    key.push_back(kHex[b >> 4]);
    key.push_back(kHex[b & 15]);
  }
  return key;
}

bool SecretEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

}  // namespace tandem

// Certificates made at test time by tests/rpc/make_test_certs.sh (a CA, server and client
// certificates signed by it, and an unrelated CA) in a folder of their own, removed with the
// object. Shared by the TLS credential tests and the HTTPS server tests.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace tandem::testing_tls {

class TestCerts {
 public:
  // `tag` names the folder (with this process's pid) under the temp directory.
  explicit TestCerts(const std::string& tag)
      : dir_(std::filesystem::temp_directory_path() / (tag + "-" + std::to_string(getpid()))),
        command_(std::string(TANDEM_SOURCE_DIR) + "/tests/rpc/make_test_certs.sh " + dir_.string() +
                 " >/dev/null") {
    ok_ = std::system(command_.c_str()) == 0;
  }
  ~TestCerts() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  TestCerts(const TestCerts&) = delete;
  TestCerts& operator=(const TestCerts&) = delete;

  // False when the script failed; command() says what ran.
  bool ok() const { return ok_; }
  const std::string& command() const { return command_; }
  // A file in the folder, e.g. "ca.pem".
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

 private:
  const std::filesystem::path dir_;
  const std::string command_;
  bool ok_ = false;
};

}  // namespace tandem::testing_tls

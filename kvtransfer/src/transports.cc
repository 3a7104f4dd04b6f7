#include "tandem/kvtransfer/transports.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "tandem/common/hash.h"

namespace tandem {
namespace {

std::string ReadFirstLine(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

StatusOr<std::vector<std::string>> ParseKvTransports(std::string_view flag) {
  if (flag == "auto") return std::vector<std::string>{"shm", "tcp"};
  if (flag == kKvTransportTcp || flag == kKvTransportShm || flag == kKvTransportNccl ||
      flag == kKvTransportCudaIpc) {
    return std::vector<std::string>{std::string(flag)};
  }
  return InvalidArgumentError("--kv-transport must be auto, tcp, shm, cuda_ipc or nccl, got '{}'",
                              flag);
}

const std::string& LocalHostId() {
  static const std::string id = [] {
    // The boot id names this kernel instance; the network namespace decides which abstract
    // Unix sockets are visible (containers on one host usually differ there).
    std::string boot = ReadFirstLine("/proc/sys/kernel/random/boot_id");
    char ns[128] = {0};
    const ssize_t n = ::readlink("/proc/self/ns/net", ns, sizeof(ns) - 1);
    const std::string net = n > 0 ? std::string(ns, static_cast<size_t>(n)) : "";
    if (boot.empty()) {
      char host[256] = {0};
      ::gethostname(host, sizeof(host) - 1);
      boot = host;
    }
    return fmt::format("{:016x}", Hash64(boot + "|" + net));
  }();
  return id;
}

}  // namespace tandem

#include "tandem/router/kv_transport_choice.h"

#include <algorithm>

#include <fmt/ranges.h>

namespace tandem {
namespace {

constexpr std::string_view kTcp = "tcp";
constexpr std::string_view kShm = "shm";
constexpr std::string_view kNccl = "nccl";
constexpr std::string_view kCudaIpc = "cuda_ipc";

bool Has(const std::vector<std::string>& v, std::string_view x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

StatusOr<std::string> ChooseKvTransport(std::string_view mode, std::string_view prefill_host,
                                        const std::vector<std::string>& prefill_transports,
                                        std::string_view decode_host,
                                        const std::vector<std::string>& decode_transports) {
  const bool same_host = !prefill_host.empty() && prefill_host == decode_host;
  // Workers that registered no transports (static ones, older builds) speak tcp.
  auto offers = [](const std::vector<std::string>& v, std::string_view t) {
    return v.empty() ? t == kTcp : Has(v, t);
  };
  const bool shm_ok =
      same_host && offers(prefill_transports, kShm) && offers(decode_transports, kShm);
  const bool tcp_ok = offers(prefill_transports, kTcp) && offers(decode_transports, kTcp);
  const bool nccl_ok = offers(prefill_transports, kNccl) && offers(decode_transports, kNccl);
  const bool cuda_ipc_ok =
      same_host && offers(prefill_transports, kCudaIpc) && offers(decode_transports, kCudaIpc);
  if (mode == "auto") {
    if (cuda_ipc_ok) return std::string(kCudaIpc);
    if (shm_ok) return std::string(kShm);
    if (nccl_ok) return std::string(kNccl);
    if (tcp_ok) return std::string(kTcp);
    return FailedPreconditionError(
        "no KV transport shared by the prefill worker ({}) and the decode worker ({}){}",
        fmt::join(prefill_transports, ","), fmt::join(decode_transports, ","),
        same_host ? "" : " on different hosts");
  }
  if (mode == kShm) {
    if (shm_ok) return std::string(kShm);
    return FailedPreconditionError(
        "--kv-transport shm: {}",
        !same_host ? "the prefill and decode workers are not on one host (or did not register)"
                   : "a worker does not offer shm");
  }
  if (mode == kCudaIpc) {
    if (cuda_ipc_ok) return std::string(kCudaIpc);
    return FailedPreconditionError(
        "--kv-transport cuda_ipc: {}",
        !same_host ? "the prefill and decode workers are not on one host (or did not register)"
                   : "a worker does not offer cuda_ipc (CUDA workers only)");
  }
  if (mode == kNccl) {
    if (nccl_ok) return std::string(kNccl);
    return FailedPreconditionError("--kv-transport nccl: a worker does not offer nccl");
  }
  if (mode == kTcp) {
    if (tcp_ok) return std::string(kTcp);
    return FailedPreconditionError("--kv-transport tcp: a worker does not offer tcp");
  }
  return InvalidArgumentError(
      "kv transport mode must be auto, tcp, shm, cuda_ipc or nccl, got '{}'", mode);
}

}  // namespace tandem

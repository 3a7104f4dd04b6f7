// Which KV transports a worker offers, and which host it is on: what a worker registers with
// the router, which picks one transport per (prefill, decode) pair from that
// (router/include/tandem/router/kv_transport_choice.h).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/status.h"

namespace tandem {

inline constexpr std::string_view kKvTransportTcp = "tcp";
inline constexpr std::string_view kKvTransportShm = "shm";
inline constexpr std::string_view kKvTransportNccl = "nccl";
inline constexpr std::string_view kKvTransportCudaIpc = "cuda_ipc";

// Endpoints name their transport (see transceiver.h): "shm:<unix socket>" is shm,
// "cuda_ipc:<unix socket>" cuda_ipc, "nccl:host:port" nccl, anything else ("host:port") tcp.
inline std::string_view KvTransportOfEndpoint(std::string_view endpoint) {
  if (endpoint.substr(0, 4) == "shm:") return kKvTransportShm;
  if (endpoint.substr(0, 9) == "cuda_ipc:") return kKvTransportCudaIpc;
  if (endpoint.substr(0, 5) == "nccl:") return kKvTransportNccl;
  return kKvTransportTcp;
}

// The value of --kv-transport: "auto" (the CPU transports: shm, tcp; a CUDA worker adds
// cuda_ipc itself), "tcp", "shm", "cuda_ipc" (CUDA workers on one host) or "nccl" (which also
// needs --nccl-library). INVALID_ARGUMENT naming the choices otherwise.
StatusOr<std::vector<std::string>> ParseKvTransports(std::string_view flag);

// Identifies this host and network namespace: two processes with equal ids reach each other's
// abstract Unix sockets and can share memory through them. Stable for the process's life.
const std::string& LocalHostId();

}  // namespace tandem

// The KV transport of one (prefill, decode) pair, from what both workers registered
// (RegisterRequest.host_id / kv_transports) and the router's --kv-transport.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/status.h"

namespace tandem {

// The transport that writes a decode worker's device pages (Reserve asks for it by name).
inline constexpr std::string_view kCudaIpcTransport = "cuda_ipc";

// The transport for one transfer. `mode` is the router's --kv-transport ("auto", "tcp", "shm",
// "cuda_ipc", "nccl"); the rest is what each worker registered (empty host ids: unknown, so not
// the same host). "auto": cuda_ipc when both share a host and offer it (CUDA workers), else shm
// likewise, else nccl when both offer it (workers offer it only when told to), else tcp. A forced
// transport that one side lacks (or shm across hosts) is FAILED_PRECONDITION saying which.
StatusOr<std::string> ChooseKvTransport(std::string_view mode, std::string_view prefill_host,
                                        const std::vector<std::string>& prefill_transports,
                                        std::string_view decode_host,
                                        const std::vector<std::string>& decode_transports);

}  // namespace tandem

#include "tandem/worker/kv_pages.h"

#include <algorithm>

#include "tandem/common/hash.h"
#include "tandem/common/logging.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/kvtransfer/transports.h"

namespace tandem {

KvPageLayout MakeKvPageLayout(Engine& engine) {
  return MakeKvPageLayout(engine.kv_cache().geometry(), engine.model_hash());
}

StatusOr<const NcclApi*> WorkerNccl(const std::vector<std::string>& transports,
                                    const std::string& library) {
  if (std::find(transports.begin(), transports.end(), kKvTransportNccl) == transports.end()) {
    return nullptr;
  }
  TANDEM_ASSIGN_OR_RETURN(const NcclApi* api, NcclApiFromFlag(library));
  if (api != &FakeNcclApi()) {
    return FailedPreconditionError(
        "--kv-transport nccl with {}: NCCL moves device memory, and this worker's KV pages reach "
        "the transport through host memory (device pages are staged); sending device pages "
        "directly is not built yet. Use --kv-transport tcp or shm, or --nccl-library=fake to run "
        "the nccl data plane over its CPU loopback",
        api->name);
  }
  return api;
}

StatusOr<std::unique_ptr<DeviceIpc>> WorkerDeviceIpc(std::string_view flag, Device device,
                                                     int32_t cuda_device,
                                                     std::vector<std::string>* transports) {
  const bool forced = flag == kKvTransportCudaIpc;
  if (!forced && flag != "auto") return std::unique_ptr<DeviceIpc>();
  if (device != Device::kCuda) {
    if (!forced) return std::unique_ptr<DeviceIpc>();
    return FailedPreconditionError(
        "--kv-transport cuda_ipc shares device memory: it needs --device cuda (this worker "
        "computes on the CPU; use shm between CPU workers on one host)");
  }
  StatusOr<std::unique_ptr<DeviceIpc>> ipc = CreateCudaDeviceIpc(cuda_device);
  if (!ipc.ok()) {
    if (forced) {
      return Status(ipc.status().code(),
                    fmt::format("--kv-transport cuda_ipc: {}", ipc.status().message()));
    }
    TLOG_WARN("KV transport cuda_ipc left out: {}", ipc.status().ToString());
    return std::unique_ptr<DeviceIpc>();
  }
  if (!forced) transports->insert(transports->begin(), std::string(kKvTransportCudaIpc));
  return ipc;
}

uint64_t TransferId(std::string_view request_id) { return Hash64(request_id); }

}  // namespace tandem

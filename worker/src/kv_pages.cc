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

StatusOr<WorkerNcclChoice> WorkerNccl(const std::vector<std::string>& transports,
                                      const std::string& library, const PagePool& pool) {
  WorkerNcclChoice choice;
  if (std::find(transports.begin(), transports.end(), kKvTransportNccl) == transports.end()) {
    return choice;
  }
  TANDEM_ASSIGN_OR_RETURN(choice.api, NcclApiFromFlag(library));
  const bool device = pool.memory() == PageMemory::kDevice;
  if (choice.api != &FakeNcclApi()) {
    if (!device) {
      return FailedPreconditionError(
          "--kv-transport nccl with {}: NCCL moves device memory, and this worker's KV pages are "
          "host memory ({}). Use --kv-transport tcp or shm between CPU workers, or "
          "--nccl-library=fake to run the nccl data plane over its CPU loopback",
          choice.api->name, pool.kind());
    }
    choice.device_pages = true;
  } else {
    // The fake copies with the CPU: device pages only where they are host memory.
    choice.device_pages = device && CudaBackendName() == "cuda-interp";
  }
  return choice;
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

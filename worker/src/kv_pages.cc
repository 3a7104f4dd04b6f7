#include "tandem/worker/kv_pages.h"

#include <algorithm>

#include "tandem/common/hash.h"
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

uint64_t TransferId(std::string_view request_id) { return Hash64(request_id); }

}  // namespace tandem

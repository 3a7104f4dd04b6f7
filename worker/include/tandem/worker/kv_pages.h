// Glue between the engine's KV cache and kvtransfer, the same on both ends of a transfer: the
// PageAccessor over a host page pool, the wire layout of an engine's pages, and the transfer id
// both workers derive from a request id.
//
// Thread safety: KvCachePages only hands out spans (Page() may be called from any thread: the
// Transceiver's I/O threads read and write pages through it); who may write a page is decided by
// the page's owner (on the decode side the reservation table while a transfer runs, the engine
// loop afterwards). The functions are pure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/device_ipc.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/kvtransfer/formatter.h"
#include "tandem/kvtransfer/layout.h"
#include "tandem/kvtransfer/nccl_api.h"

namespace tandem {

// Exposes a host PagePool's pages to the Transceiver: the engine's KvCache pool, or for device
// pages the KvStaging mirror. The pool must outlive the accessor.
class KvCachePages final : public PageAccessor {
 public:
  explicit KvCachePages(const PagePool& pool) : pool_(pool) {}
  explicit KvCachePages(const KvCache& cache) : pool_(cache.pool()) {}
  std::span<std::byte> Page(int32_t layer, int32_t block) const override {
    return {pool_.Page(layer, block), pool_.geometry().PageBytes()};
  }

 private:
  const PagePool& pool_;
};

// The wire layout of `engine`'s KV pages: its cache geometry and its model_hash() at the current
// layout version. Both workers build theirs this way, so equal checkpoints and geometry give
// equal fingerprints.
KvPageLayout MakeKvPageLayout(Engine& engine);

// The NCCL of a worker's nccl transport, and which pages it moves.
struct WorkerNcclChoice {
  const NcclApi* api = nullptr;  // nullptr: no nccl transport
  // The engine's own device pages go to NCCL directly (no host staging): the real library on a
  // CUDA worker, or the fake one where device memory is host memory (the CUDA interpreter).
  // Otherwise NCCL moves host pages (the staging mirror of device pages).
  bool device_pages = false;
};
// api is nullptr when `transports` (ParseKvTransports) lacks "nccl", else
// NcclApiFromFlag(library) ("fake" on CPU hosts). `pool`: the engine's KV pages. The real library
// moves device memory only: FAILED_PRECONDITION for it on a worker whose pages are host memory.
StatusOr<WorkerNcclChoice> WorkerNccl(const std::vector<std::string>& transports,
                                      const std::string& library, const PagePool& pool);

// The cuda_ipc transport of a worker whose engine computes on `device` (cuda_device): with
// `flag` "auto" on a CUDA device whose memory can be exported, "cuda_ipc" goes first in
// `transports` (ParseKvTransports(flag)); "auto" elsewhere leaves it out (logged when a CUDA
// device cannot export). Returns the DeviceIpc the transceiver needs, or nullptr when cuda_ipc
// is not among the transports. FAILED_PRECONDITION for --kv-transport cuda_ipc on a CPU
// worker; the backend's error when a CUDA device cannot share its memory.
StatusOr<std::unique_ptr<DeviceIpc>> WorkerDeviceIpc(std::string_view flag, Device device,
                                                     int32_t cuda_device,
                                                     std::vector<std::string>* transports);

// The kvtransfer id of a request: Hash64(request_id). The decode worker registers its
// ExpectTransfer under it and the prefill worker sends under it.
uint64_t TransferId(std::string_view request_id);

}  // namespace tandem

// The CUDA backend of ModelRunner: device weights (bf16 by default), cuBLASLt GEMMs, the fused
// kernels of tandem/kernels/cuda, KV pages in device memory, per-layer CUDA events for the KV
// sender, decode steps captured as CUDA graphs per batch-size bucket, sampling on the device.
//
// A binary gets the backend by linking one of two flavours of it (engine/CMakeLists.txt):
//  - "cuda": the kernels compiled by nvcc, the CUDA runtime and cuBLASLt (a GPU is needed);
//  - "cuda-interp": the same kernel sources compiled by the host compiler against the in-repo
//    interpreter (kernels/interp), which executes them on the CPU — how CI runs this backend.
// Each flavour registers itself at static initialisation; CreateCudaRunner finds it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include "tandem/common/device_ipc.h"
#include "tandem/common/dtype.h"
#include "tandem/common/status.h"
#include "tandem/engine/model_runner.h"
#include "tandem/engine/weights.h"

namespace tandem {

struct CudaRunnerOptions {
  // CUDA device ordinal. Default: 0.
  int32_t device = 0;
  // How weights are stored on the device: bf16 (default), f16 or f32. Activations and the KV
  // cache use the same dtype; accumulation is always f32.
  std::optional<DType> weights;
  // Batch-invariant kernels (fixed GEMM algorithm without split-K, fixed attention split
  // size): a sequence's tokens do not depend on what it is batched with. Default: off.
  bool deterministic = false;
  // Capture decode steps as CUDA graphs per batch-size bucket. Default: on.
  bool cuda_graphs = true;
};

using CudaRunnerFactory = StatusOr<std::unique_ptr<ModelRunner>> (*)(
    const ModelConfig& config, std::unique_ptr<ModelWeights> weights,
    const CudaRunnerOptions& options);

// Called by the flavour linked into the binary; the first registration wins.
bool RegisterCudaBackend(std::string_view name, CudaRunnerFactory factory);
// "cuda", "cuda-interp", or "" when this binary has no CUDA backend.
std::string_view CudaBackendName();

// UNIMPLEMENTED when the binary was built without a CUDA backend; UNAVAILABLE naming the
// missing device (and the runtime's own message) when there is no usable GPU;
// INVALID_ARGUMENT for an unsupported weight dtype or model shape.
StatusOr<std::unique_ptr<ModelRunner>> CreateCudaRunner(const ModelConfig& config,
                                                        std::unique_ptr<ModelWeights> weights,
                                                        const CudaRunnerOptions& options);

// Device memory shared between processes (tandem/common/device_ipc.h) for the cuda_ipc KV
// transport: the peer side of a pool made with ModelRunner::CreatePagePool(..., exportable)
// (EngineOptions::kv_device_export). Both flavours register it with the runner.
using DeviceIpcFactory = StatusOr<std::unique_ptr<DeviceIpc>> (*)(int32_t device);
// Called by the flavour linked into the binary; the first registration wins.
bool RegisterCudaDeviceIpc(DeviceIpcFactory factory);
// A DeviceIpc on CUDA device `device`. UNIMPLEMENTED when the binary was built without a CUDA
// backend; UNAVAILABLE when there is no such device or it cannot share memory between processes
// (no virtual memory management API, or no POSIX file descriptor handles).
StatusOr<std::unique_ptr<DeviceIpc>> CreateCudaDeviceIpc(int32_t device);

}  // namespace tandem

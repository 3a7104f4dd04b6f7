#include <string>

#include "tandem/engine/cuda_runner.h"

namespace tandem {
namespace {

struct Registration {
  std::string name;
  CudaRunnerFactory factory = nullptr;
};

Registration& Registered() {
  static Registration r;
  return r;
}

DeviceIpcFactory& RegisteredDeviceIpc() {
  static DeviceIpcFactory f = nullptr;
  return f;
}

}  // namespace

bool RegisterCudaBackend(std::string_view name, CudaRunnerFactory factory) {
  Registration& r = Registered();
  if (r.factory != nullptr) return false;
  r.name = std::string(name);
  r.factory = factory;
  return true;
}

std::string_view CudaBackendName() { return Registered().name; }

StatusOr<std::unique_ptr<ModelRunner>> CreateCudaRunner(const ModelConfig& config,
                                                        std::unique_ptr<ModelWeights> weights,
                                                        const CudaRunnerOptions& options) {
  const Registration& r = Registered();
  if (r.factory == nullptr) {
    return UnimplementedError(
        "this binary was built without the CUDA backend (configure with a CUDA toolkit, "
        "TANDEM_CUDA=ON)");
  }
  return r.factory(config, std::move(weights), options);
}

bool RegisterCudaDeviceIpc(DeviceIpcFactory factory) {
  DeviceIpcFactory& f = RegisteredDeviceIpc();
  if (f != nullptr) return false;
  f = factory;
  return true;
}

StatusOr<std::unique_ptr<DeviceIpc>> CreateCudaDeviceIpc(int32_t device) {
  const DeviceIpcFactory f = RegisteredDeviceIpc();
  if (f == nullptr) {
    return UnimplementedError(
        "cuda_ipc: this binary was built without the CUDA backend (configure with a CUDA "
        "toolkit, TANDEM_CUDA=ON)");
  }
  return f(device);
}

}  // namespace tandem

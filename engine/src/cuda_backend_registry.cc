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

}  // namespace tandem

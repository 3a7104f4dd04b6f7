// The router's tandem.v1.Registry service: workers register and heartbeat into the WorkerPool.
// Until the router has loaded, calls answer UNAVAILABLE (the worker retries). With a cluster key
// (tandem/rpc/cluster_auth.h) a call without it is refused UNAUTHENTICATED before anything else:
// the Registry shares the router's public port, and a stranger must not register a worker, take
// one's id, or mark one draining.
//
// Thread safety: every method may be called concurrently; SetPool at most once.
#pragma once

#include <atomic>
#include <string>

#include "tandem/router/worker_pool.h"
#include "tandem/rpc/tls_credentials.h"
#include "tandem/v1/internal.grpc.pb.h"

namespace tandem {

class RegistryService final : public v1::Registry::CallbackService {
 public:
  // `cluster_key`: required of every call; empty: none. `tls`: the router port's TLS; with a
  // certificate and a CA, every call must come with a client certificate the CA verified.
  explicit RegistryService(std::string cluster_key = {}, TlsConfig tls = {})
      : cluster_key_(std::move(cluster_key)), tls_(std::move(tls)) {}

  // `model`: the router's model name; a worker announcing another one is refused with
  // FAILED_PRECONDITION.
  void SetPool(WorkerPool* pool, std::string model);

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* ctx,
                                     const v1::RegisterRequest* request,
                                     v1::RegisterResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override;

 private:
  std::atomic<WorkerPool*> pool_{nullptr};
  std::string model_;
  const std::string cluster_key_;
  const TlsConfig tls_;
};

}  // namespace tandem

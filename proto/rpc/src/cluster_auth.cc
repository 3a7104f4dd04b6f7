#include "tandem/rpc/cluster_auth.h"

#include "tandem/common/secret.h"

namespace tandem {

void AddClusterKeyFlag(CLI::App& app, std::string* file) {
  app.add_option("--cluster-key-file", *file,
                 "File holding the cluster key (>= 16 bytes) that the router, the workers and "
                 "their KV transfers share; default $TANDEM_CLUSTER_KEY; none: internal services "
                 "accept any caller");
}

void AttachClusterKey(grpc::ClientContext* ctx, const std::string& key) {
  if (!key.empty()) ctx->AddMetadata(kClusterKeyHeader, key);
}

Status CheckClusterKey(const grpc::CallbackServerContext* ctx, const std::string& key,
                       std::string_view service) {
  if (key.empty()) return Status::Ok();
  auto it = ctx->client_metadata().find(kClusterKeyHeader);
  if (it == ctx->client_metadata().end()) {
    return UnauthenticatedError("{}: missing cluster key ({} metadata)", service,
                                kClusterKeyHeader);
  }
  if (!SecretEquals(key, std::string_view(it->second.data(), it->second.size()))) {
    return UnauthenticatedError("{}: wrong cluster key", service);
  }
  return Status::Ok();
}

}  // namespace tandem

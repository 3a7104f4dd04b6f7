// The cluster credential on internal gRPC calls: the router's calls to the workers (Reserve,
// Prefill, Decode, Release) and the workers' calls to the router's Registry carry the cluster key
// (tandem/common/secret.h) in the `x-tandem-cluster-key` metadata; each of those services
// refuses a call without it. With no key configured nothing is sent or checked.
//
// Thread safety: pure functions.
#pragma once

#include <string>

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>
#include <CLI/CLI.hpp>

#include "tandem/common/status.h"

namespace tandem {

inline constexpr char kClusterKeyHeader[] = "x-tandem-cluster-key";

// Adds --cluster-key-file to `app` (the key itself may come from $TANDEM_CLUSTER_KEY instead).
void AddClusterKeyFlag(CLI::App& app, std::string* file);

// Sends `key` with the call; nothing when `key` is empty.
void AttachClusterKey(grpc::ClientContext* ctx, const std::string& key);

// OK when `key` is empty or the call carries it; else UNAUTHENTICATED naming the service
// ("missing cluster key" / "wrong cluster key").
Status CheckClusterKey(const grpc::CallbackServerContext* ctx, const std::string& key,
                       std::string_view service);

}  // namespace tandem

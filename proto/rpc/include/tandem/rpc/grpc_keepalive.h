// Keepalive and idle bounds of a gRPC server, the same for tandem-router, tandem-prefill and
// tandem-decode: the server pings a connection that has been quiet for `keepalive_ms` and drops
// it when the ping goes unanswered for 20 s (a client that vanished without closing stops
// holding the connection), and sends GOAWAY to a connection with no call in progress for
// `max_connection_idle_ms` (a well-behaved client reconnects on its next call).
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>

#include <grpcpp/server_builder.h>
#include <CLI/CLI.hpp>

namespace tandem {

struct GrpcKeepalive {
  // Ping a connection after this long without activity; 0 = never. Default: 60 s.
  int64_t keepalive_ms = 60000;
  // Close a connection with no call in progress after this long; 0 = never. Default: 30 min.
  int64_t max_connection_idle_ms = 1800000;
};

// Adds --grpc-keepalive-ms and --grpc-max-connection-idle-ms to `app`.
void AddGrpcKeepaliveFlags(CLI::App& app, GrpcKeepalive* keepalive);

// Sets the server's channel arguments accordingly.
void ApplyGrpcKeepalive(grpc::ServerBuilder& builder, const GrpcKeepalive& keepalive);

}  // namespace tandem

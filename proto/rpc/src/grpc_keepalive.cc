#include "tandem/rpc/grpc_keepalive.h"

#include <algorithm>
#include <limits>

#include <grpc/grpc.h>

namespace tandem {
namespace {

constexpr int kPingAckTimeoutMs = 20000;

int ClampToInt(int64_t v) {
  return static_cast<int>(std::min<int64_t>(v, std::numeric_limits<int>::max()));
}

}  // namespace

void AddGrpcKeepaliveFlags(CLI::App& app, GrpcKeepalive* keepalive) {
  app.add_option("--grpc-keepalive-ms", keepalive->keepalive_ms,
                 "gRPC: ping a connection quiet this long, drop it when the ping goes "
                 "unanswered for 20 s (0 = never)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--grpc-max-connection-idle-ms", keepalive->max_connection_idle_ms,
                 "gRPC: close a connection with no call in progress this long; clients "
                 "reconnect on their next call (0 = never)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
}

void ApplyGrpcKeepalive(grpc::ServerBuilder& builder, const GrpcKeepalive& keepalive) {
  if (keepalive.keepalive_ms > 0) {
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, ClampToInt(keepalive.keepalive_ms));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kPingAckTimeoutMs);
    // Ping idle connections too (no call in progress), as often as keepalive_ms says.
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  if (keepalive.max_connection_idle_ms > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                               ClampToInt(keepalive.max_connection_idle_ms));
  }
}

}  // namespace tandem

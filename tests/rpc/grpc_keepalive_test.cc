// ApplyGrpcKeepalive on a real gRPC server on loopback: a connection with no call in progress is
// closed after max_connection_idle_ms (the client's channel leaves READY) and the client connects
// again; the flags set the fields. Waits end on channel state events.
#include "tandem/rpc/grpc_keepalive.h"

#include <chrono>
#include <memory>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

namespace tandem {
namespace {

using namespace std::chrono_literals;

constexpr auto kGuard = std::chrono::seconds(120);

// A server with one (callback, generic) service: every method UNIMPLEMENTED.
std::unique_ptr<grpc::Server> StartServer(const GrpcKeepalive& k, int* port) {
  static grpc::CallbackGenericService generic;
  grpc::ServerBuilder builder;
  builder.RegisterCallbackGenericService(&generic);
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), port);
  ApplyGrpcKeepalive(builder, k);
  return builder.BuildAndStart();
}

// Connects `channel` (from IDLE too); true once READY.
bool Connect(const std::shared_ptr<grpc::Channel>& channel) {
  channel->GetState(/*try_to_connect=*/true);
  return channel->WaitForConnected(std::chrono::system_clock::now() + kGuard);
}

TEST(GrpcKeepaliveTest, AnIdleConnectionIsClosedAndTheClientReconnects) {
  GrpcKeepalive k;
  k.max_connection_idle_ms = 200;
  int port = 0;
  auto server = StartServer(k, &port);
  ASSERT_NE(server, nullptr);
  auto channel =
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials());
  ASSERT_TRUE(Connect(channel));
  ASSERT_EQ(channel->GetState(false), GRPC_CHANNEL_READY);
  // The server's GOAWAY moves the channel out of READY.
  EXPECT_TRUE(
      channel->WaitForStateChange(GRPC_CHANNEL_READY, std::chrono::system_clock::now() + kGuard));
  EXPECT_NE(channel->GetState(false), GRPC_CHANNEL_READY);
  EXPECT_TRUE(Connect(channel));  // and it connects again
  server->Shutdown();
}

TEST(GrpcKeepaliveTest, FlagsSetTheFields) {
  CLI::App app;
  GrpcKeepalive k;
  AddGrpcKeepaliveFlags(app, &k);
  const char* argv[] = {"x", "--grpc-keepalive-ms=5000", "--grpc-max-connection-idle-ms=0"};
  app.parse(3, const_cast<char**>(argv));
  EXPECT_EQ(k.keepalive_ms, 5000);
  EXPECT_EQ(k.max_connection_idle_ms, 0);
  EXPECT_EQ(GrpcKeepalive{}.keepalive_ms, 60000);
  EXPECT_EQ(GrpcKeepalive{}.max_connection_idle_ms, 1800000);
}

}  // namespace
}  // namespace tandem

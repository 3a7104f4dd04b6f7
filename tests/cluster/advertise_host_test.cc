// --advertise-host: a decode worker bound to the wildcard address (0.0.0.0) announces a
// reachable address to the router and puts it in its KV tickets, so a deployment whose workers
// listen on every interface still serves (the router cannot dial 0.0.0.0).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "cluster_requests.h"

namespace tandem {
namespace {

using testing::Cluster;
using testing::ClusterProcess;

// Whether a TCP connection to ip:port is accepted.
bool Connects(const std::string& ip, int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, ip.c_str(), &addr.sin_addr);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

TEST(AdvertiseHostTest, AWildcardBoundDecodeWorkerServesThroughItsAdvertisedAddress) {
  Cluster c;
  ASSERT_TRUE(c.Start(
      1, 1, {}, {"--host", "0.0.0.0", "--advertise-host", "127.0.0.1", "--kv-transport", "tcp"}));
  ClusterProcess* decode = c.workers("decode")[0];
  // It announced the advertised host, and it listens on every address (127.0.0.2 is loopback
  // too, but a socket bound to 127.0.0.1 alone refuses it).
  ASSERT_EQ(decode->grpc.rfind("127.0.0.1:", 0), 0u) << decode->grpc;
  const int port = std::stoi(decode->grpc.substr(decode->grpc.rfind(':') + 1));
  EXPECT_TRUE(Connects("127.0.0.2", port));
  EXPECT_FALSE(
      Connects("127.0.0.2", std::stoi(c.router().grpc.substr(c.router().grpc.rfind(':') + 1))))
      << "the router (bound to 127.0.0.1) should not accept 127.0.0.2: the check means nothing";
  // Requests flow: the router reaches the worker, the prefill worker reaches its KV endpoint.
  std::vector<GenerationRequest> reqs(2);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].prompt = {1, 504, 3458, 314, 4545 + static_cast<int32_t>(i)};
    reqs[i].max_tokens = 6;
    reqs[i].sampling.temperature = 0.0f;
  }
  const auto want = testing::Reference(reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    testing::Outcome o = testing::Generate(c.router().grpc, testing::ToProto(reqs[i]));
    ASSERT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_EQ(o.ids, want[i]) << "request " << i;
  }
  testing::ExpectPagesReturnToZero(c.workers("decode"));
}

}  // namespace
}  // namespace tandem

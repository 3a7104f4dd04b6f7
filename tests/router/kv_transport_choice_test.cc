// The router's KV transport per (prefill, decode) pair, from what both registered.
#include "tandem/router/kv_transport_choice.h"

#include <gtest/gtest.h>

namespace tandem {
namespace {

using V = std::vector<std::string>;

std::string Choose(std::string_view mode, std::string_view p_host, const V& p,
                   std::string_view d_host, const V& d) {
  auto r = ChooseKvTransport(mode, p_host, p, d_host, d);
  return r.ok() ? *r : "error: " + r.status().message();
}

TEST(KvTransportChoiceTest, AutoPrefersShmOnOneHostThenNcclThenTcp) {
  const V all = {"shm", "tcp", "nccl"};
  EXPECT_EQ(Choose("auto", "h1", all, "h1", all), "shm");
  EXPECT_EQ(Choose("auto", "h1", all, "h2", all), "nccl");
  EXPECT_EQ(Choose("auto", "h1", {"shm", "tcp"}, "h2", all), "tcp");
  EXPECT_EQ(Choose("auto", "h1", {}, "h2", {}), "tcp");  // registered nothing: tcp
}

TEST(KvTransportChoiceTest, AForcedTransportOneSideLacksSaysWhich) {
  EXPECT_EQ(Choose("nccl", "h1", {"nccl"}, "h2", {"nccl", "tcp"}), "nccl");
  EXPECT_EQ(Choose("nccl", "h1", {"tcp"}, "h2", {"nccl"}),
            "error: --kv-transport nccl: a worker does not offer nccl");
  EXPECT_EQ(Choose("shm", "h1", {"shm"}, "h2", {"shm"}).rfind("error: --kv-transport shm", 0), 0u);
  EXPECT_EQ(Choose("tcp", "h1", {"nccl"}, "h1", {"nccl"}),
            "error: --kv-transport tcp: a worker does not offer tcp");
  EXPECT_EQ(Choose("udp", "h1", {}, "h1", {}).rfind("error: kv transport mode must be", 0), 0u);
}

TEST(KvTransportChoiceTest, CudaIpcGoesFirstBetweenCudaWorkersOnOneHostOnly) {
  const V cuda = {"cuda_ipc", "shm", "tcp"};
  EXPECT_EQ(Choose("auto", "h1", cuda, "h1", cuda), "cuda_ipc");
  EXPECT_EQ(Choose("auto", "h1", cuda, "h2", cuda), "tcp");            // not across hosts
  EXPECT_EQ(Choose("auto", "h1", {"shm", "tcp"}, "h1", cuda), "shm");  // a CPU prefill worker
  EXPECT_EQ(Choose("cuda_ipc", "h1", cuda, "h1", cuda), "cuda_ipc");
  EXPECT_EQ(Choose("cuda_ipc", "h1", cuda, "h2", cuda),
            "error: --kv-transport cuda_ipc: the prefill and decode workers are not on one host "
            "(or did not register)");
  EXPECT_EQ(Choose("cuda_ipc", "h1", {"shm", "tcp"}, "h1", cuda),
            "error: --kv-transport cuda_ipc: a worker does not offer cuda_ipc (CUDA workers only)");
}

}  // namespace
}  // namespace tandem

// The router chooses a request's (prefill, decode) pair by estimated time to first token, from
// speeds it measures, through a real deployment (router, one prefill worker and two decode
// workers on loopback): decode-0 offers shm and tcp, decode-1 tcp only, so the prefill worker
// reaches decode-0 over shm and decode-1 over tcp. With both decode workers idle, each request
// goes where the KV's wire time is shorter by the router's own figures — shm's bandwidth
// against tcp's, measured, or their defaults (8 and 1 GB/s) until a transfer measured them — and
// the router publishes what it measured (tandem_kv_link_bytes_per_second{prefill,decode,transport},
// tandem_prefill_speed_tokens_per_second{worker}). A decode worker that is busier than the other
// is not chosen whatever its link. Tokens match the single-process engine throughout.
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "cluster_requests.h"

namespace tandem {
namespace {

using testing::Cluster;
using testing::ClusterProcess;
using testing::Generate;
using testing::HttpGet;
using testing::kCallGuard;
using testing::MakeRequests;
using testing::MetricValue;
using testing::Outcome;
using testing::Reference;
using testing::ToProto;

// The router's tandem_kv_link_bytes_per_second for (prefill-0, `decode`, `transport`).
std::optional<double> LinkRate(Cluster& c, const std::string& decode,
                               const std::string& transport) {
  auto body = HttpGet(c.router().metrics_url);
  if (!body) return std::nullopt;
  std::istringstream in(*body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("tandem_kv_link_bytes_per_second{", 0) != 0) continue;
    if (line.find("decode=\"" + decode + "\"") == std::string::npos) continue;
    if (line.find("transport=\"" + transport + "\"") == std::string::npos) continue;
    if (line.find("prefill=\"prefill-0\"") == std::string::npos) continue;
    return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return std::nullopt;
}

TEST(ClusterPairChoiceTest, IdleDecodeWorkersAreChosenByMeasuredLinkSpeedBusyOnesNot) {
  Cluster c;
  ASSERT_TRUE(c.Start(1, 1));  // decode-0: --kv-transport auto (shm and tcp)
  ASSERT_NE(c.AddWorker("decode", 1, {"--kv-transport", "tcp"}), nullptr);
  const std::string near = c.workers("decode")[0]->grpc;
  const std::string far = c.workers("decode")[1]->grpc;
  const std::string router = c.router().grpc;

  // 160 to 223 tokens: 10 to 14 blocks, 7 to 10 MiB of KV each, enough to measure a link.
  auto reqs = MakeRequests(6, 31, 64, 8);
  for (auto& r : reqs) {
    r.sampling.temperature = 0.0f;
    for (int t = 0; t < 160; ++t)
      r.prompt.push_back(1000 + 37 * t + static_cast<int32_t>(r.prompt.size()));
  }
  GenerationRequest busy;
  for (int t = 0; t < 20; ++t) busy.prompt.push_back(300 + t);
  busy.max_tokens = 2000;
  busy.ignore_eos = true;
  busy.sampling.temperature = 0.0f;
  GenerationRequest beside = MakeRequests(1, 97, 64, 8)[0];
  beside.sampling.temperature = 0.0f;
  for (int t = 0; t < 160; ++t) beside.prompt.push_back(2000 + 41 * t);
  std::vector<GenerationRequest> all = reqs;
  all.push_back(beside);
  const auto expected = Reference(all);
  ASSERT_EQ(expected.size(), all.size());

  // One request at a time: both decode workers are idle at each choice (the router counts a
  // call until it is gone, which tandem_requests_running shows).
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(Cluster::WaitMetric(c.router(), "tandem_requests_running", 0, testing::kWaitGuard),
              0.0);
    // The router's figures now; a link it has not measured counts its default (shm 8 GB/s,
    // tcp 1 GB/s). One prefill worker computes either way, so the faster link wins.
    const std::optional<double> shm = LinkRate(c, "decode-0", "shm");
    const std::optional<double> tcp = LinkRate(c, "decode-1", "tcp");
    const bool shm_faster = shm.value_or(8e9) > tcp.value_or(1e9);
    Outcome o = Generate(router, ToProto(reqs[i]));
    ASSERT_TRUE(o.status.ok()) << "request " << i << ": " << o.status.error_message();
    EXPECT_EQ(o.ids, expected[i]) << "request " << i;
    ASSERT_TRUE(o.has_final);
    EXPECT_EQ(o.final.decode_worker(), shm_faster ? near : far)
        << "request " << i << ": shm " << shm.value_or(8e9) << " B/s, tcp " << tcp.value_or(1e9)
        << " B/s";
  }
  const std::optional<double> shm = LinkRate(c, "decode-0", "shm");
  ASSERT_TRUE(shm.has_value()) << "the router publishes the shm link it measured";
  EXPECT_GT(*shm, 0.0);
  const std::optional<double> tcp = LinkRate(c, "decode-1", "tcp");
  std::printf("router's link estimates: shm %.3g bytes/s, tcp %s\n", *shm,
              tcp ? fmt::format("{:.3g} bytes/s", *tcp).c_str() : "none");
  auto body = HttpGet(c.router().metrics_url);
  ASSERT_TRUE(body.has_value());
  const auto speed =
      MetricValue(*body, "tandem_prefill_speed_tokens_per_second", "worker=\"prefill-0\"");
  ASSERT_TRUE(speed.has_value());
  EXPECT_GT(*speed, 0.0);

  // A long request streams on one decode worker; a request beside it (a prompt no worker
  // holds) goes to the other, idle one whatever its link, and the router measures that link
  // too.
  grpc::ClientContext long_ctx;
  long_ctx.set_deadline(std::chrono::system_clock::now() + kCallGuard);
  auto stub = v1::Tandem::NewStub(grpc::CreateChannel(router, grpc::InsecureChannelCredentials()));
  auto stream = stub->Generate(&long_ctx, ToProto(busy));
  v1::GenerateResponse msg;
  size_t streamed = 0;
  while (streamed < 2 && stream->Read(&msg)) {
    if (msg.has_chunk()) streamed += static_cast<size_t>(msg.chunk().token_ids_size());
  }
  ASSERT_GE(streamed, 2u) << "the long request streams";
  const std::vector<ClusterProcess*> decodes = c.workers("decode");
  const bool long_on_near = testing::Metric(*decodes[0], "tandem_requests_running") >= 1;
  ASSERT_NE(long_on_near, testing::Metric(*decodes[1], "tandem_requests_running") >= 1)
      << "exactly one decode worker runs the long request";
  Outcome o = Generate(router, ToProto(beside));
  long_ctx.TryCancel();
  while (stream->Read(&msg)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.ids, expected.back());
  ASSERT_TRUE(o.has_final);
  const bool on_far = o.final.decode_worker() == far;
  EXPECT_EQ(on_far, long_on_near) << "the request beside the long one goes to the idle worker";
  const std::string to = on_far ? "decode-1" : "decode-0";
  const std::string over = on_far ? "tcp" : "shm";
  EXPECT_TRUE(LinkRate(c, to, over).has_value()) << "measured: " << to << " over " << over;
  auto workers = c.workers("prefill");
  for (auto* d : c.workers("decode")) workers.push_back(d);
  testing::ExpectPagesReturnToZero(workers);
}

}  // namespace
}  // namespace tandem

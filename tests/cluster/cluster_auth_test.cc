// The cluster credential through real processes: a router and workers sharing a cluster key
// (from $TANDEM_CLUSTER_KEY, as `tandem serve` hands it to its children) serve requests, while
// every internal RPC without the key — or with a wrong one — is refused UNAUTHENTICATED: the
// Registry on the router's public port, and Reserve / Decode / Release / Prefill on the workers.
// A worker holding a wrong key never joins. With --api-key as well, the public Generate needs
// the API key; metrics stay open.
#include <cstdlib>
#include <string>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "cluster_requests.h"
#include "tandem/common/secret.h"
#include "tandem/rpc/cluster_auth.h"
#include "tandem/v1/internal.grpc.pb.h"

namespace tandem {
namespace {

using testing::Cluster;
using testing::ClusterProcess;
using testing::HttpGet;
using testing::MetricValue;

constexpr char kKey[] = "cluster-key-for-tests-0123456789";
constexpr char kApiKey[] = "client-api-key";

// Sets an environment variable for the scope (the processes started meanwhile inherit it).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
  return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
}

// `key`: the cluster key sent ("" = none).
std::unique_ptr<grpc::ClientContext> Context(const std::string& key) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  AttachClusterKey(ctx.get(), key);
  return ctx;
}

void ExpectUnauthenticated(const grpc::Status& s, const std::string& what) {
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << what << ": " << s.error_message();
}

TEST(ClusterAuthTest, EveryInternalCallNeedsTheClusterKey) {
  ScopedEnv env(kClusterKeyEnv, kKey);
  Cluster c;
  ASSERT_TRUE(c.Start(1, 1, {"--api-key", kApiKey}));
  ClusterProcess* prefill = c.workers("prefill")[0];
  ClusterProcess* decode = c.workers("decode")[0];

  // The deployment works: the router's calls carry the key, the workers' registrations too.
  {
    auto stub = v1::Tandem::NewStub(Channel(c.router().grpc));
    v1::GenerateRequest req;
    req.set_text("The capital of France is");
    req.mutable_stopping()->set_max_tokens(4);
    auto ctx = Context("");
    ctx->AddMetadata("authorization", std::string("Bearer ") + kApiKey);
    auto reader = stub->Generate(ctx.get(), req);
    v1::GenerateResponse msg;
    int tokens = 0;
    while (reader->Read(&msg)) tokens += msg.has_chunk() ? msg.chunk().token_ids_size() : 0;
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(tokens, 4);
    // The cluster key is not an API key.
    auto ctx2 = Context(kKey);
    auto reader2 = stub->Generate(ctx2.get(), req);
    while (reader2->Read(&msg)) {
    }
    ExpectUnauthenticated(reader2->Finish(), "Generate with only the cluster key");
  }
  // Metrics need nothing (health and reflection: tests/python/test_sdk.py).
  EXPECT_TRUE(HttpGet(c.router().metrics_url).has_value());

  for (const std::string& key : {std::string(), std::string("wrong-key-0123456789abcdef")}) {
    const std::string what = key.empty() ? " without a key" : " with a wrong key";
    // The Registry, on the router's public port: nobody may register a fake decode worker
    // (which would then receive prompts), take a worker's id, or heartbeat for one.
    auto registry = v1::Registry::NewStub(Channel(c.router().grpc));
    v1::RegisterRequest reg;
    reg.set_worker_id("decode-0");
    reg.set_role(v1::WORKER_ROLE_DECODE);
    reg.set_address("127.0.0.1:1");
    v1::RegisterResponse reg_resp;
    ExpectUnauthenticated(registry->Register(Context(key).get(), reg, &reg_resp),
                          "Register" + what);
    v1::HeartbeatRequest hb;
    hb.set_worker_id("decode-0");
    hb.set_draining(true);
    v1::HeartbeatResponse hb_resp;
    ExpectUnauthenticated(registry->Heartbeat(Context(key).get(), hb, &hb_resp),
                          "Heartbeat" + what);
    // The decode worker.
    auto dw = v1::DecodeWorker::NewStub(Channel(decode->grpc));
    v1::ReserveRequest rr;
    rr.set_request_id("stranger");
    rr.set_prompt_tokens(8);
    rr.set_max_tokens(8);
    v1::ReserveResponse rr_resp;
    ExpectUnauthenticated(dw->Reserve(Context(key).get(), rr, &rr_resp), "Reserve" + what);
    v1::ReleaseRequest rel;
    rel.set_request_id("stranger");
    v1::ReleaseResponse rel_resp;
    ExpectUnauthenticated(dw->Release(Context(key).get(), rel, &rel_resp), "Release" + what);
    v1::DecodeRequest dr;
    dr.set_request_id("stranger");
    dr.add_prompt_token_ids(1);
    auto dctx = Context(key);
    auto dreader = dw->Decode(dctx.get(), dr);
    v1::DecodeResponse dmsg;
    while (dreader->Read(&dmsg)) {
    }
    ExpectUnauthenticated(dreader->Finish(), "Decode" + what);
    // The prefill worker.
    auto pw = v1::PrefillWorker::NewStub(Channel(prefill->grpc));
    v1::PrefillRequest pr;
    pr.set_request_id("stranger");
    pr.add_prompt_token_ids(1);
    v1::PrefillResponse pr_resp;
    ExpectUnauthenticated(pw->Prefill(Context(key).get(), pr, &pr_resp), "Prefill" + what);
  }
  // With the key the same Reserve is served (the check refuses strangers, not everyone), and
  // its pages go back.
  {
    auto dw = v1::DecodeWorker::NewStub(Channel(decode->grpc));
    v1::ReserveRequest rr;
    rr.set_request_id("insider");
    rr.set_prompt_tokens(8);
    rr.set_max_tokens(8);
    v1::ReserveResponse rr_resp;
    grpc::Status s = dw->Reserve(Context(kKey).get(), rr, &rr_resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    v1::ReleaseRequest rel;
    rel.set_request_id("insider");
    v1::ReleaseResponse rel_resp;
    EXPECT_TRUE(dw->Release(Context(kKey).get(), rel, &rel_resp).ok());
  }

  // A worker with a wrong key is refused by the Registry and never joins (it prints its
  // address once its own registration wait gives up, and keeps retrying).
  {
    ScopedEnv wrong(kClusterKeyEnv, "another-cluster-key-0123456789");
    ClusterProcess* stranger = c.AddWorker("decode", 1);
    ASSERT_NE(stranger, nullptr);
  }
  auto m = HttpGet(c.router().metrics_url);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(MetricValue(*m, "tandem_workers", "kind=\"decode\"").value_or(-1), 1.0);
  testing::ExpectPagesReturnToZero({prefill, decode});
}

// A key shorter than the minimum is refused at start, naming the variable.
TEST(ClusterAuthTest, AShortKeyIsRefusedAtStart) {
  ScopedEnv env(kClusterKeyEnv, "short");
  Cluster c;
  EXPECT_FALSE(c.Start(0, 0));
}

}  // namespace
}  // namespace tandem

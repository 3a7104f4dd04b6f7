// The kubernetes actuator against an in-process fake API server that checks every call: method,
// path, JSON merge-patch body, Authorization header; and that refuses as a real one does.
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <mutex>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fake_http_server.h"
#include "tandem/planner/actuator.h"

namespace tandem::planner {
namespace {

constexpr const char* kToken = "test-token-1";

// One deployment per name, its spec.replicas; `refuse` answers every call with that status.
class FakeApiServer {
 public:
  FakeApiServer() {
    const std::string re =
        R"(/apis/apps/v1/namespaces/([a-z0-9-]+)/deployments/([a-z0-9-]+)/scale)";
    http_.server().Get(
        re, [this](const httplib::Request& req, httplib::Response& res) { Handle(req, res); });
    http_.server().Patch(
        re, [this](const httplib::Request& req, httplib::Response& res) { Handle(req, res); });
    http_.server().set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (res.status == 404 && res.body.empty()) {
        std::lock_guard<std::mutex> lock(mu_);
        errors_.push_back("unexpected " + req.method + " " + req.path);
      }
    });
    http_.Start();
  }

  std::string url() const { return http_.url(); }
  void Set(const std::string& name, int replicas) {
    std::lock_guard<std::mutex> lock(mu_);
    replicas_[name] = replicas;
  }
  int Get(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    return replicas_.at(name);
  }
  void Refuse(int status) {
    std::lock_guard<std::mutex> lock(mu_);
    refuse_ = status;
  }
  std::vector<std::string> errors() {
    std::lock_guard<std::mutex> lock(mu_);
    return errors_;
  }
  void ClearErrors() {
    std::lock_guard<std::mutex> lock(mu_);
    errors_.clear();
  }
  std::vector<std::string> calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  void Status(httplib::Response& res, int code, const std::string& reason,
              const std::string& message) {
    res.status = code;
    res.set_content(nlohmann::json{{"kind", "Status"},
                                   {"apiVersion", "v1"},
                                   {"status", "Failure"},
                                   {"message", message},
                                   {"reason", reason},
                                   {"code", code}}
                        .dump(),
                    "application/json");
  }

  void Handle(const httplib::Request& req, httplib::Response& res) {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string ns = req.matches[1], name = req.matches[2];
    calls_.push_back(req.method + " " + req.path);
    if (req.get_header_value("Authorization") != std::string("Bearer ") + kToken) {
      errors_.push_back("bad Authorization: " + req.get_header_value("Authorization"));
      return Status(res, 401, "Unauthorized", "Unauthorized");
    }
    if (ns != "tandem") errors_.push_back("namespace " + ns);
    if (refuse_ == 403) {
      return Status(res, 403, "Forbidden",
                    "deployments.apps \"" + name +
                        "\" is forbidden: User \"system:serviceaccount:tandem:tandem-planner\" "
                        "cannot patch resource \"deployments/scale\"");
    }
    if (refuse_ == 409) {
      return Status(res, 409, "Conflict",
                    "Operation cannot be fulfilled on deployments.apps \"" + name +
                        "\": the object has been modified");
    }
    auto it = replicas_.find(name);
    if (it == replicas_.end()) {
      return Status(res, 404, "NotFound", "deployments.apps \"" + name + "\" not found");
    }
    if (req.method == "PATCH") {
      if (req.get_header_value("Content-Type") != "application/merge-patch+json") {
        errors_.push_back("Content-Type " + req.get_header_value("Content-Type"));
      }
      auto body = nlohmann::json::parse(req.body, nullptr, false);
      if (body.is_discarded() || body.size() != 1 || !body.contains("spec") ||
          body["spec"].size() != 1 || !body["spec"]["replicas"].is_number_integer()) {
        errors_.push_back("patch body " + req.body);
        return Status(res, 422, "Invalid", "bad patch");
      }
      it->second = body["spec"]["replicas"].get<int>();
    }
    res.set_content(nlohmann::json{{"kind", "Scale"},
                                   {"apiVersion", "autoscaling/v1"},
                                   {"metadata", {{"name", name}, {"namespace", ns}}},
                                   {"spec", {{"replicas", it->second}}},
                                   {"status", {{"replicas", it->second}}}}
                        .dump(),
                    "application/json");
  }

  std::mutex mu_;
  std::map<std::string, int> replicas_;
  int refuse_ = 0;
  std::vector<std::string> errors_, calls_;
  FakeHttpServer http_;
};

class KubernetesActuatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/tandem-planner-kube.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    std::ofstream(dir_ + "/token") << kToken << "\n";
    api_.Set("tandem-prefill", 1);
    api_.Set("tandem-decode", 2);
  }
  void TearDown() override {
    std::remove((dir_ + "/token").c_str());
    rmdir(dir_.c_str());
    EXPECT_TRUE(api_.errors().empty()) << api_.errors().front();
  }
  std::unique_ptr<Actuator> Make(const std::string& token_file) {
    KubernetesOptions o;
    o.api_url = api_.url();
    o.namespace_name = "tandem";
    o.token_file = token_file;
    auto a = MakeKubernetesActuator(o);
    EXPECT_TRUE(a.ok()) << a.status().ToString();
    return std::move(*a);
  }

  FakeApiServer api_;
  std::string dir_;
};

TEST_F(KubernetesActuatorTest, GetsAndPatchesTheScaleSubresource) {
  auto a = Make(dir_ + "/token");
  auto p = a->GetReplicas(Pool::kPrefill);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(**p, 1);
  ASSERT_TRUE(a->SetReplicas(Pool::kDecode, 5).ok());
  EXPECT_EQ(api_.Get("tandem-decode"), 5);
  EXPECT_EQ(api_.Get("tandem-prefill"), 1);
  auto d = a->GetReplicas(Pool::kDecode);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(**d, 5);
  const std::vector<std::string> want = {
      "GET /apis/apps/v1/namespaces/tandem/deployments/tandem-prefill/scale",
      "PATCH /apis/apps/v1/namespaces/tandem/deployments/tandem-decode/scale",
      "GET /apis/apps/v1/namespaces/tandem/deployments/tandem-decode/scale"};
  EXPECT_EQ(api_.calls(), want);
}

TEST_F(KubernetesActuatorTest, SurfacesRefusalsNamingTheDeployment) {
  auto a = Make(dir_ + "/token");
  api_.Refuse(403);
  Status s = a->SetReplicas(Pool::kPrefill, 2);
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(s.message().find("tandem/tandem-prefill"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("cannot patch"), std::string::npos) << s.message();
  api_.Refuse(409);
  s = a->SetReplicas(Pool::kDecode, 2);
  EXPECT_EQ(s.code(), StatusCode::kAborted);
  EXPECT_NE(s.message().find("tandem/tandem-decode"), std::string::npos) << s.message();
  api_.Refuse(0);
  KubernetesOptions o;
  o.api_url = api_.url();
  o.namespace_name = "tandem";
  o.token_file = dir_ + "/token";
  o.deployments = {"tandem-prefill-typo", "tandem-decode"};
  auto typo = MakeKubernetesActuator(o);
  ASSERT_TRUE(typo.ok());
  auto got = (*typo)->GetReplicas(Pool::kPrefill);
  EXPECT_EQ(got.status().code(), StatusCode::kNotFound);
  EXPECT_NE(got.status().message().find("tandem/tandem-prefill-typo"), std::string::npos);
  EXPECT_EQ(api_.Get("tandem-prefill"), 1);
  EXPECT_EQ(api_.Get("tandem-decode"), 2);
}

TEST_F(KubernetesActuatorTest, WithoutTheTokenTheServerRefuses) {
  auto a = Make(dir_ + "/no-such-token");
  auto got = a->GetReplicas(Pool::kPrefill);
  EXPECT_EQ(got.status().code(), StatusCode::kUnauthenticated);
  // The fake noted the missing header; that is this test's point, not a failure.
  ASSERT_EQ(api_.errors().size(), 1u);
  api_.ClearErrors();
}

TEST(KubernetesActuatorConfigTest, NoApiServerIsAClearError) {
  unsetenv("KUBERNETES_SERVICE_HOST");
  auto a = MakeKubernetesActuator({});
  EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(a.status().message().find("--kube-api"), std::string::npos);
}

}  // namespace
}  // namespace tandem::planner

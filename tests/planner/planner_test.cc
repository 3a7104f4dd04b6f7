// The planner loop with the external actuator: what it publishes on its /metrics, advisory mode,
// and the decision log.
#include "tandem/planner/planner.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace tandem::planner {
namespace {

class ScriptedSource : public MetricsSource {
 public:
  explicit ScriptedSource(Observation* obs) : obs_(obs) {}
  StatusOr<Observation> Read(double) override {
    if (obs_->source.empty()) return UnavailableError("prometheus http://x: Connection refused");
    return *obs_;
  }
  std::string Describe() const override { return "scripted"; }

 private:
  Observation* obs_;
};

Observation Loaded() {
  Observation o;
  o.source = "prometheus";
  o.prompt_tokens_per_s = 2400;  // 3 prefill workers at 1000 tok/s and 0.8
  o.generation_tokens_per_s = 10;
  o.prefill_tokens_per_worker_s = 1000;
  o.prefill_backlog = 0;
  o.decode_kv_occupancy = 0.1;
  o.decode_running = 1;
  o.ttft_attainment = 1;
  o.itl_attainment = 1;
  o.prefill_workers = 1;
  o.decode_workers = 1;
  return o;
}

std::vector<nlohmann::json> ReadLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

class PlannerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/tandem-planner-log.XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/decisions.jsonl";
    auto log = DecisionLog::Open(path_);
    ASSERT_TRUE(log.ok());
    log_ = std::move(*log);
  }
  void TearDown() override {
    log_.reset();
    std::remove(path_.c_str());
    rmdir(dir_.c_str());
  }
  std::string dir_, path_;
  std::unique_ptr<DecisionLog> log_;
};

TEST_F(PlannerTest, ExternalPublishesDesiredReplicasAndLogsEveryDecision) {
  PlannerMetrics metrics;
  Observation obs = Loaded();
  Planner planner({}, std::make_unique<ScriptedSource>(&obs), MakeExternalActuator(&metrics),
                  &metrics, log_.get());
  Decision d = planner.Tick(0);
  EXPECT_EQ(d.pools[0].action, Action::kUp);
  EXPECT_EQ(metrics.desired(Pool::kPrefill), 3);
  EXPECT_EQ(metrics.desired(Pool::kDecode), 1);  // adopted from the rotation
  const std::string text = metrics.Render();
  EXPECT_NE(text.find("tandem_planner_desired_replicas{pool=\"prefill\",role=\"planner\"} 3"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("tandem_planner_decisions_total{action=\"up\",pool=\"prefill\","
                      "role=\"planner\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("tandem_planner_metrics_source{role=\"planner\",source=\"prometheus\"} 1"),
            std::string::npos)
      << text;

  obs.source.clear();  // Prometheus and the router both gone
  d = planner.Tick(15);
  for (const auto& p : d.pools) EXPECT_EQ(p.action, Action::kHold);
  EXPECT_EQ(metrics.desired(Pool::kPrefill), 3);
  EXPECT_NE(metrics.Render().find("tandem_planner_read_failures_total{role=\"planner\"} 1"),
            std::string::npos);

  const auto lines = ReadLines(path_);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["source"], "prometheus");
  EXPECT_EQ(lines[0]["inputs"]["prompt_tokens_per_s"], 2400);
  EXPECT_EQ(lines[0]["pools"][0]["pool"], "prefill");
  EXPECT_EQ(lines[0]["pools"][0]["action"], "up");
  EXPECT_EQ(lines[0]["pools"][0]["desired"], 3);
  EXPECT_EQ(lines[0]["pools"][0]["applied"], true);
  EXPECT_NE(lines[0]["pools"][0]["reason"].get<std::string>().find("feed-forward"),
            std::string::npos);
  EXPECT_EQ(lines[1]["source"], "none");
  EXPECT_NE(lines[1]["read_error"].get<std::string>().find("Connection refused"),
            std::string::npos);
}

TEST_F(PlannerTest, AdvisoryDecidesAndLogsButNeverActs) {
  PlannerMetrics metrics;
  Observation obs = Loaded();
  PlannerOptions o;
  o.advisory = true;
  Planner planner(o, std::make_unique<ScriptedSource>(&obs), MakeExternalActuator(&metrics),
                  &metrics, log_.get());
  const Decision d = planner.Tick(0);
  EXPECT_EQ(d.pools[0].action, Action::kUp);
  EXPECT_EQ(d.pools[0].desired, 3);
  EXPECT_FALSE(metrics.desired(Pool::kPrefill).has_value());
  EXPECT_NE(metrics.Render().find("tandem_planner_advisory{role=\"planner\"} 1"),
            std::string::npos);
  const auto lines = ReadLines(path_);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["advisory"], true);
  EXPECT_EQ(lines[0]["pools"][0]["applied"], false);
}

}  // namespace
}  // namespace tandem::planner

// tandem-planner: sizes the prefill and decode pools from metrics (see planner/README.md).
// Prints "planner metrics http://HOST:PORT/metrics" on stdout once it serves; logs and the
// decision log (unless --decision-log FILE) go to stderr. SIGTERM / SIGINT stop it.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>

#include "tandem/common/logging.h"
#include "tandem/planner/flags.h"
#include "tandem/planner/planner.h"

namespace tp = tandem::planner;

int main(int argc, char** argv) {
  CLI::App app{"tandem-planner: sizes the prefill and decode pools from Prometheus metrics"};
  tp::PlannerOptions opts;
  tp::SourceOptions src;
  tp::KubernetesOptions kube;
  std::string actuator = "external", prometheus, router_metrics, decision_log, host = "127.0.0.1";
  std::string log_level = "info";
  int metrics_port = 0;
  bool once = false;
  double query_timeout_s = 5;

  app.add_option("--actuator", actuator,
                 "external (publish tandem_planner_desired_replicas for KEDA/HPA), kubernetes "
                 "(PATCH the Deployments' /scale); process belongs to `tandem serve --autoscale`")
      ->check(CLI::IsMember({"external", "kubernetes", "process"}))
      ->capture_default_str();
  app.add_option("--prometheus", prometheus,
                 "Prometheus base URL (http://host:9090); none = the router's /metrics only");
  app.add_option("--router-metrics", router_metrics,
                 "The router's metrics URL (http://host:port/metrics): the fallback when "
                 "Prometheus does not answer (a partial view: never scales down on it)");
  tp::AddPlannerFlags(app, &opts, &src);
  app.add_flag("--advisory", opts.advisory, "Decide and log, never act");
  app.add_flag("--once", once, "One decision, then exit (a dry run with --advisory)");
  app.add_option("--decision-log", decision_log,
                 "Append the decision log (one JSON line per interval) here; default stderr");
  app.add_option("--rate-window", src.rate_window, "PromQL rate window")->capture_default_str();
  app.add_option("--query-timeout-s", query_timeout_s, "Bound on one query or scrape")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--kube-api", kube.api_url,
                 "Kubernetes API server URL (default: in cluster, $KUBERNETES_SERVICE_HOST)");
  app.add_option("--namespace", kube.namespace_name,
                 "Namespace of the Deployments (default: the service account's)");
  app.add_option("--prefill-deployment", kube.deployments[0], "Prefill Deployment")
      ->capture_default_str();
  app.add_option("--decode-deployment", kube.deployments[1], "Decode Deployment")
      ->capture_default_str();
  app.add_option("--kube-token-file", kube.token_file, "Bearer token file (re-read every call)")
      ->capture_default_str();
  app.add_option("--kube-ca-file", kube.ca_file, "CA bundle of the API server")
      ->capture_default_str();
  app.add_option("--host", host, "Address to serve /metrics on")->capture_default_str();
  app.add_option("--metrics-port", metrics_port, "Planner /metrics port (0 = pick, -1 = off)")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  tandem::SetLogLevel(log_level);
  auto fail = [](const std::string& what) {
    TLOG_ERROR("tandem-planner: {}", what);
    return 2;
  };
  if (auto bad = tp::CheckPlannerFlags(opts); !bad.empty()) return fail(bad);
  if (prometheus.empty() && router_metrics.empty()) {
    return fail("give --prometheus URL, --router-metrics URL, or both");
  }
  if (actuator == "external" && metrics_port < 0) {
    return fail("--actuator=external publishes on /metrics: --metrics-port cannot be -1");
  }
  src.timeout_s = query_timeout_s;

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  tp::PlannerMetrics metrics;
  if (metrics_port >= 0) {
    if (auto s = metrics.Serve(host, metrics_port); !s.ok()) return fail(s.ToString());
  }
  std::unique_ptr<tp::Actuator> act;
  if (actuator == "external") {
    act = tp::MakeExternalActuator(&metrics);
  } else if (actuator == "kubernetes") {
    auto k = tp::MakeKubernetesActuator(kube);
    if (!k.ok()) return fail(k.status().ToString());
    act = std::move(*k);
  } else {
    return fail(
        "UNIMPLEMENTED: --actuator=process starts and drains local workers as children of "
        "`tandem serve --autoscale`, which runs the planner itself; use external or kubernetes");
  }
  auto log = tp::DecisionLog::Open(decision_log);
  if (!log.ok()) return fail(log.status().ToString());
  tp::PrometheusClientOptions prom;
  prom.url = prometheus;
  prom.timeout_s = query_timeout_s;
  auto source = tp::MakeFallbackSource(
      prometheus.empty() ? nullptr : tp::MakePrometheusSource(prom, src),
      router_metrics.empty() ? nullptr : tp::MakeRouterScrapeSource(router_metrics, src));
  TLOG_INFO("tandem-planner: reading {}; acting through {}{}; every {} s", source->Describe(),
            act->Describe(), opts.advisory ? " (advisory: never acts)" : "", opts.interval_s);
  tp::Planner planner(opts, std::move(source), std::move(act), &metrics, log->get());
  if (!metrics.url().empty()) std::printf("planner metrics %s\n", metrics.url().c_str());
  std::fflush(stdout);
  if (once) {
    planner.Tick(0);
    return 0;
  }
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    TLOG_INFO("tandem-planner: signal {}, stopping", sig);
    planner.Stop();
  });
  planner.Run();
  // Run returns only after Stop, which the waiter calls once it took a signal.
  waiter.join();
  return 0;
}

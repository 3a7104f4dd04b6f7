// `tandem serve` starts tandem-router, then tandem-prefill and tandem-decode workers that
// register with it (all found next to this executable), as child processes on one host; waits
// (bounded) for each to print its "<role> grpc HOST:PORT" line, prints every endpoint line
// ("<role> metrics URL", "router http HOST:PORT", "<role> grpc HOST:PORT"), and supervises: SIGINT
// / SIGTERM stop every child (router first, then workers; SIGTERM, bounded wait, then SIGKILL); a
// child that dies stops the rest and exits non-zero. Children get PR_SET_PDEATHSIG so they do not
// outlive a killed `tandem serve`.
//
// With --autoscale the planner runs in this process (a thread): it reads the router's and every
// worker's /metrics each --interval-s and sizes the pools through the process actuator, which
// starts workers (their endpoint lines are printed once they serve) and drains the least-loaded
// one to scale down (SIGTERM: it leaves the rotation, finishes its streams within --drain-ms,
// exits). It also prints "planner metrics URL" (the planner's own /metrics).
#include "serve_command.h"

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tandem/common/child_process.h"
#include "tandem/common/logging.h"
#include "tandem/common/secret.h"
#include "tandem/engine/gguf.h"
#include "tandem/engine/weights_flag.h"
#include "tandem/planner/flags.h"
#include "tandem/planner/metrics_source.h"
#include "tandem/planner/planner.h"
#include "tandem/planner/process_actuator.h"
#include "tandem/rpc/tls_credentials.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;
namespace tp = planner;

struct ServeFlags {
  std::string model = "models/SmolLM2-135M-Instruct";
  std::string host = "127.0.0.1";
  int32_t port = 0;
  int32_t metrics_port = 0;
  int32_t http_port = 0;
  int32_t max_queue = 256;
  std::vector<std::string> api_keys;
  std::string api_key_file;
  int32_t num_prefill = 1;
  int32_t num_decode = 1;
  int64_t kv_cache_mb = 256;
  bool prefix_cache = true;  // prefill and decode workers' --prefix-cache
  int32_t threads = 0;
  std::string weights = "auto";
  DeviceFlags device;
  int32_t start_timeout_s = 120;
  int64_t drain_ms = 30000;
  int64_t prefill_timeout_ms = 120000;  // router --prefill-timeout-ms and prefill --max-request-ms
  int32_t stop_timeout_s = 0;           // 0: the drain budget plus 15 s
  std::string log_level = "info";
  std::string kv_transport = "auto";
  std::string nccl_library;
  std::string cluster_key_file;  // "" = $TANDEM_CLUSTER_KEY, else a fresh key per run
  TlsFiles tls;                  // passed to every process
  bool metrics_tls = false;      // every process's --metrics-tls (HTTPS with tls.cert / key)
  // Appended verbatim to each process's command line (flags `tandem serve` does not mirror).
  std::vector<std::string> router_args;
  std::vector<std::string> prefill_args;
  std::vector<std::string> decode_args;
  // --autoscale: the planner in this process, acting through the process actuator.
  bool autoscale = false;
  tp::PlannerOptions planner;
  tp::SourceOptions source;
  std::string decision_log;
  // --prometheus: read through this Prometheus (falling back to the router's /metrics, on which
  // the policy never scales down) instead of scraping the processes directly.
  std::string prometheus;
};

// --tls-cert / --tls-key / --tls-ca as given, with absolute paths (the children may run elsewhere).
std::vector<std::string> TlsArgv(const TlsFiles& tls) {
  std::vector<std::string> argv;
  for (const auto& [flag, path] :
       {std::pair<const char*, const std::string&>{"--tls-cert", tls.cert},
        {"--tls-key", tls.key},
        {"--tls-ca", tls.ca}}) {
    if (!path.empty()) argv.insert(argv.end(), {flag, std::filesystem::absolute(path).string()});
  }
  return argv;
}

// The command line of the index-th worker of `pool`: every worker of a pool gets the same flags.
std::vector<std::string> WorkerArgv(const ServeFlags& f, const std::filesystem::path& bin_dir,
                                    const std::string& model, const std::string& router_addr,
                                    tp::Pool pool, int index) {
  const bool prefill = pool == tp::Pool::kPrefill;
  const std::string role = tp::PoolName(pool);
  std::vector<std::string> argv = {(bin_dir / ("tandem-" + role)).string(),
                                   "--model",
                                   model,
                                   "--host",
                                   f.host,
                                   "--port",
                                   "0",
                                   "--kv-cache-mb",
                                   std::to_string(f.kv_cache_mb),
                                   "--threads",
                                   std::to_string(f.threads),
                                   "--worker-id",
                                   role + "-" + std::to_string(index),
                                   "--router",
                                   router_addr,
                                   "--metrics-port",
                                   f.metrics_port < 0 ? "-1" : "0",
                                   "--drain-ms",
                                   std::to_string(f.drain_ms),
                                   "--weights",
                                   f.weights,
                                   "--kv-transport",
                                   f.kv_transport,
                                   "--log-level",
                                   f.log_level};
  argv.insert(argv.end(), {"--prefix-cache", f.prefix_cache ? "true" : "false"});
  if (f.kv_transport == "nccl") argv.insert(argv.end(), {"--nccl-library", f.nccl_library});
  if (prefill) {
    argv.insert(argv.end(), {"--max-request-ms", std::to_string(f.prefill_timeout_ms)});
  } else {
    argv.insert(argv.end(), {"--kv-port", "0"});
  }
  const auto device = DeviceFlagArgs(f.device);
  argv.insert(argv.end(), device.begin(), device.end());
  const auto tls = TlsArgv(f.tls);
  argv.insert(argv.end(), tls.begin(), tls.end());
  if (f.metrics_tls) argv.push_back("--metrics-tls");
  const auto& extra = prefill ? f.prefill_args : f.decode_args;
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

std::vector<std::string> RouterArgv(const ServeFlags& f, const std::filesystem::path& bin_dir,
                                    const std::string& model) {
  std::vector<std::string> argv = {(bin_dir / "tandem-router").string(),
                                   "--model",
                                   model,
                                   "--host",
                                   f.host,
                                   "--port",
                                   std::to_string(f.port),
                                   "--metrics-port",
                                   std::to_string(f.metrics_port),
                                   "--http-port",
                                   std::to_string(f.http_port),
                                   "--max-queue",
                                   std::to_string(f.max_queue),
                                   "--drain-ms",
                                   std::to_string(f.drain_ms),
                                   "--kv-transport",
                                   f.kv_transport,
                                   "--prefill-timeout-ms",
                                   std::to_string(f.prefill_timeout_ms),
                                   "--log-level",
                                   f.log_level};
  for (const auto& k : f.api_keys) argv.insert(argv.end(), {"--api-key", k});
  if (!f.api_key_file.empty()) {
    argv.insert(argv.end(), {"--api-key-file", std::filesystem::absolute(f.api_key_file).string()});
  }
  const auto tls = TlsArgv(f.tls);
  argv.insert(argv.end(), tls.begin(), tls.end());
  if (f.metrics_tls) argv.push_back("--metrics-tls");
  argv.insert(argv.end(), f.router_args.begin(), f.router_args.end());
  return argv;
}

// The planner's view of the process actuator, which `tandem serve` keeps (to poll it and to
// stop its workers last).
class BorrowedActuator : public tp::Actuator {
 public:
  explicit BorrowedActuator(tp::Actuator* a) : a_(a) {}
  StatusOr<std::optional<int>> GetReplicas(tp::Pool pool) override { return a_->GetReplicas(pool); }
  Status SetReplicas(tp::Pool pool, int replicas) override {
    return a_->SetReplicas(pool, replicas);
  }
  std::string Describe() const override { return a_->Describe(); }

 private:
  tp::Actuator* a_;
};

// Stops the router first (it drains: in-flight streams finish while the workers still serve),
// then the workers; each phase is bounded by `timeout`, stragglers get SIGKILL.
void StopAll(ChildProcess* router, tp::ProcessActuator* workers, std::chrono::seconds timeout) {
  if (router != nullptr && !router->Poll()) {
    router->Signal(SIGTERM);
    const auto deadline = Clock::now() + timeout;
    while (!router->Poll() && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!router->Poll()) {
      TLOG_WARN("tandem serve: router (pid {}) did not stop in time; killing it", router->pid());
      router->Signal(SIGKILL);
      while (!router->Poll()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  if (workers != nullptr) workers->StopAll(timeout);
}

int RunServe(const ServeFlags& f) {
  SetLogLevel(f.log_level);
  std::error_code ec;
  const std::filesystem::path bin_dir =
      std::filesystem::read_symlink("/proc/self/exe", ec).parent_path();
  if (ec) {
    std::fprintf(stderr, "error: cannot locate this executable: %s\n", ec.message().c_str());
    return 1;
  }
  const std::string model = std::filesystem::absolute(f.model).string();
  if (IsGgufPath(model)) {
    if (!std::filesystem::is_regular_file(model)) {
      std::fprintf(stderr, "error: %s: no such file\n", model.c_str());
      return 1;
    }
  } else if (!std::filesystem::exists(std::filesystem::path(model) / "config.json")) {
    std::fprintf(stderr, "error: %s has no config.json\n", model.c_str());
    return 1;
  }
  if (f.num_prefill < 1 || f.num_decode < 1) {
    std::fprintf(stderr, "error: --prefill and --decode must be >= 1\n");
    return 1;
  }
  if (f.autoscale) {
    const tp::PolicyOptions& pol = f.planner.policy;
    std::string bad = tp::CheckPlannerFlags(f.planner);
    if (bad.empty() && f.metrics_port < 0) bad = "--autoscale reads /metrics: --metrics-port -1";
    if (bad.empty() && (f.num_prefill < pol.prefill.min || f.num_prefill > pol.prefill.max)) {
      bad = "--prefill is outside [--min-prefill, --max-prefill]";
    }
    if (bad.empty() && (f.num_decode < pol.decode.min || f.num_decode > pol.decode.max)) {
      bad = "--decode is outside [--min-decode, --max-decode]";
    }
    if (bad.empty() && (pol.prefill.min < 1 || pol.decode.min < 1)) {
      bad = "--min-prefill and --min-decode must be >= 1 (a request needs one of each)";
    }
    if (!bad.empty()) {
      std::fprintf(stderr, "error: %s\n", bad.c_str());
      return 1;
    }
  }

  // TLS files are checked here, so a bad one stops `tandem serve` before any process starts.
  StatusOr<TlsConfig> tls = LoadTls(f.tls);
  if (!tls.ok()) {
    std::fprintf(stderr, "error: %s\n", tls.status().message().c_str());
    return 1;
  }
  if (StatusOr<MetricsTls> mt = MetricsTlsFromFlags(*tls, f.metrics_tls); !mt.ok()) {
    std::fprintf(stderr, "error: %s\n", mt.status().message().c_str());
    return 1;
  }
  if (f.metrics_tls && f.metrics_port < 0) {
    std::fprintf(stderr, "error: --metrics-tls with --metrics-port -1: no metrics port to serve\n");
    return 1;
  }
  if (f.metrics_tls && f.autoscale && f.tls.ca.empty()) {
    std::fprintf(stderr,
                 "error: --autoscale with --metrics-tls needs --tls-ca (the planner verifies the "
                 "metrics ports against it)\n");
    return 1;
  }
  // The planner's scrapes of https metrics ports trust the cluster's CA.
  const std::string metrics_ca =
      f.metrics_tls && !f.tls.ca.empty() ? std::filesystem::absolute(f.tls.ca).string() : "";

  // One cluster key for every process of this deployment: the user's, else a fresh random one.
  // The children read it from $TANDEM_CLUSTER_KEY (never from their command line, which
  // `ps` shows), so nothing outside this process tree can call a worker or register one.
  {
    StatusOr<std::string> key = LoadClusterKey(f.cluster_key_file);
    if (key.ok() && key->empty()) key = NewClusterKey();
    if (!key.ok()) {
      std::fprintf(stderr, "error: %s\n", key.status().message().c_str());
      return 1;
    }
    setenv(kClusterKeyEnv, key->c_str(), 1);
  }

  // Signals are taken synchronously; children unblock them before exec. Blocked before any
  // thread starts, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGCHLD);
  sigprocmask(SIG_BLOCK, &signals, nullptr);

  // Each process drains within its budget, then ends what is left within a few seconds.
  const auto stop_timeout = f.stop_timeout_s > 0 ? std::chrono::seconds(f.stop_timeout_s)
                                                 : std::chrono::seconds(f.drain_ms / 1000 + 15);
  const auto start_deadline = Clock::now() + std::chrono::seconds(f.start_timeout_s);
  std::unique_ptr<ChildProcess> router;
  std::unique_ptr<tp::ProcessActuator> workers;
  auto fail = [&](const std::string& what) {
    std::fprintf(stderr, "error: %s\n", what.c_str());
    StopAll(router.get(), workers.get(), stop_timeout);
    return 1;
  };
  // The router first: workers register with it (and heartbeat their load), and each worker
  // prints its address only once the router has accepted it, so every printed worker is in
  // rotation when the lines appear.
  auto spawned = ChildProcess::Spawn("router", RouterArgv(f, bin_dir, model));
  if (!spawned.ok()) return fail(spawned.status().ToString());
  router = std::move(*spawned);
  if (Status st = router->WaitStarted(start_deadline); !st.ok()) {
    return fail("router did not start (see its log above): " + st.ToString());
  }
  const std::string router_addr = router->grpc_address();
  tp::ProcessActuatorOptions wo;
  wo.argv = [&f, bin_dir, model, router_addr](tp::Pool pool, int index) {
    return WorkerArgv(f, bin_dir, model, router_addr, pool, index);
  };
  wo.start_timeout = std::chrono::seconds(f.start_timeout_s);
  wo.scrape_ca_file = metrics_ca;
  wo.stop_timeout = stop_timeout;
  workers = std::make_unique<tp::ProcessActuator>(wo);
  for (auto [pool, n] :
       {std::pair{tp::Pool::kPrefill, f.num_prefill}, std::pair{tp::Pool::kDecode, f.num_decode}}) {
    if (Status st = workers->SetReplicas(pool, n); !st.ok()) return fail(st.ToString());
  }
  if (Status st = workers->WaitStarted(start_deadline); !st.ok()) {
    return fail("a worker did not start (see its log above): " + st.ToString());
  }
  std::set<std::string> printed;
  auto print_new_lines = [&](const std::vector<std::string>& lines) {
    for (const auto& l : lines) {
      if (printed.insert(l).second) std::printf("%s\n", l.c_str());
    }
    std::fflush(stdout);
  };
  print_new_lines(router->endpoint_lines());
  print_new_lines(workers->EndpointLines());

  std::unique_ptr<tp::PlannerMetrics> planner_metrics;
  std::unique_ptr<tp::DecisionLog> decision_log;
  std::unique_ptr<tp::Planner> planner;
  std::thread planner_thread;
  if (f.autoscale) {
    planner_metrics = std::make_unique<tp::PlannerMetrics>();
    if (Status st = planner_metrics->Serve(f.host, 0); !st.ok()) return fail(st.ToString());
    auto log = tp::DecisionLog::Open(f.decision_log);
    if (!log.ok()) return fail(log.status().ToString());
    decision_log = std::move(*log);
    std::unique_ptr<tp::MetricsSource> source;
    tp::SourceOptions scrape = f.source;
    scrape.ca_file = metrics_ca;
    if (f.prometheus.empty()) {
      source = tp::MakeProcessScrapeSource(
          router->metrics_url(), [w = workers.get()] { return w->MetricsUrls(); }, scrape);
    } else {
      tp::PrometheusClientOptions prom;
      prom.url = f.prometheus;
      prom.timeout_s = f.source.timeout_s;
      source = tp::MakeFallbackSource(tp::MakePrometheusSource(prom, f.source),
                                      tp::MakeRouterScrapeSource(router->metrics_url(), scrape));
    }
    TLOG_INFO("tandem serve: autoscaling: reading {} every {} s", source->Describe(),
              f.planner.interval_s);
    planner = std::make_unique<tp::Planner>(f.planner, std::move(source),
                                            std::make_unique<BorrowedActuator>(workers.get()),
                                            planner_metrics.get(), decision_log.get());
    print_new_lines({"planner metrics " + planner_metrics->url()});
    planner_thread = std::thread([p = planner.get()] { p->Run(); });
  }
  auto stop_planner = [&] {
    if (!planner) return;
    planner->Stop();
    planner_thread.join();
    planner.reset();
  };

  while (true) {
    // Woken by a signal, a child's exit (SIGCHLD) or the tick, which reads the lines of
    // workers the planner started.
    timespec tick{0, 250 * 1000 * 1000};
    const int sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig == SIGTERM || sig == SIGINT) {
      TLOG_INFO("tandem serve: signal {}, stopping", sig);
      stop_planner();
      StopAll(router.get(), workers.get(), stop_timeout);
      return 0;
    }
    if (router->Poll()) {
      stop_planner();
      return fail("router process " + router->DescribeExit() + "; stopping the others");
    }
    if (auto died = workers->Poll(); !died.empty()) {
      stop_planner();
      return fail(died.front() + "; stopping the others");
    }
    print_new_lines(workers->EndpointLines());
  }
}

}  // namespace

void AddServeCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* cmd =
      app.add_subcommand("serve", "Run router + prefill + decode workers on this machine");
  cmd->add_option("--model", flags->model, "Checkpoint folder or .gguf file")
      ->capture_default_str();
  cmd->add_option("--host", flags->host, "Address every process serves on")->capture_default_str();
  cmd->add_option("--port", flags->port, "Router gRPC port (0 = pick)")->capture_default_str();
  cmd->add_option("--metrics-port", flags->metrics_port,
                  "Router /metrics port (0 = pick; -1 = no metrics anywhere); workers pick theirs")
      ->capture_default_str();
  cmd->add_option("--http-port", flags->http_port,
                  "Router OpenAI-compatible HTTP port (0 = pick, -1 = off)")
      ->capture_default_str();
  cmd->add_option("--api-key", flags->api_keys,
                  "Require this API key on the router's gRPC and HTTP APIs (repeatable)");
  cmd->add_option("--api-key-file", flags->api_key_file, "File with one API key per line")
      ->check(CLI::ExistingFile);
  cmd->add_option("--max-queue", flags->max_queue,
                  "Requests in the router at once; more are refused (RESOURCE_EXHAUSTED / 429)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--prefill", flags->num_prefill, "Prefill workers")->capture_default_str();
  cmd->add_option("--decode", flags->num_decode, "Decode workers")->capture_default_str();
  cmd->add_option("--kv-cache-mb", flags->kv_cache_mb, "KV cache per worker in MiB")
      ->capture_default_str();
  cmd->add_option("--threads", flags->threads, "Compute threads per worker (0 = every core)")
      ->capture_default_str();
  cmd->add_option("--prefix-cache", flags->prefix_cache,
                  "Workers reuse the KV of cached prompt prefixes: prefill computes, and decode "
                  "receives, only what they do not hold (their --prefix-cache)")
      ->capture_default_str();
  AddWeightsFlag(*cmd, &flags->weights);
  AddDeviceFlags(*cmd, &flags->device);
  cmd->add_option("--start-timeout-s", flags->start_timeout_s, "Longest wait for a child to serve")
      ->capture_default_str();
  cmd->add_option("--prefill-timeout-ms", flags->prefill_timeout_ms,
                  "Longest a prompt may take in prefill, queueing included (the router's "
                  "--prefill-timeout-ms and the prefill workers' --max-request-ms)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--drain-ms", flags->drain_ms,
                  "Drain budget of every process on Ctrl-C / SIGTERM: in-flight requests may "
                  "finish within it, then end with UNAVAILABLE")
      ->capture_default_str();
  cmd->add_option("--stop-timeout-s", flags->stop_timeout_s,
                  "Longest wait for each phase of the stop before SIGKILL (0 = drain + 15 s)")
      ->capture_default_str();
  cmd->add_option("--kv-transport", flags->kv_transport,
                  "KV transport between prefill and decode workers: auto (cuda_ipc between CUDA "
                  "workers, else shm on one host), tcp, shm, cuda_ipc (--device cuda), nccl (see "
                  "--nccl-library)")
      ->check(CLI::IsMember({"auto", "tcp", "shm", "cuda_ipc", "nccl"}))
      ->capture_default_str();
  cmd->add_option("--nccl-library", flags->nccl_library,
                  "NCCL of the workers with --kv-transport nccl: a libnccl path, \"\" "
                  "(libnccl.so.2), or \"fake\" (a CPU loopback)");
  cmd->add_option("--log-level", flags->log_level, "Log level of every process")
      ->capture_default_str();
  cmd->add_option("--cluster-key-file", flags->cluster_key_file,
                  "File holding the key the router and workers authenticate each other with "
                  "(default $TANDEM_CLUSTER_KEY, else a fresh random key for this run)");
  AddTlsFlags(*cmd, &flags->tls);
  AddMetricsTlsFlag(*cmd, &flags->metrics_tls);
  // Everything else each binary takes (failover, lease and request limits, HTTP threads, ...)
  // passes through; a flag the binary does not know stops it, and with it `tandem serve`.
  cmd->add_option("--router-arg", flags->router_args,
                  "Extra flag for tandem-router, e.g. --router-arg=--max-failovers=2 "
                  "(repeatable; see tandem-router --help)")
      ->allow_extra_args(false);
  cmd->add_option("--prefill-arg", flags->prefill_args,
                  "Extra flag for every tandem-prefill worker (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--decode-arg", flags->decode_args,
                  "Extra flag for every tandem-decode worker (repeatable)")
      ->allow_extra_args(false);
  CLI::Option* autoscale = cmd->add_flag(
      "--autoscale", flags->autoscale,
      "Size the prefill and decode pools from metrics (the planner, in this process): start "
      "workers, drain and stop the least loaded; --prefill / --decode are the initial sizes");
  // The planner's flags mean nothing without it: refused rather than ignored.
  for (CLI::Option* o : tp::AddPlannerFlags(*cmd, &flags->planner, &flags->source)->get_options()) {
    o->needs(autoscale);
  }
  cmd->add_option("--decision-log", flags->decision_log,
                  "With --autoscale: append the decision log (one JSON line per interval) here; "
                  "default stderr")
      ->needs(autoscale);
  cmd->add_option("--prometheus", flags->prometheus,
                  "With --autoscale: read the metrics through this Prometheus (http://HOST:PORT), "
                  "which must scrape the router and every worker (e.g. file_sd targets rewritten "
                  "as workers come and go; bench/autoscale_experiment.py does), falling back to "
                  "the router's /metrics, on which the planner never scales down; default: scrape "
                  "the processes directly")
      ->needs(autoscale);
  cmd->add_option("--rate-window", flags->source.rate_window,
                  "With --prometheus: the PromQL rate window (e.g. 15s)")
      ->capture_default_str()
      ->needs(autoscale);
  cmd->callback([flags, exit_code] { *exit_code = RunServe(*flags); });
}

}  // namespace tandem

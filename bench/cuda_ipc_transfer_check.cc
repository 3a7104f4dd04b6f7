// The cuda_ipc KV data plane between two processes on one GPU: a forked receiver allocates its
// page pool as exportable device memory (the CUDA virtual memory API, a POSIX file descriptor
// passed over a Unix socket), the sender imports it and copies its own device pages into it layer
// by layer through the Transceiver, and the receiver copies its pages back to the host and checks
// every byte. Prints GB/s per run and the median beside one cudaMemcpy device to device of the
// same bytes in the sender (the ceiling), and exits 0 only when every byte arrived.
//
//   cuda_ipc_transfer_check [--tokens 1024] [--runs 3] [--json out.json]
//
// tools/gpu_check.sh runs the CUDA build (step "cuda_ipc"); CI runs the interpreter build
// (cuda_ipc_transfer_check_interp), whose stand-in for the driver's virtual memory API shares
// real memory between the two processes.
#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cuda/vmm.h"  // engine/src: the exportable allocation the CUDA backend's pools use
#include "kv_transfer_check.h"
#include "smollm2_kv_layout.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/kvtransfer/transceiver.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;
using kv_check::Fill;
using kv_check::MakePlan;
using kv_check::Plan;
using kv_check::ReadAll;
using kv_check::RunArrived;
using kv_check::WriteAll;

KvPageLayout Layout() { return SmolLm2KvLayout(0x6375'6461'0000'0001ULL); }

// The receiver: exports its pool, reserves every run, sends its endpoint up, then checks each
// run's pages.
int ReceiverMain(const Plan& plan, int up, int down) {
  const KvPageLayout layout = Layout();
  auto ipc = CreateCudaDeviceIpc(0);
  if (!ipc.ok()) return fmt::print(stderr, "receiver: {}\n", ipc.status().ToString()), 3;
  auto dev = cuda_backend::OpenVmmDevice(0);
  if (!dev.ok()) return fmt::print(stderr, "receiver: {}\n", dev.status().ToString()), 3;
  const size_t pool_bytes = PagesAt::Bytes(layout, plan.pool_blocks);
  auto alloc = cuda_backend::CreateExportedAllocation(*dev, pool_bytes);
  if (!alloc.ok()) return fmt::print(stderr, "receiver: {}\n", alloc.status().ToString()), 3;
  std::byte* base = alloc->mapping->base();
  PagesAt pages(base, layout, plan.pool_blocks);
  TransceiverOptions o;
  o.layout = layout;
  o.device_pool = SharedPagePool{alloc->fd, base, pool_bytes, plan.pool_blocks};
  o.device_ipc = ipc->get();
  o.io_timeout = std::chrono::seconds(60);
  auto t = Transceiver::Create(o);
  if (!t.ok()) return fmt::print(stderr, "receiver: {}\n", t.status().ToString()), 3;
  const int runs = static_cast<int>(plan.dest.size());
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Status> done(runs);
  std::vector<int> finished(runs, 0);
  for (int r = 0; r < runs; ++r) {
    Status s =
        (*t)->ExpectTransfer(1000 + r, pages, plan.dest[r], Clock::now() + std::chrono::minutes(5),
                             [&, r](const Status& st) {
                               std::lock_guard<std::mutex> lock(mu);
                               done[r] = st;
                               finished[r] = 1;
                               cv.notify_all();
                             });
    if (!s.ok()) return fmt::print(stderr, "receiver: {}\n", s.ToString()), 3;
  }
  const std::string ep = (*t)->cuda_ipc_endpoint();
  const std::string id = (*ipc)->device_id();
  const uint32_t len = static_cast<uint32_t>(ep.size());
  if (!WriteAll(up, &len, 4) || !WriteAll(up, ep.data(), len)) return 3;
  std::vector<uint8_t> got(pool_bytes);
  const size_t page = layout.PageBytes();
  for (int r = 0; r < runs; ++r) {
    int32_t go = 0;
    if (!ReadAll(down, &go, 4)) return 3;  // the sender's Wait returned
    Status status;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return finished[r] != 0; });
      status = done[r];
    }
    int32_t ok = status.ok() ? 1 : 0;
    if (ok && cudaMemcpy(got.data(), base, pool_bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
      fmt::print(stderr, "receiver: reading the pool back failed\n");
      ok = 0;
    }
    if (ok) {
      ok = RunArrived(got, plan, r, page, layout.num_layers) ? 1 : 0;
    } else if (!status.ok()) {
      fmt::print(stderr, "receiver: run {}: {}\n", r, status.ToString());
    }
    if (!WriteAll(up, &ok, 4)) return 3;
  }
  t->reset();
  ::close(alloc->fd);
  fmt::print("receiver: pool of {:.1f} MiB on {}\n", pool_bytes / double(1 << 20), id);
  return 0;
}

// Seconds of one cudaMemcpy device to device of `bytes` (the best of three), the ceiling of any
// device copy on this GPU.
double DeviceCopySeconds(size_t bytes) {
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) return 0;
  double best = 1e30;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = Clock::now();
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaDeviceSynchronize();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  cudaFree(a);
  cudaFree(b);
  return best;
}

int Main(int argc, char** argv) {
  CLI::App app{"The cuda_ipc KV data plane between two processes on one GPU"};
  int tokens = 1024, runs = 3;
  std::string json_path;
  app.add_option("--tokens", tokens, "Prompt tokens whose KV moves per run")
      ->capture_default_str()
      ->check(CLI::Range(16, 1 << 20));
  app.add_option("--runs", runs, "Transfers")->capture_default_str()->check(CLI::Range(1, 100));
  app.add_option("--json", json_path, "Write the figures here");
  CLI11_PARSE(app, argc, argv);
  const KvPageLayout layout = Layout();
  const Plan plan = MakePlan(tokens, runs, layout.page_size);
  int up[2], down[2];
  if (::pipe(up) != 0 || ::pipe(down) != 0) return 3;
  // Fork before either side touches CUDA (it does not survive a fork).
  const pid_t child = ::fork();
  if (child < 0) return 3;
  if (child == 0) {
    ::close(up[0]);
    ::close(down[1]);
    ::_exit(ReceiverMain(plan, up[1], down[0]));
  }
  ::close(up[1]);
  ::close(down[0]);
  auto fail = [&](const std::string& why) {
    fmt::print(stderr, "cuda_ipc_transfer_check: {}\n", why);
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    return 1;
  };
  auto ipc = CreateCudaDeviceIpc(0);
  if (!ipc.ok()) return fail(ipc.status().ToString());
  uint32_t len = 0;
  if (!ReadAll(up[0], &len, 4) || len > 4096) return fail("the receiver did not start");
  std::string endpoint(len, '\0');
  if (!ReadAll(up[0], endpoint.data(), len)) return fail("the receiver did not start");
  const size_t src_bytes = PagesAt::Bytes(layout, plan.pool_blocks);
  void* src_base = nullptr;
  if (cudaMalloc(&src_base, src_bytes) != cudaSuccess) return fail("no device memory");
  PagesAt src(static_cast<std::byte*>(src_base), layout, plan.pool_blocks);
  TransceiverOptions o;
  o.layout = layout;
  o.listen = false;
  o.device_ipc = ipc->get();
  o.io_timeout = std::chrono::seconds(60);
  auto t = Transceiver::Create(o);
  if (!t.ok()) return fail(t.status().ToString());
  const size_t page = layout.PageBytes();
  const double bytes =
      static_cast<double>(page) * layout.num_layers * static_cast<double>(plan.src.size());
  std::vector<double> gbps;
  std::vector<uint8_t> host(src_bytes);
  int bad = 0;
  for (int r = 0; r < runs; ++r) {
    // The sender's i-th block carries the pattern of the receiver's i-th block of this run.
    Fill(host, page, r, layout.num_layers, plan.pool_blocks, plan.src);
    if (cudaMemcpy(src_base, host.data(), host.size(), cudaMemcpyHostToDevice) != cudaSuccess) {
      return fail("filling the source pages failed");
    }
    const auto t0 = Clock::now();
    TransferTicket ticket{
        1000 + static_cast<uint64_t>(r),        endpoint, plan.dest[r], layout.Fingerprint(),
        Clock::now() + std::chrono::minutes(5), 0};
    auto h = (*t)->StartSend(ticket, src, plan.src);
    if (!h.ok()) return fail(h.status().ToString());
    for (int32_t l = 0; l < layout.num_layers; ++l) (void)(*t)->SendLayer(*h, l);
    const Status s = (*t)->Wait(*h);
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    const int32_t go = 1;
    int32_t ok = 0;
    if (!WriteAll(down[1], &go, 4) || !ReadAll(up[0], &ok, 4)) return fail("the receiver died");
    if (!s.ok() || !ok) ++bad;
    gbps.push_back(bytes / secs / 1e9);
    fmt::print("run {}: {:.1f} MiB in {:.2f} ms, {:.2f} GB/s, {}\n", r, bytes / (1 << 20),
               secs * 1e3, gbps.back(),
               !s.ok() ? "sender: " + s.ToString()
               : ok    ? "every byte arrived"
                       : "BYTES DIFFER");
  }
  ::close(down[1]);
  int status = 0;
  ::waitpid(child, &status, 0);
  t->reset();
  const double copy_s = DeviceCopySeconds(static_cast<size_t>(bytes));
  const double copy_gbps = copy_s > 0 ? bytes / copy_s / 1e9 : 0;
  cudaFree(src_base);
  std::vector<double> sorted = gbps;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  fmt::print(
      "cuda_ipc ({}): {} tokens ({:.1f} MiB), median {:.2f} GB/s over {} runs, {:.2f}x one "
      "device-to-device cudaMemcpy of the same bytes ({:.2f} GB/s); {}\n",
      (*ipc)->device_id(), tokens, bytes / (1 << 20), median, runs,
      copy_gbps > 0 ? median / copy_gbps : 0.0, copy_gbps,
      bad == 0 ? "all exact" : fmt::format("{} runs FAILED", bad));
  if (!json_path.empty()) {
    nlohmann::json j = {{"device", (*ipc)->device_id()},
                        {"tokens", tokens},
                        {"bytes", bytes},
                        {"gbps", gbps},
                        {"median_gbps", median},
                        {"device_copy_gbps", copy_gbps},
                        {"failed_runs", bad}};
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  return bad == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) { return tandem::Main(argc, argv); }

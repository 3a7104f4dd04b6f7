// The nccl KV data plane between two processes, on whatever NCCL it is given: the real library on
// a GPU host (pages in device memory; one GPU serves both processes when each has its own
// NCCL_HOSTID and NCCL's socket transport runs on loopback, see ../shared/GPU-NOTES.md), or the
// CPU loopback fake. A forked receiver reserves pages, the sender pushes --runs transfers of a
// --tokens-token prompt's KV (SmolLM2's layout: 30 layers of 24 KiB pages, scattered) through
// the Transceiver layer by layer, and the receiver copies its pages back to the host and checks
// every byte. Prints GB/s per run and the median, and exits 0 only when every byte arrived.
//
//   nccl_transfer_check [--nccl-library fake|PATH] [--tokens 1024] [--runs 3] [--json out.json]
//   nccl_transfer_check --self [--nccl-library PATH]   one rank sending to itself
//
// --self: a one-rank communicator, one grouped send and receive of a layer's bytes to rank 0 in
// the library's memory, checked byte for byte (NCCL's self path: the API, stream and memory
// plumbing, not a link). The fake has no one-rank communicator.
//
// tools/gpu_check.sh runs it with the real library (steps "nccl" and "nccl_self").
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
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "kv_transfer_check.h"
#include "smollm2_kv_layout.h"
#include "tandem/kvtransfer/nccl_api.h"
#include "tandem/kvtransfer/transceiver.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;
using kv_check::Fill;
using kv_check::MakePlan;
using kv_check::Pattern;
using kv_check::Plan;
using kv_check::ReadAll;
using kv_check::RunArrived;
using kv_check::WriteAll;

KvPageLayout Layout() { return SmolLm2KvLayout(0x6e63'636c'0000'0001ULL); }

// num_layers x num_blocks pages in the NCCL's memory (device memory for the real library).
class ApiPages final : public PageAccessor {
 public:
  ApiPages(const NcclApi& api, const KvPageLayout& layout, int32_t num_blocks)
      : api_(api),
        base_(Alloc(api, PagesAt::Bytes(layout, num_blocks))),
        pages_(static_cast<std::byte*>(base_), layout, num_blocks) {}
  ~ApiPages() override {
    if (base_ != nullptr) api_.mem_free(base_);
  }
  bool ok() const { return base_ != nullptr; }
  std::span<std::byte> Page(int32_t layer, int32_t block) const override {
    return pages_.Page(layer, block);
  }
  size_t bytes() const { return pages_.bytes(); }
  void* base() const { return base_; }

 private:
  static void* Alloc(const NcclApi& api, size_t bytes) {
    void* base = nullptr;
    return api.mem_alloc(&base, bytes) == kNcclSuccess ? base : nullptr;
  }
  const NcclApi& api_;
  void* base_;  // null when the allocation failed
  PagesAt pages_;
};

// NCCL refuses two ranks on one GPU unless each process names its own host (GPU-NOTES.md).
void NcclEnvironment(const char* host_id) {
  ::setenv("NCCL_HOSTID", host_id, 1);
  ::setenv("NCCL_SOCKET_IFNAME", "lo", 0);
  ::setenv("NCCL_NET", "Socket", 0);
  ::setenv("NCCL_IB_DISABLE", "1", 0);
}

// The receiver: reserves every run, sends its endpoint up, then checks each run's pages.
int ReceiverMain(const std::string& library, const Plan& plan, int up, int down) {
  NcclEnvironment("tandem-kv-receiver");
  auto api = NcclApiFromFlag(library);
  if (!api.ok()) return fmt::print(stderr, "receiver: {}\n", api.status().ToString()), 3;
  const KvPageLayout layout = Layout();
  ApiPages pages(**api, layout, plan.pool_blocks);
  if (!pages.ok()) return fmt::print(stderr, "receiver: no page memory\n"), 3;
  TransceiverOptions o;
  o.layout = layout;
  o.nccl = *api;
  o.io_timeout = std::chrono::seconds(60);  // the first NCCL connection is slow on one GPU
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
  const std::string ep = (*t)->nccl_endpoint();
  const uint32_t len = static_cast<uint32_t>(ep.size());
  if (!WriteAll(up, &len, 4) || !WriteAll(up, ep.data(), len)) return 3;
  std::vector<uint8_t> got(pages.bytes());
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
    if (ok) {
      (*api)->mem_copy(got.data(), pages.base(), pages.bytes());
      ok = RunArrived(got, plan, r, page, layout.num_layers) ? 1 : 0;
    } else {
      fmt::print(stderr, "receiver: run {}: {}\n", r, status.ToString());
    }
    if (!WriteAll(up, &ok, 4)) return 3;
  }
  return 0;
}

// --self (see the top of the file). 0 when every byte came back.
int SelfMain(const std::string& library, size_t bytes) {
  auto api = NcclApiFromFlag(library);
  if (!api.ok()) return fmt::print(stderr, "nccl self: {}\n", api.status().ToString()), 1;
  const NcclApi& n = **api;
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(60);
  NcclUniqueId id;
  NcclApi::Stream stream = nullptr;
  NcclApi::Comm comm = nullptr;
  void* a = nullptr;
  void* b = nullptr;
  std::string failure;
  auto check = [&](int r, const char* what) {
    if (r != kNcclSuccess && r != kNcclInProgress && failure.empty()) {
      failure = fmt::format("{}: {} ({})", what, n.error_string(r), r);
    }
    return failure.empty();
  };
  // Polls the communicator (and with `stream` the stream) until done, failed or past deadline.
  auto wait = [&](bool with_stream, const char* what) {
    while (failure.empty()) {
      int async = kNcclSuccess;
      if (!check(n.comm_get_async_error(comm, &async), what) || !check(async, what)) break;
      const int done = async == kNcclSuccess && with_stream ? n.stream_query(stream) : async;
      if (done == kNcclSuccess) return true;
      if (!check(done, what)) break;
      if (Clock::now() > deadline) failure = fmt::format("{}: not done within 60 s", what);
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    return false;
  };
  std::vector<uint8_t> host(bytes), back(bytes);
  for (size_t i = 0; i < bytes; ++i) host[i] = Pattern(9, 1, 0, i);
  if (check(n.get_unique_id(&id), "get_unique_id") && check(n.stream_create(&stream), "stream") &&
      check(n.comm_init_rank(&comm, 1, id, 0), "comm_init_rank(1 rank)") && comm != nullptr &&
      wait(false, "init") && check(n.mem_alloc(&a, bytes), "mem_alloc") &&
      check(n.mem_alloc(&b, bytes), "mem_alloc") &&
      check(n.mem_copy(a, host.data(), bytes), "mem_copy")) {
    int r = n.group_start();
    if (check(r, "group_start")) r = n.send(a, bytes, 0, comm, stream);
    if (check(r, "send to self")) r = n.recv(b, bytes, 0, comm, stream);
    check(r, "recv from self");
    const int end = n.group_end();
    if (check(end, "group_end") && wait(true, "self send/recv") &&
        check(n.mem_copy(back.data(), b, bytes), "mem_copy") && back != host) {
      failure = "BYTES DIFFER";
    }
  } else if (failure.empty()) {
    failure = "no communicator";
  }
  if (comm != nullptr) n.comm_abort(comm);
  if (a != nullptr) n.mem_free(a);
  if (b != nullptr) n.mem_free(b);
  if (stream != nullptr) n.stream_destroy(stream);
  fmt::print("nccl self ({}): 1 rank, {:.2f} MiB sent to itself; {}\n", n.name,
             bytes / double(1 << 20), failure.empty() ? "every byte arrived" : failure);
  return failure.empty() ? 0 : 1;
}

int Main(int argc, char** argv) {
  CLI::App app{"The nccl KV data plane between two processes (real NCCL or the CPU fake)"};
  std::string library = "fake";
  int tokens = 1024, runs = 3;
  std::string json_path;
  app.add_option("--nccl-library", library, "fake, or a libnccl path (\"\" = libnccl.so.2)")
      ->capture_default_str();
  app.add_option("--tokens", tokens, "Prompt tokens whose KV moves per run")
      ->capture_default_str()
      ->check(CLI::Range(16, 1 << 20));
  app.add_option("--runs", runs, "Transfers")->capture_default_str()->check(CLI::Range(1, 100));
  app.add_option("--json", json_path, "Write the figures here");
  bool self = false;
  app.add_flag("--self", self, "One rank sending a layer's bytes to itself (the real library)");
  CLI11_PARSE(app, argc, argv);
  const KvPageLayout layout = Layout();
  if (self) return SelfMain(library, layout.PageBytes() * 64);
  const Plan plan = MakePlan(tokens, runs, layout.page_size);
  int up[2], down[2];
  if (::pipe(up) != 0 || ::pipe(down) != 0) return 3;
  // Fork before either side touches NCCL or CUDA (neither survives a fork).
  const pid_t child = ::fork();
  if (child < 0) return 3;
  if (child == 0) {
    ::close(up[0]);
    ::close(down[1]);
    ::_exit(ReceiverMain(library, plan, up[1], down[0]));
  }
  ::close(up[1]);
  ::close(down[0]);
  auto fail = [&](const std::string& why) {
    fmt::print(stderr, "nccl_transfer_check: {}\n", why);
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    return 1;
  };
  NcclEnvironment("tandem-kv-sender");
  auto api = NcclApiFromFlag(library);
  if (!api.ok()) return fail(api.status().ToString());
  uint32_t len = 0;
  if (!ReadAll(up[0], &len, 4) || len > 4096) return fail("the receiver did not start");
  std::string endpoint(len, '\0');
  if (!ReadAll(up[0], endpoint.data(), len)) return fail("the receiver did not start");
  ApiPages src(**api, layout, plan.pool_blocks);
  if (!src.ok()) return fail("no page memory");
  TransceiverOptions o;
  o.layout = layout;
  o.listen = false;
  o.nccl = *api;
  o.io_timeout = std::chrono::seconds(60);
  auto t = Transceiver::Create(o);
  if (!t.ok()) return fail(t.status().ToString());
  const size_t page = layout.PageBytes();
  const double bytes =
      static_cast<double>(page) * layout.num_layers * static_cast<double>(plan.src.size());
  std::vector<double> gbps;
  std::vector<uint8_t> host(src.bytes());
  int bad = 0;
  for (int r = 0; r < runs; ++r) {
    // The sender's i-th block carries the pattern of the receiver's i-th block of this run.
    Fill(host, page, r, layout.num_layers, plan.pool_blocks, plan.src);
    src.ok() && (*api)->mem_copy(src.base(), host.data(), host.size());
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
  std::vector<double> sorted = gbps;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  fmt::print("nccl ({}): {} tokens ({:.1f} MiB), median {:.2f} GB/s over {} runs; {}\n",
             (*api)->name, tokens, bytes / (1 << 20), median, runs,
             bad == 0 ? "all exact" : fmt::format("{} runs FAILED", bad));
  if (!json_path.empty()) {
    nlohmann::json j = {{"nccl", (*api)->name}, {"tokens", tokens},      {"bytes", bytes},
                        {"gbps", gbps},         {"median_gbps", median}, {"failed_runs", bad}};
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  return bad == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) { return tandem::Main(argc, argv); }

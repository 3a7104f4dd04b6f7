// KV transfer throughput on one host: the KV of a 1k- and a 4k-token prompt in SmolLM2's shape
// (30 layers, 3 kv heads, head_dim 64, f32, page 16) pushed layer by layer through Transceiver
// (handshake, per-layer messages, non-contiguous reserved pages, acks), per transport:
//   tcp  against a raw socket copy of the same number of bytes between two contiguous buffers
//        over one warm loopback connection (the Transceiver's peer connection is warm too);
//   shm  (the receiver's pool in a memfd, the sender copies each layer into it) against one
//        plain memcpy of the same bytes between two contiguous, already-touched buffers.
// Median of --runs runs each; prints GB/s and the ratio.
//
//   kv_transfer_bench [--runs 5] [--tokens 1024,4096] [--transport tcp,shm] [--json out.json]
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "smollm2_kv_layout.h"
#include "tandem/common/logging.h"
#include "tandem/kvtransfer/shared_pages.h"
#include "tandem/kvtransfer/transceiver.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

KvPageLayout SmolLm2Layout() { return SmolLm2KvLayout(0x5350'4c4d'3213'5000ULL); }

// A loopback TCP connection kept open across runs, like the Transceiver's peer connection (so
// neither side pays connection setup or a cold congestion window in the measured runs).
class RawPipe {
 public:
  RawPipe() {
    lfd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    TANDEM_CHECK(::bind(lfd_, reinterpret_cast<sockaddr*>(&addr), len) == 0);
    TANDEM_CHECK(::listen(lfd_, 1) == 0);
    TANDEM_CHECK(::getsockname(lfd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    cfd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    TANDEM_CHECK(::connect(cfd_, reinterpret_cast<sockaddr*>(&addr), len) == 0);
    sfd_ = ::accept(lfd_, nullptr, nullptr);
    TANDEM_CHECK(sfd_ >= 0);
    int one = 1;
    ::setsockopt(cfd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ::setsockopt(sfd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  ~RawPipe() {
    ::close(sfd_);
    ::close(cfd_);
    ::close(lfd_);
  }

  // Seconds to move `src` into `dst` (same size) from one contiguous buffer to another, written
  // and read in `chunk`-byte pieces (one layer's bytes, the Transceiver's message size).
  double Copy(const std::vector<std::byte>& src, std::vector<std::byte>& dst, size_t chunk) {
    auto start = Clock::now();
    std::thread writer([&] {
      size_t off = 0;
      while (off < src.size()) {
        ssize_t r = ::write(cfd_, src.data() + off, std::min(chunk, src.size() - off));
        TANDEM_CHECK(r > 0);
        off += size_t(r);
      }
    });
    size_t off = 0;
    while (off < dst.size()) {
      ssize_t r = ::read(sfd_, dst.data() + off, std::min(chunk, dst.size() - off));
      TANDEM_CHECK(r > 0);
      off += size_t(r);
    }
    double secs = std::chrono::duration<double>(Clock::now() - start).count();
    writer.join();
    return secs;
  }

 private:
  int lfd_ = -1, cfd_ = -1, sfd_ = -1;
};

// Seconds of one memcpy of `src` into `dst`.
double MemcpySeconds(const std::vector<std::byte>& src, std::vector<std::byte>& dst) {
  auto start = Clock::now();
  std::memcpy(dst.data(), src.data(), src.size());
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Result {
  std::string transport;
  int64_t tokens;
  double bytes;
  double kv_gbps;
  double raw_gbps;  // raw socket (tcp) or memcpy (shm)
  double ratio;     // median of the per-run kv / baseline ratios
};

// The receiver's pool for `transport`: shared memory for shm.
struct Pool {
  std::unique_ptr<SharedPageBuffer> shm;
  std::unique_ptr<HostPageBuffer> host;
  const PageAccessor& pages() const { return shm ? static_cast<const PageAccessor&>(*shm) : *host; }
};

Result RunPrompt(const std::string& transport, const KvPageLayout& layout, int64_t tokens, int runs,
                 uint64_t* next_id) {
  const int32_t blocks = static_cast<int32_t>((tokens + layout.page_size - 1) / layout.page_size);
  const int32_t pool = blocks + blocks / 4;  // leave holes so that pages are not contiguous
  HostPageBuffer src(layout, pool);
  Pool dst_pool;
  TransceiverOptions ro;
  ro.layout = layout;
  if (transport == "shm") {
    auto buf = SharedPageBuffer::Create(layout, pool);
    TANDEM_CHECK(buf.ok());
    dst_pool.shm = std::move(buf).value();
    ro.shm_pool = dst_pool.shm->pool();
  } else {
    dst_pool.host = std::make_unique<HostPageBuffer>(layout, pool);
  }
  const PageAccessor& dst = dst_pool.pages();
  auto receiver_or = Transceiver::Create(ro);
  TransceiverOptions so = ro;
  so.listen = false;
  so.shm_pool.reset();
  auto sender_or = Transceiver::Create(so);
  TANDEM_CHECK(receiver_or.ok() && sender_or.ok());
  Transceiver& receiver = **receiver_or;
  Transceiver& sender = **sender_or;
  const std::string endpoint = transport == "shm" ? receiver.shm_endpoint() : receiver.endpoint();
  std::mt19937_64 rng(tokens);
  for (auto& b : src.bytes()) b = std::byte(rng());
  // Touch every destination page once (a worker's pool is warm after its first requests).
  for (int32_t l = 0; l < layout.num_layers; ++l) {
    for (int32_t b = 0; b < pool; ++b) {
      auto p = dst.Page(l, b);
      std::fill(p.begin(), p.end(), std::byte{0});
    }
  }
  auto pick = [&] {
    std::vector<int32_t> ids(pool);
    for (int32_t i = 0; i < pool; ++i) ids[i] = i;
    std::shuffle(ids.begin(), ids.end(), rng);
    ids.resize(blocks);
    return ids;
  };
  const double bytes = double(layout.PageBytes()) * blocks * layout.num_layers;

  // The baseline runs right after each transfer on the same buffers, so that both see the same
  // machine state (this VM's memory bandwidth drifts by 20% between seconds); the ratio is the
  // median of the per-run ratios.
  std::vector<std::byte> a(static_cast<size_t>(bytes)), b(static_cast<size_t>(bytes));
  for (auto& x : a) x = std::byte(rng());
  std::fill(b.begin(), b.end(), std::byte{0});
  RawPipe pipe;
  std::vector<double> kv, raw, ratio;
  // Warm-up runs (negative) open the connection and, between them, write every destination
  // block once: a worker's sender has long since faulted in its view of the receiver's shared
  // pool, and its first touch of each page (a minor fault) is not the transport's cost.
  const int warmups = (pool + blocks - 1) / blocks;
  for (int run = -warmups; run < runs; ++run) {
    auto src_blocks = pick(), dst_blocks = pick();
    if (run < 0) {  // consecutive windows that together cover the pool
      const int32_t first = std::min(pool - blocks, (run + warmups) * blocks);
      for (int32_t i = 0; i < blocks; ++i) dst_blocks[i] = first + i;
    }
    const uint64_t id = (*next_id)++;
    std::promise<Status> arrived;
    auto start = Clock::now();
    TANDEM_CHECK(receiver
                     .ExpectTransfer(id, dst, dst_blocks, start + std::chrono::seconds(60),
                                     [&](const Status& s) { arrived.set_value(s); })
                     .ok());
    TransferTicket ticket{id, endpoint, dst_blocks, receiver.fingerprint(),
                          start + std::chrono::seconds(60)};
    auto h = sender.StartSend(ticket, src, src_blocks);
    TANDEM_CHECK(h.ok());
    for (int32_t layer = 0; layer < layout.num_layers; ++layer) {
      TANDEM_CHECK(sender.SendLayer(*h, layer).ok());
    }
    Status sent = sender.Wait(*h);
    Status got = arrived.get_future().get();
    double secs = std::chrono::duration<double>(Clock::now() - start).count();
    if (!sent.ok() || !got.ok()) {
      TLOG_ERROR("transfer failed: send {} / receive {}", sent.ToString(), got.ToString());
      std::exit(1);
    }
    // Spot-check the last layer's first and last page.
    for (size_t i : {size_t(0), src_blocks.size() - 1}) {
      auto a = src.Page(layout.num_layers - 1, src_blocks[i]);
      auto b = dst.Page(layout.num_layers - 1, dst_blocks[i]);
      TANDEM_CHECK(std::equal(a.begin(), a.end(), b.begin()));
    }
    const double base = transport == "shm"
                            ? MemcpySeconds(a, b)
                            : pipe.Copy(a, b, static_cast<size_t>(bytes) / layout.num_layers);
    if (run >= 0) {
      kv.push_back(bytes / secs / 1e9);
      raw.push_back(bytes / base / 1e9);
      ratio.push_back(base / secs);
    }
  }
  return {transport, tokens, bytes, Median(kv), Median(raw), Median(ratio)};
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  using namespace tandem;
  CLI::App app{"KV transfer throughput on one host, per transport (SmolLM2 KV shape)"};
  int runs = 5;
  std::vector<int64_t> prompts = {1024, 4096};
  std::vector<std::string> transports = {"tcp", "shm"};
  std::string json_path;
  app.add_option("--runs", runs, "runs per measurement (median reported)")
      ->check(CLI::PositiveNumber);
  app.add_option("--tokens", prompts, "prompt lengths in tokens")->delimiter(',');
  app.add_option("--json", json_path, "also write the results here");
  app.add_option("--transport", transports, "transports to measure")
      ->delimiter(',')
      ->check(CLI::IsMember({"tcp", "shm"}));
  CLI11_PARSE(app, argc, argv);

  const KvPageLayout layout = SmolLm2Layout();
  std::printf("KV layout: %s\n", layout.Describe().c_str());
  std::printf("%9s %8s %10s %16s %22s %8s\n", "transport", "tokens", "MiB", "kvtransfer GB/s",
              "baseline GB/s", "ratio");
  nlohmann::json out = nlohmann::json::array();
  uint64_t next_id = 1;
  for (const std::string& transport : transports) {
    for (int64_t tokens : prompts) {
      Result r = RunPrompt(transport, layout, tokens, runs, &next_id);
      std::printf("%9s %8lld %10.1f %16.2f %13.2f (%s) %8.2f\n", transport.c_str(),
                  static_cast<long long>(r.tokens), r.bytes / (1 << 20), r.kv_gbps, r.raw_gbps,
                  transport == "shm" ? "memcpy" : "raw tcp", r.ratio);
      out.push_back({{"transport", transport},
                     {"tokens", r.tokens},
                     {"bytes", r.bytes},
                     {"kvtransfer_gbps", r.kv_gbps},
                     {"baseline", transport == "shm" ? "memcpy" : "raw_tcp"},
                     {"baseline_gbps", r.raw_gbps},
                     {"ratio", r.ratio},
                     {"runs", runs}});
    }
  }
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}

// A live KV receiver (Transceiver, the decode side) fed by a stranger: each input is the byte
// stream a peer writes on one TCP connection to the receiver's KV port, then closes. The
// receiver has the fake NCCL (nccl_api.h), so the nccl plane's first frame, kNcclInit (token +
// unique id: DecodeNcclInit, the token check against a registered transfer, NcclLink::Join),
// is read as a real receiver reads it; so are kStart (handshake), kAbort, kLayer and any other
// frame. Two transfers are registered with known tokens (kToken1, kToken2) so that inputs can
// get past the token check; the seeds carry them (tools/make_fuzz_corpus.py writes them).
//
// Every input must end with the receiver closing the connection (our EOF); a receiver that
// keeps it open for kHangSeconds aborts the run (a hang). The input ends only when the
// receiver has no connection and no thread left from it (the process is back to the threads it
// had when idle), so inputs do not overlap, and libFuzzer's leak check after an input never
// runs while a connection's thread starts or exits (LeakSanitizer does not scan the stack of
// such a thread, and reported the reader's local strings as leaks).
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <thread>

#include "kv_fuzz_layout.h"
#include "tandem/common/logging.h"
#include "tandem/kvtransfer/formatter.h"
#include "tandem/kvtransfer/layout.h"
#include "tandem/kvtransfer/nccl_api.h"
#include "tandem/kvtransfer/transceiver.h"

namespace {

using namespace tandem;

constexpr uint64_t kToken1 = 0x0123456789abcdefULL;
constexpr uint64_t kToken2 = 0x1122334455667788ULL;
constexpr int kHangSeconds = 30;
constexpr int32_t kBlocks = 8;

struct Receiver {
  Receiver() : pages(fuzz::FuzzKvLayout(), kBlocks) {
    SetLogLevel("off");  // every refused input logs a warning otherwise
    TransceiverOptions o;
    o.layout = fuzz::FuzzKvLayout();
    o.nccl = &FakeNcclApi();
    // Short, so that an accepted kNcclInit whose rank 0 never comes (no fuzz input can be one)
    // fails fast instead of after the default 5 s (frames here come from loopback, at once).
    o.io_timeout = std::chrono::milliseconds(10);
    o.handshake_timeout = std::chrono::milliseconds(2000);
    o.idle_timeout = std::chrono::milliseconds(2000);
    auto t = Transceiver::Create(std::move(o));
    if (!t.ok()) {
      std::fprintf(stderr, "fuzz_kv_receiver: %s\n", t.status().ToString().c_str());
      std::abort();
    }
    rx = std::move(*t);
    port = std::atoi(rx->endpoint().substr(rx->endpoint().rfind(':') + 1).c_str());
  }

  // Request 1 (3 pages) and 2 (1 page) registered, unless still registered from before.
  void Register() {
    const auto start_by = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    (void)rx->ExpectTransfer(
        1, pages, {0, 1, 2}, start_by, [](const Status&) {}, kToken1);
    (void)rx->ExpectTransfer(
        2, pages, {5}, start_by, [](const Status&) {}, kToken2);
  }

  HostPageBuffer pages;
  std::unique_ptr<Transceiver> rx;
  int port = 0;
};

Receiver& R() {
  static Receiver* r = new Receiver();
  return *r;
}

int CountThreads() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (const dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
  }
  return n;
}

// This process's threads with the receiver idle: counted before the first input (libFuzzer
// starts threads of its own after LLVMFuzzerInitialize).
int g_idle_threads = 0;

[[noreturn]] void Hang(const char* what) {
  std::fprintf(stderr, "fuzz_kv_receiver: the receiver %s for %d s\n", what, kHangSeconds);
  std::abort();
}

// Writes `bytes` to the receiver, reading (and dropping) its answers meanwhile, then half-closes
// and reads until the receiver closes the connection.
void Feed(int port, std::span<const uint8_t> bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  size_t off = 0;
  bool closed_write = false;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(kHangSeconds);
  char buf[4096];
  while (true) {
    if (!closed_write && off == bytes.size()) {
      ::shutdown(fd, SHUT_WR);
      closed_write = true;
    }
    pollfd p{fd, static_cast<short>(POLLIN | (closed_write ? 0 : POLLOUT)), 0};
    if (::poll(&p, 1, 100) < 0) continue;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;  // closed by the receiver
    }
    if (!closed_write && (p.revents & POLLOUT)) {
      const ssize_t n =
          ::send(fd, bytes.data() + off, bytes.size() - off, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) off += static_cast<size_t>(n);
      if (n < 0 && errno != EAGAIN && errno != EINTR) break;  // the receiver already closed
    }
    if (std::chrono::steady_clock::now() > give_up) Hang("kept the connection open");
  }
  ::close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)R();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (256 << 10)) return 0;
  Receiver& r = R();
  if (g_idle_threads == 0) g_idle_threads = CountThreads();
  r.Register();
  Feed(r.port, {data, size});
  // The receiver's reader may still be finishing after it closed: wait until it is gone.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(kHangSeconds);
  while (r.rx->stats().inbound_connections != 0 || CountThreads() > g_idle_threads) {
    if (std::chrono::steady_clock::now() > give_up) Hang("kept a connection or its thread");
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return 0;
}

// The KV transfer wire (kvtransfer/src): frame headers read off a real stream socket
// (stream_socket.cc), control payloads (the kStart handshake against a receiver's layout, kAbort
// statuses), and the serialized layout. Input: one byte choosing the part, then its bytes.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kv_fuzz_layout.h"
#include "stream_socket.h"
#include "tandem/kvtransfer/formatter.h"
#include "tandem/kvtransfer/layout.h"
#include "transceiver_impl.h"

namespace {

using namespace tandem;
using namespace tandem::kvtransfer_internal;

const Formatter& LocalFormatter() {
  static const Formatter f(fuzz::FuzzKvLayout());
  return f;
}

void Control(uint16_t kind, std::span<const std::byte> payload, size_t expected_pages) {
  // kStart: remaining time and token (16 bytes), then the handshake.
  if (kind == static_cast<uint16_t>(Kind::kStart) && payload.size() >= 16) {
    (void)LocalFormatter().CheckHandshake(payload.subspan(16), expected_pages);
  } else if (kind == static_cast<uint16_t>(Kind::kAbort)) {
    (void)DecodeAbort(payload);
  }
}

// Frames as a receiver reads them: the bytes come from the other end of a socket pair.
void Frames(std::span<const std::byte> bytes) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) return;
  int sndbuf = 1 << 20;
  ::setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
  size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::write(fds[1], bytes.data() + off, bytes.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  ::close(fds[1]);
  std::unique_ptr<Connection> conn = MakeStreamConnection(fds[0], "fuzz", /*unix_socket=*/true);
  const Deadline deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (int i = 0; i < 64; ++i) {
    StatusOr<MessageHeader> h = conn->ReceiveHeader(deadline);
    if (!h.ok()) break;
    if (h->length <= kMaxControlBytes) {
      std::vector<std::byte> buf(h->length);
      ByteSpan span(buf.data(), buf.size());
      if (!conn->ReceivePayload({&span, 1}, deadline).ok()) break;
      Control(h->kind, buf, h->page_count);
    } else if (!conn->DiscardPayload(h->length, deadline).ok()) {
      break;
    }
    (void)conn->TakeFds();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > (256 << 10)) return 0;
  std::span<const std::byte> rest(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  switch (data[0] % 4) {
    case 0:
      if (auto l = KvPageLayout::Parse(rest); l.ok()) {
        if (l->Validate().ok()) (void)l->Describe();
        (void)l->Fingerprint();
        (void)CheckCompatible(LocalFormatter().layout(), *l);
      }
      break;
    case 1:
      (void)LocalFormatter().CheckHandshake(rest, 3);
      break;
    case 2:
      (void)DecodeAbort(rest);
      (void)DecodeStatus(rest);
      break;
    default:
      Frames(rest);
      break;
  }
  return 0;
}

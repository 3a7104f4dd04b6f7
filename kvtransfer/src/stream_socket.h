// Private to tandem_kvtransfer: the Connection / Listener over a connected stream socket that
// tcp_connection.cc and unix_connection.cc share (framing, deadlines, descriptor passing).
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "kv_tls_internal.h"
#include "tandem/kvtransfer/connection.h"

namespace tandem {

// Turns an accepted, non-blocking socket into a Connection (sets options, names the peer), or
// closes it and gives nullptr (no TLS session could be made).
using AcceptedFn = std::function<std::unique_ptr<Connection>(int fd, const sockaddr_storage&)>;

// Takes ownership of the non-blocking socket `fd`. `unix_socket` enables descriptor passing
// and SO_PEERCRED. `ssl` (owned from now on; tcp only): the bytes go through that TLS session,
// whose handshake runs on the first read or write.
std::unique_ptr<Connection> MakeStreamConnection(int fd, std::string peer, bool unix_socket,
                                                 SSL* ssl = nullptr);
// Takes ownership of the listening socket `fd`; `unlink_path`, if set, is removed on destruction.
std::unique_ptr<Listener> MakeStreamListener(int fd, int port, std::string unlink_path,
                                             AcceptedFn on_accept);

std::string ErrnoText(int err);
// Waits until `fd` is ready for `events`, the deadline passes (DEADLINE_EXCEEDED), or `stop` is
// set (CANCELLED).
Status WaitFd(int fd, short events, Deadline deadline, const std::atomic<bool>& stop,
              std::string_view what);

}  // namespace tandem

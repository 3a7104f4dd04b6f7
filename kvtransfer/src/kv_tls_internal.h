// Private to tandem_kvtransfer: KvTls for the socket code (tcp_connection.cc, stream_socket.cc).
#pragma once

#include <string>

#include "tandem/common/status.h"
#include "tandem/kvtransfer/kv_tls.h"

typedef struct ssl_st SSL;

namespace tandem {

// OpenSSL's queued errors as text (cleared), or "no detail".
std::string TlsErrorText();

// A server-side TLS session on the accepted socket `fd` (handshake on first use); nullptr when
// OpenSSL cannot make one. `tls.serves()` must hold.
SSL* NewServerSsl(const KvTls& tls, int fd);
// A client-side TLS session on the connected socket `fd` that verifies the peer against the CA
// and `host` (an IP address or a DNS name). `tls.dials()` must hold.
StatusOr<SSL*> NewClientSsl(const KvTls& tls, int fd, const std::string& host);

}  // namespace tandem

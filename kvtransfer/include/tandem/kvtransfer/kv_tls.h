// KvTls: TLS on the KV transfer's TCP connections (the tcp data plane, and the control
// connection of nccl), with the same files and meaning as the gRPC ports' --tls-cert, --tls-key
// and --tls-ca (tandem/rpc/tls_credentials.h):
//
//   cert + key        the receiver's KV listener serves TLS only (a plaintext peer fails the
//                     handshake); with a CA as well it requires a client certificate signed by
//                     it (mTLS).
//   ca                senders dial TLS and verify the receiver's certificate against the CA and
//                     the host they dial (IP or DNS name in its subjectAltName); with cert + key
//                     they present them.
//
// The handshake happens on the connection's first read or write, under that call's deadline
// (the receiver's is the handshake timeout of a pending connection). Unix-socket connections
// (shm: same host, same user) are not wrapped.
//
// Thread safety: immutable after Create; shared by every connection made with it.
#pragma once

#include <memory>
#include <string>

#include "tandem/common/status.h"

namespace tandem {

struct KvTlsPem {
  std::string cert;  // PEM certificate chain; empty = none
  std::string key;   // PEM private key; empty = none
  std::string ca;    // PEM CA bundle; empty = none
};

class KvTls {
 public:
  // INVALID_ARGUMENT naming what does not parse, or a certificate that does not match its key.
  // Neither role (no cert + key, no CA) is INVALID_ARGUMENT too.
  static StatusOr<std::shared_ptr<const KvTls>> Create(const KvTlsPem& pem);
  ~KvTls();
  KvTls(const KvTls&) = delete;
  KvTls& operator=(const KvTls&) = delete;

  bool serves() const { return server_ctx_ != nullptr; }  // cert + key
  bool dials() const { return client_ctx_ != nullptr; }   // ca
  // SSL_CTX* (opaque here, so that users need no OpenSSL headers).
  void* server_ctx() const { return server_ctx_; }
  void* client_ctx() const { return client_ctx_; }

 private:
  KvTls() = default;
  void* server_ctx_ = nullptr;
  void* client_ctx_ = nullptr;
};

}  // namespace tandem

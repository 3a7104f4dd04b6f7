// The TLS wrapper of the KV connections (kv_tls.cc, stream_socket.cc's TlsIo) on the receiver's
// (decode) side: a server-side session on one end of a socket pair reads frames and answers,
// the fuzz input is what its peer sends. One key and self-signed certificate are made at
// startup (OpenSSL API, P-256), and with them two KvTls: server only, and mTLS (the certificate
// is its own CA, so the in-process client below can present it).
//
// Input: a byte of flags, then the bytes.
//   bit 0  the server requires a client certificate (mTLS)
//   bit 1  raw: the bytes are the peer's side of the handshake itself (ClientHello ...);
//          else an in-process client finishes a real handshake first, then writes the first
//          `n` bytes (n: the next two bytes, little-endian) as application data through its
//          session and the rest raw onto the socket (forged or broken records)
//   bit 2  (not raw) the client sends close_notify after its application data
// Then the peer half-closes; the server reads frames until an error or the end, answering
// every frame, under a deadline, so every input ends.
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kv_tls_internal.h"
#include "stream_socket.h"
#include "tandem/kvtransfer/kv_tls.h"
#include "transceiver_impl.h"

namespace {

using namespace tandem;
using namespace tandem::kvtransfer_internal;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "fuzz_kv_tls: %s: %s\n", what, TlsErrorText().c_str());
  std::abort();
}

std::string Pem(int (*write)(BIO*, void*), void* obj) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr || !write(bio, obj)) Die("PEM");
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

struct Keys {
  Keys() {
    EVP_PKEY* key = EVP_EC_gen("P-256");
    X509* cert = X509_new();
    if (key == nullptr || cert == nullptr) Die("key");
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600L * 24 * 365);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("fuzz"), -1, -1, 0);
    X509_set_issuer_name(cert, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, cert, cert, nullptr, nullptr, 0);
    for (auto [nid, value] : {std::pair{NID_basic_constraints, "critical,CA:TRUE"},
                              std::pair{NID_subject_alt_name, "IP:127.0.0.1"}}) {
      X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
      if (ext == nullptr || !X509_add_ext(cert, ext, -1)) Die("extension");
      X509_EXTENSION_free(ext);
    }
    if (!X509_sign(cert, key, EVP_sha256())) Die("sign");
    KvTlsPem pem;
    pem.cert =
        Pem([](BIO* b, void* x) { return PEM_write_bio_X509(b, static_cast<X509*>(x)); }, cert);
    pem.key = Pem(
        [](BIO* b, void* k) {
          return PEM_write_bio_PrivateKey(b, static_cast<EVP_PKEY*>(k), nullptr, nullptr, 0,
                                          nullptr, nullptr);
        },
        key);
    auto plain = KvTls::Create(pem);
    pem.ca = pem.cert;
    auto mutual = KvTls::Create(pem);
    if (!plain.ok() || !mutual.ok()) Die("KvTls::Create");
    server = *plain;
    server_mtls = *mutual;
    // The peer: any server certificate will do; it presents the same certificate for mTLS.
    client = SSL_CTX_new(TLS_client_method());
    if (client == nullptr || !SSL_CTX_use_certificate(client, cert) ||
        !SSL_CTX_use_PrivateKey(client, key)) {
      Die("client context");
    }
    SSL_CTX_set_verify(client, SSL_VERIFY_NONE, nullptr);
    X509_free(cert);
    EVP_PKEY_free(key);
  }
  std::shared_ptr<const KvTls> server;
  std::shared_ptr<const KvTls> server_mtls;
  SSL_CTX* client = nullptr;
};

const Keys& K() {
  static const Keys* k = new Keys();
  return *k;
}

// Writes what fits into the socket buffer (the server reads only after the peer is done).
void WriteRaw(int fd, std::span<const uint8_t> bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

// Runs the client's and the server's handshakes in turns on this thread; true when both ended.
bool Handshake(SSL* client, SSL* server) {
  bool client_done = false, server_done = false;
  for (int i = 0; i < 64 && !(client_done && server_done); ++i) {
    if (!client_done) {
      const int r = SSL_do_handshake(client);
      if (r == 1) {
        client_done = true;
      } else if (SSL_get_error(client, r) != SSL_ERROR_WANT_READ) {
        return false;
      }
    }
    if (!server_done) {
      const int r = SSL_do_handshake(server);
      if (r == 1) {
        server_done = true;
      } else if (SSL_get_error(server, r) != SSL_ERROR_WANT_READ) {
        return false;
      }
    }
  }
  return client_done && server_done;
}

// The receiver's side: frames until an error or the end, each answered.
void Serve(Connection& conn) {
  const Deadline deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (int i = 0; i < 64; ++i) {
    StatusOr<MessageHeader> h = conn.ReceiveHeader(deadline);
    if (!h.ok()) break;
    if (h->length <= kMaxControlBytes) {
      std::vector<std::byte> buf(h->length);
      ByteSpan span(buf.data(), buf.size());
      if (!conn.ReceivePayload({&span, 1}, deadline).ok()) break;
    } else if (!conn.DiscardPayload(h->length, deadline).ok()) {
      break;
    }
    MessageHeader ack;
    ack.kind = static_cast<uint16_t>(Kind::kLayerAck);
    ack.request_id = h->request_id;
    ack.layer = h->layer;
    if (!conn.Send(ack, {}, deadline).ok()) break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)K();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > (64 << 10)) return 0;
  const Keys& k = K();
  const uint8_t flags = data[0];
  std::span<const uint8_t> rest(data + 1, size - 1);
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) return 0;
  for (int fd : fds) {
    const int bytes = 1 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
  }
  SSL* server = NewServerSsl((flags & 1) ? *k.server_mtls : *k.server, fds[0]);
  if (server == nullptr) Die("NewServerSsl");
  if (flags & 2) {
    WriteRaw(fds[1], rest);
  } else {
    SSL* client = SSL_new(k.client);
    if (client == nullptr) Die("SSL_new");
    SSL_set_fd(client, fds[1]);
    SSL_set_connect_state(client);
    size_t n = 0;
    if (rest.size() >= 2) {
      n = std::min<size_t>(rest[0] | (rest[1] << 8), rest.size() - 2);
      rest = rest.subspan(2);
    }
    if (Handshake(client, server)) {
      size_t written = 0;
      if (n > 0 && SSL_write_ex(client, rest.data(), n, &written) != 1) written = 0;
      if (flags & 4) (void)SSL_shutdown(client);
      WriteRaw(fds[1], rest.subspan(n));
    } else {
      WriteRaw(fds[1], rest);  // the server answers what it can of its half-done handshake
    }
    SSL_free(client);
  }
  ERR_clear_error();
  ::shutdown(fds[1], SHUT_WR);
  {
    std::unique_ptr<Connection> conn = MakeStreamConnection(fds[0], "fuzz", false, server);
    Serve(*conn);
  }
  ::close(fds[1]);
  return 0;
}

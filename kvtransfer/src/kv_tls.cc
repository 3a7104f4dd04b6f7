#include "tandem/kvtransfer/kv_tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <csignal>
#include <memory>
#include <vector>

#include "kv_tls_internal.h"

namespace tandem {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;

BioPtr Bio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Every certificate in `pem`, in order; INVALID_ARGUMENT when there is none.
StatusOr<std::vector<X509*>> ReadCerts(const std::string& pem, const char* what) {
  BioPtr bio = Bio(pem);
  std::vector<X509*> certs;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) certs.push_back(x);
  ERR_clear_error();  // the end of the input reads as an error
  if (certs.empty()) return InvalidArgumentError("KV TLS: the {} holds no PEM certificate", what);
  return certs;
}

Status UseCertAndKey(SSL_CTX* ctx, const KvTlsPem& pem) {
  TANDEM_ASSIGN_OR_RETURN(std::vector<X509*> chain, ReadCerts(pem.cert, "certificate"));
  int ok = SSL_CTX_use_certificate(ctx, chain[0]);
  for (size_t i = 1; i < chain.size(); ++i) ok = ok && SSL_CTX_add1_chain_cert(ctx, chain[i]);
  for (X509* x : chain) X509_free(x);
  if (!ok) return InvalidArgumentError("KV TLS: the certificate is not usable: {}", TlsErrorText());
  BioPtr bio = Bio(pem.key);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) {
    return InvalidArgumentError("KV TLS: the key holds no PEM private key: {}", TlsErrorText());
  }
  ok = SSL_CTX_use_PrivateKey(ctx, key);
  EVP_PKEY_free(key);
  if (!ok || !SSL_CTX_check_private_key(ctx)) {
    return InvalidArgumentError("KV TLS: the private key does not match the certificate: {}",
                                TlsErrorText());
  }
  return Status::Ok();
}

Status TrustCa(SSL_CTX* ctx, const std::string& ca, int verify_mode) {
  TANDEM_ASSIGN_OR_RETURN(std::vector<X509*> certs, ReadCerts(ca, "CA bundle"));
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  int ok = 1;
  for (X509* x : certs) {
    ok = ok && X509_STORE_add_cert(store, x);
    X509_free(x);
  }
  if (!ok) return InvalidArgumentError("KV TLS: the CA bundle is not usable: {}", TlsErrorText());
  SSL_CTX_set_verify(ctx, verify_mode, nullptr);
  return Status::Ok();
}

SSL_CTX* NewContext(const SSL_METHOD* method) {
  SSL_CTX* ctx = SSL_CTX_new(method);
  if (ctx == nullptr) return nullptr;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // Writes may be retried with the rest of a buffer, or from another buffer (iovecs).
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return ctx;
}

}  // namespace

std::string TlsErrorText() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no detail" : out;
}

StatusOr<std::shared_ptr<const KvTls>> KvTls::Create(const KvTlsPem& pem) {
  if (pem.cert.empty() != pem.key.empty()) {
    return InvalidArgumentError("KV TLS: a certificate needs its key, and a key its certificate");
  }
  if (pem.cert.empty() && pem.ca.empty()) {
    return InvalidArgumentError("KV TLS: neither a certificate and key nor a CA");
  }
  // OpenSSL writes to the socket without MSG_NOSIGNAL: a peer gone mid-write must be an error,
  // not SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  std::shared_ptr<KvTls> tls(new KvTls());
  if (!pem.cert.empty()) {
    SSL_CTX* ctx = NewContext(TLS_server_method());
    if (ctx == nullptr) return InternalError("KV TLS: SSL_CTX_new: {}", TlsErrorText());
    tls->server_ctx_ = ctx;
    TANDEM_RETURN_IF_ERROR(UseCertAndKey(ctx, pem));
    if (!pem.ca.empty()) {
      TANDEM_RETURN_IF_ERROR(
          TrustCa(ctx, pem.ca, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT));
    }
  }
  if (!pem.ca.empty()) {
    SSL_CTX* ctx = NewContext(TLS_client_method());
    if (ctx == nullptr) return InternalError("KV TLS: SSL_CTX_new: {}", TlsErrorText());
    tls->client_ctx_ = ctx;
    TANDEM_RETURN_IF_ERROR(TrustCa(ctx, pem.ca, SSL_VERIFY_PEER));
    if (!pem.cert.empty()) TANDEM_RETURN_IF_ERROR(UseCertAndKey(ctx, pem));
  }
  return std::shared_ptr<const KvTls>(std::move(tls));
}

KvTls::~KvTls() {
  SSL_CTX_free(static_cast<SSL_CTX*>(server_ctx_));
  SSL_CTX_free(static_cast<SSL_CTX*>(client_ctx_));
}

}  // namespace tandem

namespace tandem {

SSL* NewServerSsl(const KvTls& tls, int fd) {
  SSL* ssl = SSL_new(static_cast<SSL_CTX*>(tls.server_ctx()));
  if (ssl == nullptr) return nullptr;
  SSL_set_fd(ssl, fd);
  SSL_set_accept_state(ssl);
  return ssl;
}

StatusOr<SSL*> NewClientSsl(const KvTls& tls, int fd, const std::string& host) {
  SSL* ssl = SSL_new(static_cast<SSL_CTX*>(tls.client_ctx()));
  if (ssl == nullptr) return InternalError("KV TLS: SSL_new: {}", TlsErrorText());
  SSL_set_fd(ssl, fd);
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  // The name the certificate must carry: the IP address or the DNS name that was dialled.
  const int ok = X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) ||
                 (X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size()) &&
                  SSL_set_tlsext_host_name(ssl, host.c_str()));
  ERR_clear_error();  // the IP attempt fails for names
  if (!ok) {
    SSL_free(ssl);
    return InvalidArgumentError("KV TLS: cannot verify against host '{}'", host);
  }
  SSL_set_connect_state(ssl);
  return ssl;
}

}  // namespace tandem

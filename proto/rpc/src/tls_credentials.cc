#include "tandem/rpc/tls_credentials.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <grpcpp/security/auth_context.h>

namespace tandem {
namespace {

// The PEM text of `path` (given with `flag`); INVALID_ARGUMENT naming both when it is missing,
// unreadable or holds no PEM block.
StatusOr<std::string> ReadPem(std::string_view flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return InvalidArgumentError("{} {}: cannot open ({})", flag, path, std::strerror(errno));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return InvalidArgumentError("{} {}: cannot read", flag, path);
  std::string pem = text.str();
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return InvalidArgumentError("{} {}: not a PEM file (no -----BEGIN line)", flag, path);
  }
  return pem;
}

}  // namespace

void AddTlsFlags(CLI::App& app, TlsFiles* files) {
  app.add_option("--tls-cert", files->cert,
                 "PEM certificate (chain) of this process: its servers speak TLS (with --tls-key)");
  app.add_option("--tls-key", files->key, "PEM private key of --tls-cert");
  app.add_option("--tls-ca", files->ca,
                 "PEM CA bundle: calls to other Tandem processes use TLS and verify them against "
                 "it (presenting --tls-cert, mTLS); internal services then require client "
                 "certificates signed by it");
}

void AddMetricsTlsFlag(CLI::App& app, bool* on) {
  app.add_flag("--metrics-tls", *on,
               "Serve the metrics port (/metrics, /health) over HTTPS with --tls-cert and "
               "--tls-key; scrapers and probes then use https");
}

StatusOr<MetricsTls> MetricsTlsFromFlags(const TlsConfig& tls, bool on) {
  if (!on) return MetricsTls{};
  if (!tls.serves_tls()) {
    return InvalidArgumentError("--metrics-tls needs --tls-cert and --tls-key (its certificate)");
  }
  return MetricsTls{tls.files.cert, tls.files.key};
}

StatusOr<TlsConfig> LoadTls(const TlsFiles& files) {
  if (!files.cert.empty() && files.key.empty()) {
    return InvalidArgumentError("--tls-cert needs --tls-key (the certificate's private key)");
  }
  if (files.cert.empty() && !files.key.empty()) {
    return InvalidArgumentError("--tls-key needs --tls-cert (the key's certificate)");
  }
  TlsConfig tls;
  tls.files = files;
  if (!files.cert.empty()) {
    TANDEM_ASSIGN_OR_RETURN(tls.cert_pem, ReadPem("--tls-cert", files.cert));
    TANDEM_ASSIGN_OR_RETURN(tls.key_pem, ReadPem("--tls-key", files.key));
    if (tls.key_pem.find("PRIVATE KEY-----") == std::string::npos) {
      return InvalidArgumentError("--tls-key {}: holds no PEM private key", files.key);
    }
  }
  if (!files.ca.empty()) {
    TANDEM_ASSIGN_OR_RETURN(tls.ca_pem, ReadPem("--tls-ca", files.ca));
  }
  return tls;
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsConfig& tls,
                                                               TlsPeers peers) {
  if (!tls.serves_tls()) return grpc::InsecureServerCredentials();
  grpc_ssl_client_certificate_request_type request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  if (tls.dials_tls()) {
    request = peers == TlsPeers::kRequireClientCert
                  ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                  : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  grpc::SslServerCredentialsOptions options(request);
  options.pem_root_certs = tls.ca_pem;
  options.pem_key_cert_pairs.push_back({tls.key_pem, tls.cert_pem});
  return grpc::SslServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsConfig& tls) {
  if (!tls.dials_tls()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = tls.ca_pem;
  options.pem_private_key = tls.key_pem;
  options.pem_cert_chain = tls.cert_pem;
  return grpc::SslCredentials(options);
}

Status RequireVerifiedPeerCertificate(const grpc::CallbackServerContext* ctx, const TlsConfig& tls,
                                      std::string_view service) {
  if (!tls.serves_tls() || !tls.dials_tls()) return Status::Ok();
  std::shared_ptr<const grpc::AuthContext> auth = ctx->auth_context();
  // The property is there only when the peer presented a certificate, and the port
  // (kOptionalClientCert) verified it against the CA in the handshake.
  if (auth == nullptr || auth->FindPropertyValues("x509_pem_cert").empty()) {
    return UnauthenticatedError("{}: a client certificate signed by the cluster CA is required",
                                service);
  }
  return Status::Ok();
}

}  // namespace tandem

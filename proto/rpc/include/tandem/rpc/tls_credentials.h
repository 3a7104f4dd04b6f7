// TLS for the gRPC ports: --tls-cert / --tls-key / --tls-ca, loaded once in main() into a
// TlsConfig (PEM text), then turned into server and channel credentials.
//
//   cert + key       the process serves TLS on its gRPC ports (and HTTPS on the router's HTTP
//   port).
//   + ca (servers)   internal services (prefill, decode workers) require a client certificate
//                    signed by the CA (mTLS); the router's port, public, asks for one and verifies
//                    it when given, and its Registry refuses callers without one
//                    (RequireVerifiedPeerCertificate).
//   ca (clients)     channels speak TLS and verify the server against the CA; with cert + key too
//                    they present them (mTLS). Without a CA channels are plaintext.
//   --metrics-tls    the /metrics (and workers' /health) port serves HTTPS with cert + key
//                    (no client certificate asked: scrapers and kubelet probes have none).
//
// Thread safety: pure functions; TlsConfig is a value.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>
#include <CLI/CLI.hpp>

#include "tandem/common/metrics_http.h"
#include "tandem/common/status.h"

namespace tandem {

// The flag values: paths of PEM files; empty = not given.
struct TlsFiles {
  std::string cert;
  std::string key;
  std::string ca;
};

struct TlsConfig {
  // The files they came from (HTTPS loads them itself).
  TlsFiles files;
  // PEM text of the certificate chain, its private key and the CA bundle; empty = none.
  std::string cert_pem;
  std::string key_pem;
  std::string ca_pem;

  // Serves TLS (cert and key given).
  bool serves_tls() const { return !cert_pem.empty(); }
  // Dials TLS (a CA given).
  bool dials_tls() const { return !ca_pem.empty(); }
};

// Adds --tls-cert, --tls-key and --tls-ca to `app`.
void AddTlsFlags(CLI::App& app, TlsFiles* files);

// Adds --metrics-tls to `app`.
void AddMetricsTlsFlag(CLI::App& app, bool* on);

// The metrics port's TLS: `tls`'s certificate and key files when `on`, else none.
// INVALID_ARGUMENT naming --metrics-tls when `on` without --tls-cert and --tls-key.
StatusOr<MetricsTls> MetricsTlsFromFlags(const TlsConfig& tls, bool on);

// Reads the files. INVALID_ARGUMENT naming the flag when --tls-cert comes without --tls-key or
// the other way round, naming the file when it is missing, unreadable or not PEM.
StatusOr<TlsConfig> LoadTls(const TlsFiles& files);

enum class TlsPeers {
  // Internal services: with a CA, a client without a certificate signed by it is refused in the
  // handshake.
  kRequireClientCert,
  // The router's port: a client certificate is asked for and verified when given, not required.
  kOptionalClientCert,
};

// TLS credentials when `tls.serves_tls()`, else insecure ones.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsConfig& tls,
                                                               TlsPeers peers);

// TLS credentials when `tls.dials_tls()` (with the client certificate when one is configured),
// else insecure ones.
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsConfig& tls);

// OK when `tls` has no CA (nothing to require) or the call's peer presented a certificate that
// the CA verified; else UNAUTHENTICATED naming the service. For services on a port made with
// kOptionalClientCert that must only serve the cluster.
Status RequireVerifiedPeerCertificate(const grpc::CallbackServerContext* ctx, const TlsConfig& tls,
                                      std::string_view service);

}  // namespace tandem

#include "http_frontend.h"

#include <atomic>

#include <fmt/format.h>
#include <httplib.h>

#include "completion_responder.h"
#include "http_server.h"
#include "openai_protocol.h"
#include "tandem/common/logging.h"

namespace tandem::http {
namespace {

// Whether a request's body is read: by a completion handler, or by cpp-httplib before routing
// (a Content-Length body, bounded by its payload limit). The pre-routing handler answers the
// others 404 unread, and the reactor does not wait for their bodies.
bool BodyIsRead(std::string_view method, std::string_view path, bool content_length,
                bool transfer_encoding, bool content_encoding) {
  if (method == "POST" && (path == "/v1/completions" || path == "/v1/chat/completions")) {
    return true;
  }
  return content_length && !transfer_encoding && !content_encoding;
}

}  // namespace

class HttpFrontend::Handlers {
 public:
  Handlers(const HttpOptions& options, RouterService* service, Metrics* metrics)
      : options_(options), service_(service), metrics_(metrics) {
    ctx_.service = service;
    ctx_.request_timeout = options.request_timeout;
    ctx_.stopping = &stopping_;
    ctx_.open_responses = &open_responses_;
  }

  void Install(httplib::Server& s) {
    // Content-reader handlers: the body is read by Generate itself, bounded (ReadBody).
    s.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r,
                                     const httplib::ContentReader& read) {
      Generate(ApiKind::kCompletion, q, r, read);
    });
    s.Post("/v1/chat/completions",
           [this](const httplib::Request& q, httplib::Response& r,
                  const httplib::ContentReader& read) { Generate(ApiKind::kChat, q, r, read); });
    s.Get("/v1/models", [this](const httplib::Request& q, httplib::Response& r) { Models(q, r); });
    s.Get(R"(/v1/models/(.+))",
          [this](const httplib::Request& q, httplib::Response& r) { Models(q, r); });
    s.Get("/health", [this](const httplib::Request&, httplib::Response& r) { Health(r); });
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
      r.set_content(metrics_->Render(), "text/plain; version=0.0.4; charset=utf-8");
    });
    // Only the completion routes take a body, and read it themselves (bounded, ReadBody). For
    // any other request cpp-httplib reads the body into memory before it looks for a route,
    // bounded only when it comes with a Content-Length (a chunked body, one without a length,
    // which is read until the client closes, and a compressed one are not): answer those at
    // once, unread (what is left of the body then reaches cpp-httplib as malformed requests).
    s.set_pre_routing_handler([](const httplib::Request& q, httplib::Response& r) {
      using Result = httplib::Server::HandlerResponse;
      const bool reads_body = q.method == "POST" || q.method == "PUT" || q.method == "PATCH" ||
                              q.method == "DELETE" || q.method == "PRI";
      if (!reads_body ||
          BodyIsRead(q.method, q.path, q.has_header("Content-Length"),
                     q.has_header("Transfer-Encoding"), q.has_header("Content-Encoding"))) {
        return Result::Unhandled;  // Content-Length: bounded by set_payload_max_length
      }
      RespondError(r, ApiError{404, fmt::format("no route for {} {}", q.method, q.path),
                               "not_found_error", "", ""});
      return Result::Handled;
    });
    s.set_error_handler([](const httplib::Request& q, httplib::Response& r) {
      if (!r.body.empty()) return;  // a handler's own error
      ApiError e;
      e.http_status = r.status;
      e.type = r.status == 404 ? "not_found_error" : "invalid_request_error";
      e.message = r.status == 404 ? fmt::format("no route for {} {}", q.method, q.path)
                                  : fmt::format("HTTP {} for {} {}", r.status, q.method, q.path);
      RespondError(r, e);
    });
  }

  void StopResponses() { stopping_.store(true); }
  int32_t open_responses() const { return open_responses_.load(); }

 private:
  // The API key check of /v1/*: nullopt when allowed.
  std::optional<ApiError> Unauthorized(const httplib::Request& q) const {
    Status st = CheckApiKey(options_.api_keys, q.get_header_value("Authorization"));
    if (st.ok()) return std::nullopt;
    return ApiError{401, std::string(st.message()), "authentication_error", "", "invalid_api_key"};
  }

  void Fail(httplib::Response& r, const ApiError& e) {
    metrics_->CountError(e.http_status == 401   ? StatusCode::kUnauthenticated
                         : e.http_status == 404 ? StatusCode::kNotFound
                                                : StatusCode::kInvalidArgument);
    RespondError(r, e);
  }

  // Reads the body: into `body` (when not null) up to limits.max_body_bytes decoded bytes,
  // whatever the framing and Content-Encoding. A larger body is read on (kept nowhere) up to
  // kDrainFactor times the bound, so that a keep-alive connection stays in step for the next
  // request; past that the read stops, and what is left of the body reaches cpp-httplib as
  // garbage requests (answered 400, then the connection closes).
  static constexpr size_t kDrainFactor = 4;
  std::optional<ApiError> ReadBody(const httplib::Request& q, httplib::Response& r,
                                   const httplib::ContentReader& read, std::string* body) {
    const auto limit = static_cast<size_t>(options_.limits.max_body_bytes);
    if (q.is_multipart_form_data()) {  // (cpp-httplib's plain reader cannot read those)
      return ApiError{415, "multipart bodies are not accepted; send a JSON body",
                      "invalid_request_error", "", "unsupported_media_type"};
    }
    size_t seen = 0;
    const bool ok = read([&](const char* data, size_t n) {
      seen += n;
      if (seen <= limit) {
        if (body != nullptr) body->append(data, n);
        return true;
      }
      if (body != nullptr) std::string().swap(*body);
      return seen / kDrainFactor <= limit;
    });
    if (seen > limit || r.status == 413) {
      return ApiError{
          413, fmt::format("the request body is larger than {} bytes (after decoding)", limit),
          "invalid_request_error", "", "request_too_large"};
    }
    if (ok) return std::nullopt;
    if (r.status == 415) {
      return ApiError{415,
                      fmt::format("Content-Encoding '{}' is not supported (gzip, deflate, br)",
                                  q.get_header_value("Content-Encoding")),
                      "invalid_request_error", "", "unsupported_media_type"};
    }
    return ApiError{400, "the request body could not be read (truncated or corrupt)",
                    "invalid_request_error", "", ""};
  }

  void Generate(ApiKind kind, const httplib::Request& q, httplib::Response& r,
                const httplib::ContentReader& read) {
    if (auto e = Unauthorized(q)) {
      (void)ReadBody(q, r, read, nullptr);  // read past it: the connection stays usable
      return Fail(r, *e);
    }
    std::string body;
    if (auto e = ReadBody(q, r, read, &body)) return Fail(r, *e);
    RouterBackend* b = service_->backend();
    if (b == nullptr) {
      return RespondError(r, ErrorForStatus(UnavailableError("the router is loading")));
    }
    ProtocolLimits limits;
    limits.model = b->meta.name;
    limits.chat_max_tokens = options_.chat_max_tokens;
    limits.bounds = options_.limits;
    ApiError error;
    auto parsed = ParseRequest(kind, body, limits, &error);
    if (!parsed) return Fail(r, error);
    ResponderContext ctx = ctx_;
    ctx.model = b->meta.name;
    Respond(ctx, std::move(*parsed), q, r);
  }

  void Models(const httplib::Request& q, httplib::Response& r) {
    if (auto e = Unauthorized(q)) return Fail(r, *e);
    RouterBackend* b = service_->backend();
    if (b == nullptr)
      return RespondError(r, ErrorForStatus(UnavailableError("the router is loading")));
    const nlohmann::json card = ModelCard(b->meta.name, started_, b->meta.max_context_tokens);
    if (q.matches.size() > 1) {
      if (q.matches[1] != b->meta.name) {
        return Fail(r,
                    ApiError{404, fmt::format("The model '{}' does not exist", q.matches[1].str()),
                             "invalid_request_error", "model", "model_not_found"});
      }
      return r.set_content(Dump(card), "application/json");
    }
    r.set_content(Dump({{"object", "list"}, {"data", nlohmann::json::array({card})}}),
                  "application/json");
  }

  void Health(httplib::Response& r) {
    RouterBackend* b = service_->backend();
    std::string state = "ok";
    if (b == nullptr) {
      state = "loading";
    } else if (service_->draining() || stopping_.load()) {
      state = "draining";
    } else if (b->pool->num_prefill() == 0 || b->pool->num_decode() == 0) {
      state = "no prefill or decode worker in rotation";
    }
    r.status = state == "ok" ? 200 : 503;
    r.set_content(Dump({{"status", state}}), "application/json");
  }

  const HttpOptions options_;
  RouterService* service_;
  Metrics* metrics_;
  ResponderContext ctx_;
  std::atomic<bool> stopping_{false};
  std::atomic<int32_t> open_responses_{0};
  const int64_t started_ = std::chrono::duration_cast<std::chrono::seconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
};

StatusOr<std::unique_ptr<HttpFrontend>> HttpFrontend::Start(const HttpOptions& options,
                                                            RouterService* service,
                                                            Metrics* metrics) {
  std::unique_ptr<HttpFrontend> f(new HttpFrontend());
  f->handlers_ = std::make_unique<Handlers>(options, service, metrics);
  HttpServerOptions so;
  so.host = options.host;
  so.port = options.port;
  so.max_threads = std::max(4, options.threads);
  so.max_connections = std::max(1, options.max_connections);
  so.max_connections_per_address = std::max(0, options.max_connections_per_address);
  so.header_timeout = options.header_timeout;
  so.body_timeout = options.body_timeout;
  so.max_body_bytes = static_cast<uint64_t>(std::max<int64_t>(0, options.limits.max_body_bytes));
  so.waits_for_body = [](const RequestHead& h) {
    return BodyIsRead(h.method, h.path, h.content_length, h.transfer_encoding, h.content_encoding);
  };
  so.tls_cert_file = options.tls_cert_file;
  so.tls_key_file = options.tls_key_file;
  f->server_ = std::make_unique<HttpServer>(so, metrics);
  HttpServer& s = *f->server_;
  // Content-Length bodies over the bound are refused before reading; other framings are
  // bounded as they are read (Handlers::ReadBody).
  s.set_payload_max_length(static_cast<size_t>(options.limits.max_body_bytes));
  f->handlers_->Install(s);
  TANDEM_RETURN_IF_ERROR(s.Start());
  f->address_ = fmt::format("{}:{}", options.host, s.port());
  TLOG_INFO(
      "router: OpenAI-compatible HTTP API on {}://{} ({} connections, {} threads at most, "
      "headers within {} ms, {})",
      so.tls_cert_file.empty() ? "http" : "https", f->address_, so.max_connections, so.max_threads,
      so.header_timeout.count(), options.api_keys.empty() ? "no API key" : "API key required");
  return f;
}

HttpFrontend::~HttpFrontend() { Stop(); }

void HttpFrontend::Stop(std::chrono::milliseconds grace) {
  if (!server_) return;
  const auto until = std::chrono::steady_clock::now() + grace;
  while (handlers_->open_responses() > 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (handlers_->open_responses() > 0) {
    TLOG_WARN("http: stopping with {} responses still open; they end with an error event",
              handlers_->open_responses());
  }
  handlers_->StopResponses();
  server_->Stop();
  server_.reset();
}

}  // namespace tandem::http

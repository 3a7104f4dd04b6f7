// RequestLimits: the bounds on what one client request may ask of the router, in one place.
// tandem-router sets them from its flags (--max-stop-strings, …; README "Request limits");
// both front ends check them before any tokenization: gRPC Generate (RouterService) and the
// HTTP API (HttpFrontend, which also bounds the body and the choices per request). An exceeded
// bound is INVALID_ARGUMENT (HTTP 400; 413 for the body) whose message starts with the field.
//
// Thread safety: plain value type.
#pragma once

#include <cstdint>

namespace tandem {

struct RequestLimits {
  // Stop strings per request (stopping.stop / "stop"). Default: 16.
  int32_t max_stop_strings = 16;
  // Bytes of one stop string. Default: 256.
  int32_t max_stop_string_bytes = 256;
  // Stop token ids per request (stopping.stop_token_ids). Default: 64.
  int32_t max_stop_token_ids = 64;
  // Bytes of one prompt before tokenization: the text, or a chat's roles and contents
  // together; also the text of a Tokenize call. Default: 1 MiB.
  int64_t max_prompt_bytes = int64_t{1} << 20;
  // Bytes of a client's request_id (printable ASCII only). Default: 128.
  int32_t max_request_id_bytes = 128;
  // HTTP: Generate calls one request may start (prompts × n). Default: 128.
  int32_t max_choices = 128;
  // HTTP: bytes of a request body, counted after any Content-Encoding is undone, with or
  // without Content-Length (chunked bodies included). Default: 16 MiB.
  int64_t max_body_bytes = int64_t{16} << 20;
};

}  // namespace tandem

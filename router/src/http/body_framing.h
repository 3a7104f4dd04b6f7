// Body framing: where a buffered HTTP/1.1 request's body ends, decided from its head the way
// cpp-httplib (0.11) will read it, so that the HTTP reactor (http_server.h) can wait for the
// whole body without a thread before a worker runs the request.
//
// Contract: early, never late. The reactor only waits for bytes that cpp-httplib reads as this
// request's body; whatever these functions cannot vouch for (an unusual or invalid framing, a
// body over the bound, a head cpp-httplib refuses) is kDispatch: the request goes to a worker at
// once and the existing code answers it (400, 413) or reads the body itself, as before.
//
//   - Only POST, PUT, PATCH, DELETE and PRI have a body (cpp-httplib reads none for others).
//   - "Transfer-Encoding: chunked" (the first Transfer-Encoding header, any case): chunked.
//     Another Transfer-Encoding: kDispatch.
//   - Else "Content-Length: <digits>" (the first one): that many bytes; 0 = no body; not all
//     digits: kDispatch; more than max_body_bytes: kDispatch with too_large set (the reactor
//     answers 413 itself unless a handler answers such a request unread).
//   - Else no framing (cpp-httplib reads until the client closes): kDispatch.
//
// Thread safety: plain functions and a value type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem::http {

enum class BodyKind {
  kNone,      // no body: the request is complete with its head
  kLength,    // Content-Length bytes follow the head
  kChunked,   // a chunked body follows the head (ChunkedBodyScanner finds its end)
  kDispatch,  // not for the reactor to wait for: a worker reads (or refuses) it
};

struct RequestHead {
  BodyKind body = BodyKind::kNone;
  uint64_t length = 0;           // kLength, or too_large: the body's bytes
  bool expect_continue = false;  // "Expect: 100-continue" (cpp-httplib answers 100 Continue)
  // What a handler may decide on before it reads the body (HttpServerOptions::waits_for_body).
  std::string method;
  std::string path;                // the request target up to any '?', as sent (not URL-decoded)
  bool content_length = false;     // has a (non-empty) Content-Length header
  bool transfer_encoding = false;  // has a Transfer-Encoding header
  bool content_encoding = false;   // has a Content-Encoding header
  bool too_large = false;          // a Content-Length (no Transfer-Encoding) over max_body_bytes
};

// Reads the framing from `head`: the request line and headers up to and including the blank
// line ("\r\n\r\n"). A body over `max_body_bytes` is kDispatch.
RequestHead ParseRequestHead(std::string_view head, uint64_t max_body_bytes);

// Removes every Expect header line from the head `(*buf)[0, head_end)`: the reactor has sent
// 100 Continue, and cpp-httplib would send it again. Returns the bytes removed.
size_t RemoveExpectHeaders(std::string* buf, size_t head_end);

// Finds the end of a chunked body as it arrives: chunk-size lines (hex, extensions ignored),
// chunk data, the CRLF after each, then the 0-size chunk and an empty line ("\r\n"), as
// cpp-httplib 0.11 reads them. Chunk data over max_body_bytes in all, or a framing cpp-httplib
// would stop at or refuse (a trailer field included: 0.11 takes none), is kDispatch.
class ChunkedBodyScanner {
 public:
  enum class Result { kNeedMore, kComplete, kDispatch };

  explicit ChunkedBodyScanner(uint64_t max_body_bytes = 0) : max_(max_body_bytes) {}

  // Scans `body` (the bytes after the head; each call passes the previous bytes again with
  // more appended) from where the previous call stopped. After kComplete, end() is the body's
  // size in bytes; kComplete and kDispatch are final.
  Result Scan(std::string_view body);
  size_t end() const { return pos_; }

 private:
  enum class State { kSize, kData, kDataEnd, kTrailer, kDone, kFailed };

  uint64_t max_;
  State state_ = State::kSize;
  size_t pos_ = 0;      // bytes scanned
  uint64_t left_ = 0;   // kData: chunk bytes still to come
  uint64_t total_ = 0;  // chunk data bytes so far
};

}  // namespace tandem::http

// The HTTP reactor's body framing (router/src/http/body_framing.{h,cc}): request heads parsed
// for their framing, Expect headers removed, and chunked bodies scanned as they arrive. Besides
// crashes and sanitizer reports it checks what the reactor relies on: a chunked body scanned in
// pieces ends where one scan of all of it ends (same result, same end), an end lies within the
// bytes scanned, a Content-Length body is never longer than the bound, and removing Expect
// headers removes exactly the bytes it says and leaves the head's blank line.
// Input: one byte choosing the bound and the piece size, then the request bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "body_framing.h"

using tandem::http::BodyKind;
using tandem::http::ChunkedBodyScanner;
using tandem::http::ParseRequestHead;
using tandem::http::RemoveExpectHeaders;

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

ChunkedBodyScanner::Result ScanInPieces(std::string_view body, uint64_t max, size_t piece,
                                        size_t* end) {
  ChunkedBodyScanner s(max);
  ChunkedBodyScanner::Result r = ChunkedBodyScanner::Result::kNeedMore;
  for (size_t n = piece; r == ChunkedBodyScanner::Result::kNeedMore; n += piece) {
    r = s.Scan(body.substr(0, std::min(n, body.size())));
    if (n >= body.size()) break;
  }
  *end = s.end();
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint64_t bounds[] = {0, 16, 1024, uint64_t{1} << 40};
  const uint64_t max = bounds[data[0] & 3];
  const size_t piece = 1 + (data[0] >> 2);
  const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  const size_t end = in.find("\r\n\r\n");
  if (end == std::string_view::npos) return 0;
  const std::string_view head = in.substr(0, end + 4);
  const std::string_view body = in.substr(end + 4);

  const auto h = ParseRequestHead(head, max);
  if (h.body == BodyKind::kLength) Check(h.length <= max && !h.too_large);
  if (h.too_large) Check(h.body == BodyKind::kDispatch && h.length > max);

  std::string copy(in);
  const size_t removed = RemoveExpectHeaders(&copy, end + 4);
  Check(copy.size() == in.size() - removed);
  Check(std::string_view(copy).substr(0, end + 4 - removed).ends_with("\r\n\r\n"));

  if (h.body == BodyKind::kChunked) {
    ChunkedBodyScanner whole(max);
    const auto r1 = whole.Scan(body);
    size_t end2 = 0;
    const auto r2 = ScanInPieces(body, max, piece, &end2);
    Check(r1 == r2);
    if (r1 == ChunkedBodyScanner::Result::kComplete) {
      Check(whole.end() == end2);
      Check(whole.end() <= body.size());
    }
  }
  return 0;
}

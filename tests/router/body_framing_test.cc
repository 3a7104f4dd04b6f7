// Body framing (router/src/http/body_framing.h): the framing read from a request head as
// cpp-httplib reads it, and the end of a chunked body found as its bytes arrive; whatever the
// reactor cannot vouch for is kDispatch (a worker reads or refuses it).
#include "../../router/src/http/body_framing.h"

#include <string>

#include <gtest/gtest.h>

namespace tandem::http {
namespace {

using Result = ChunkedBodyScanner::Result;

RequestHead Head(const std::string& method, const std::string& headers, uint64_t max = 1000) {
  return ParseRequestHead(method + " /x HTTP/1.1\r\nHost: t\r\n" + headers + "\r\n", max);
}

TEST(BodyFramingTest, ContentLength) {
  RequestHead h = Head("POST", "content-length: 12\r\n");
  EXPECT_EQ(h.body, BodyKind::kLength);
  EXPECT_EQ(h.length, 12u);
  EXPECT_FALSE(h.expect_continue);
  EXPECT_EQ(h.method, "POST");
  EXPECT_EQ(h.path, "/x");
  EXPECT_TRUE(h.content_length);
  EXPECT_FALSE(h.transfer_encoding);
  EXPECT_FALSE(h.content_encoding);
  RequestHead q = ParseRequestHead(
      "PUT /a/b?c=d HTTP/1.1\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
      1000);
  EXPECT_EQ(q.path, "/a/b");
  EXPECT_TRUE(q.transfer_encoding && q.content_encoding && !q.content_length);
  EXPECT_EQ(Head("POST", "Content-Length: 0\r\n").body, BodyKind::kNone);
  EXPECT_EQ(Head("POST", "Content-Length: 1000\r\n").body, BodyKind::kLength);
  // Over the bound: not waited for, and marked too large (the reactor answers 413).
  RequestHead big = Head("POST", "Content-Length: 1001\r\n");
  EXPECT_EQ(big.body, BodyKind::kDispatch);
  EXPECT_TRUE(big.too_large);
  EXPECT_EQ(big.length, 1001u);
  RequestHead huge = Head("POST", "Content-Length: 99999999999999999999999\r\n");
  EXPECT_EQ(huge.body, BodyKind::kDispatch);
  EXPECT_TRUE(huge.too_large);
  EXPECT_EQ(huge.length, UINT64_MAX);
  EXPECT_FALSE(Head("POST", "Content-Length: 0001000\r\n").too_large);
  EXPECT_FALSE(Head("POST", "Content-Length: 1000\r\n").too_large);
  EXPECT_FALSE(Head("GET", "Content-Length: 1001\r\n").too_large);  // no body read
  EXPECT_FALSE(Head("POST", "Transfer-Encoding: chunked\r\nContent-Length: 1001\r\n").too_large);
  // Not a number, several values: a worker refuses it.
  EXPECT_EQ(Head("POST", "Content-Length: 1x\r\n").body, BodyKind::kDispatch);
  EXPECT_EQ(Head("POST", "Content-Length: -1\r\n").body, BodyKind::kDispatch);
  EXPECT_EQ(Head("POST", "Content-Length: 1,1\r\n").body, BodyKind::kDispatch);
  EXPECT_FALSE(Head("POST", "Content-Length: 1,1\r\n").too_large);
  // The first Content-Length counts, as in cpp-httplib.
  EXPECT_EQ(Head("PUT", "Content-Length: 3\r\nContent-Length: 5\r\n").length, 3u);
}

TEST(BodyFramingTest, MethodsWithoutABodyAndUnframedBodies) {
  EXPECT_EQ(Head("GET", "Content-Length: 12\r\n").body, BodyKind::kNone);
  EXPECT_EQ(Head("HEAD", "Transfer-Encoding: chunked\r\n").body, BodyKind::kNone);
  EXPECT_EQ(Head("POST", "").body, BodyKind::kDispatch);  // read until the client closes
  for (const char* m : {"PUT", "PATCH", "DELETE", "PRI"}) {
    EXPECT_EQ(Head(m, "Content-Length: 1\r\n").body, BodyKind::kLength) << m;
  }
}

TEST(BodyFramingTest, ChunkedAndOtherTransferEncodings) {
  EXPECT_EQ(Head("POST", "Transfer-Encoding: Chunked \r\nContent-Length: 5\r\n").body,
            BodyKind::kChunked);
  EXPECT_EQ(Head("POST", "Transfer-Encoding: gzip, chunked\r\n").body, BodyKind::kDispatch);
  // cpp-httplib URL-decodes header values: one with '%' is not for the reactor.
  EXPECT_EQ(Head("POST", "Transfer-Encoding: %63hunked\r\n").body, BodyKind::kDispatch);
}

TEST(BodyFramingTest, HeadsCppHttplibReadsOtherwiseAreDispatched) {
  EXPECT_EQ(Head("POST", "Content-Length: 5\r\nBad\nLine: x\r\n").body, BodyKind::kDispatch);
  EXPECT_EQ(Head("POST", "Content-Length: 5\r\nNoColon\r\n").body, BodyKind::kDispatch);
  EXPECT_EQ(Head("POST", "Content-Length: 5\r\nX: " + std::string(9000, 'a') + "\r\n").body,
            BodyKind::kDispatch);
}

TEST(BodyFramingTest, ExpectContinueAndItsRemoval) {
  EXPECT_TRUE(Head("POST", "Expect: 100-continue\r\nContent-Length: 5\r\n").expect_continue);
  EXPECT_FALSE(Head("POST", "Expect: something\r\nContent-Length: 5\r\n").expect_continue);
  std::string buf =
      "POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\nexpect: x\r\n\r\nhello";
  const size_t head_end = buf.find("\r\n\r\n") + 4;
  const size_t removed = RemoveExpectHeaders(&buf, head_end);
  EXPECT_EQ(buf, "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
  EXPECT_EQ(removed, head_end - (buf.size() - 5));
  EXPECT_EQ(RemoveExpectHeaders(&buf, buf.size() - 5), 0u);
}

TEST(BodyFramingTest, ChunkedBodyEndFoundByteByByte) {
  const std::string body =
      "5\r\nhello\r\n1A;ext=1\r\n" + std::string(26, 'z') + "\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
  const size_t end = body.find("GET");
  ChunkedBodyScanner s(1000);
  for (size_t n = 0; n < end; ++n) {
    ASSERT_EQ(s.Scan(std::string_view(body).substr(0, n)), Result::kNeedMore) << n;
  }
  EXPECT_EQ(s.Scan(body), Result::kComplete);
  EXPECT_EQ(s.end(), end);
  EXPECT_EQ(s.Scan(body), Result::kComplete);  // final
}

TEST(BodyFramingTest, ChunkedBodyAtOnceWithoutTrailer) {
  ChunkedBodyScanner s(1000);
  EXPECT_EQ(s.Scan("3\r\nabc\r\n0\r\n\r\n"), Result::kComplete);
  EXPECT_EQ(s.end(), 13u);
}

TEST(BodyFramingTest, ChunkedFramingCppHttplibStopsAtIsDispatched) {
  for (const std::string bad : {"\r\n", "x\r\n", " 5\r\nhello\r\n", "0x5\r\nhello\r\n",
                                "3\r\nabcX\r\n", "3\r\nabc\n", "ffffffffffffffff\r\n",
                                // A trailer field: cpp-httplib 0.11 refuses it (400).
                                "0\r\nX-Trailer: 1\r\n\r\n"}) {
    ChunkedBodyScanner s(1000);
    EXPECT_EQ(s.Scan(bad), Result::kDispatch) << bad;
  }
  // Chunk data over the bound in all.
  ChunkedBodyScanner s(10);
  EXPECT_EQ(s.Scan("6\r\nabcdef\r\n"), Result::kNeedMore);
  EXPECT_EQ(s.Scan("6\r\nabcdef\r\n5\r\n"), Result::kDispatch);
  // A chunk-size line that never ends.
  ChunkedBodyScanner t(1000);
  EXPECT_EQ(t.Scan(std::string(9000, '1')), Result::kDispatch);
}

}  // namespace
}  // namespace tandem::http

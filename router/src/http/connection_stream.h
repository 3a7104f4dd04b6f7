// ConnectionStream: cpp-httplib's Stream over one non-blocking socket, starting with bytes the
// server read before (the request's headers), and keeping what it reads past the request
// (a pipelined next request) for the server to take back.
//
// Reads and writes wait at most the read / write timeout for the socket to be ready; -1 then.
// With an SSL object (its handshake done), bytes go through SSL_read / SSL_write instead.
//
// Thread safety: used by one thread at a time.
#pragma once

#include <chrono>
#include <string>

#include <httplib.h>
#include <openssl/ssl.h>

namespace tandem::http {

class ConnectionStream : public httplib::Stream {
 public:
  // `fd` (and `ssl`, null for plain TCP) stay owned by the caller. `buffered` is read before
  // the socket.
  ConnectionStream(int fd, SSL* ssl, std::string buffered, std::chrono::milliseconds read_timeout,
                   std::chrono::milliseconds write_timeout);

  bool is_readable() const override;
  bool is_writable() const override;
  ssize_t read(char* ptr, size_t size) override;
  ssize_t write(const char* ptr, size_t size) override;
  void get_remote_ip_and_port(std::string& ip, int& port) const override;
  void get_local_ip_and_port(std::string& ip, int& port) const override;
  int socket() const override { return fd_; }

  // Bytes read from the socket and not yet consumed.
  std::string TakeBuffered();

 private:
  // One SSL_read / SSL_write step: bytes moved, or -1 after an error or a timeout waiting for
  // the socket.
  ssize_t SslIo(bool write, char* ptr, size_t size);

  const int fd_;
  SSL* const ssl_;
  std::string buf_;
  size_t pos_ = 0;
  const std::chrono::milliseconds read_timeout_;
  const std::chrono::milliseconds write_timeout_;
};

}  // namespace tandem::http

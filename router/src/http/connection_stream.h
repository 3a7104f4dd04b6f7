// ConnectionStream: cpp-httplib's Stream over one non-blocking socket, starting with bytes the
// server read before (the request's headers), and keeping what it reads past the request
// (a pipelined next request) for the server to take back.
//
// Reads and writes wait at most the read / write timeout for the socket to be ready; -1 then.
//
// Thread safety: used by one thread at a time.
#pragma once

#include <chrono>
#include <string>

#include <httplib.h>

namespace tandem::http {

class ConnectionStream : public httplib::Stream {
 public:
  // `fd` stays owned by the caller. `buffered` is read before the socket.
  ConnectionStream(int fd, std::string buffered, std::chrono::milliseconds read_timeout,
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
  const int fd_;
  std::string buf_;
  size_t pos_ = 0;
  const std::chrono::milliseconds read_timeout_;
  const std::chrono::milliseconds write_timeout_;
};

}  // namespace tandem::http

// Raw loopback client sockets for the HTTP server tests (http_server_test.cc,
// https_server_test.cc): connect (optionally from another loopback source address), send, read
// until the server closes or until a marker, and poll for a condition. Every blocking call ends
// within kGuard, which only bounds a hang.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace tandem::testing_http {

inline constexpr auto kGuard = std::chrono::seconds(120);

// Polls `done` until true; false after kGuard.
inline bool WaitUntil(const std::function<bool()>& done) {
  const auto until = std::chrono::steady_clock::now() + kGuard;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// A connection to 127.0.0.1:`port`, from `source` when given (another loopback address is
// another client to the server).
inline int Connect(int port, const char* source = nullptr) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (source != nullptr) {
    sockaddr_in s{};
    s.sin_family = AF_INET;
    EXPECT_EQ(inet_pton(AF_INET, source, &s.sin_addr), 1);
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&s), sizeof(s)), 0) << std::strerror(errno);
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{static_cast<time_t>(kGuard.count()), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  return fd;
}

inline void Send(int fd, const std::string& s) {
  ASSERT_EQ(send(fd, s.data(), s.size(), MSG_NOSIGNAL), static_cast<ssize_t>(s.size()));
}

// Everything the server sends until it closes (or the guard's receive timeout).
inline std::string ReadToEnd(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

// Reads until `out` holds `count` occurrences of `marker`.
inline std::string ReadUntil(int fd, const std::string& marker, int count = 1) {
  std::string out;
  char buf[4096];
  auto seen = [&] {
    int n = 0;
    for (size_t p = out.find(marker); p != std::string::npos; p = out.find(marker, p + 1)) ++n;
    return n;
  };
  while (seen() < count) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

inline std::string Get(const std::string& path) {
  return "GET " + path + " HTTP/1.1\r\nHost: t\r\n\r\n";
}

}  // namespace tandem::testing_http

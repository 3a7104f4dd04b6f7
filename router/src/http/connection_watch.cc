#include "connection_watch.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
#include <string>

namespace tandem::http {
namespace {

// Port of a socket address (IPv4 or IPv6), -1 for other families.
int PortOf(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return -1;
}

std::string AddressOf(const sockaddr_storage& a) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (a.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(a).sin_addr, buf, sizeof(buf));
  } else if (a.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(a).sin6_addr, buf, sizeof(buf));
  }
  return buf;
}

bool Matches(int fd, int local_port, int remote_port, const std::string& remote_addr) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return false;
  sockaddr_storage local{}, remote{};
  socklen_t n = sizeof(local);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &n) != 0) return false;
  if (PortOf(local) != local_port) return false;
  n = sizeof(remote);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&remote), &n) != 0) return false;
  if (PortOf(remote) != remote_port) return false;
  return remote_addr.empty() || AddressOf(remote) == remote_addr;
}

thread_local int serving_socket = -1;

}  // namespace

ServingSocket::ServingSocket(int fd) : previous_(serving_socket) { serving_socket = fd; }
ServingSocket::~ServingSocket() { serving_socket = previous_; }
int ServingSocket::Current() { return serving_socket; }

ConnectionWatch::ConnectionWatch(const std::string& local_addr, int local_port,
                                 const std::string& remote_addr, int remote_port) {
  (void)local_addr;  // the local port is the HTTP server's; the peer's address and port decide
  if (local_port <= 0 || remote_port <= 0) return;
  if (const int fd = ServingSocket::Current();
      fd >= 0 && Matches(fd, local_port, remote_port, remote_addr)) {
    fd_ = fd;
    return;
  }
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return;
  const int self = dirfd(dir);
  while (dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == self) continue;
    if (Matches(static_cast<int>(fd), local_port, remote_port, remote_addr)) {
      fd_ = static_cast<int>(fd);
      break;
    }
  }
  closedir(dir);
}

bool ConnectionWatch::PeerClosed() const {
  if (fd_ < 0) return false;
  pollfd p{fd_, POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

}  // namespace tandem::http

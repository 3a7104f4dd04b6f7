// FakeNcclApi (see nccl_api.h): two ranks joined by a Unix socket, one thread that writes the
// sends and one that reads into the posted receives, in issue order, each message framed with
// its size. Ends the way NCCL does: a peer that is gone or a size mismatch becomes the
// communicator's async error, and CommAbort ends everything queued.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>

#include "tandem/kvtransfer/nccl_api.h"

namespace tandem {
namespace {

constexpr char kMagic[8] = {'T', 'F', 'N', 'C', 'C', 'L', '1', '\0'};

// Operations queued on a stream and not finished yet.
struct FakeStream {
  std::atomic<int64_t> pending{0};
};

struct Op {
  const std::byte* send_buf = nullptr;
  std::byte* recv_buf = nullptr;
  size_t bytes = 0;
  FakeStream* stream = nullptr;
};

// Listeners made by GetUniqueId in this process, by socket name, until rank 0 joins.
std::mutex g_ids_mu;
std::unordered_map<std::string, int>& Listeners() {
  static auto* m = new std::unordered_map<std::string, int>();
  return *m;
}

// The longest socket name: an abstract address is a NUL, then the name, within sun_path.
constexpr size_t kMaxName = sizeof(sockaddr_un::sun_path) - 1;

// `name` must be at most kMaxName bytes.
sockaddr_un Address(const std::string& name, socklen_t* len) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  // Abstract namespace: a leading NUL, nothing on disk.
  std::memcpy(a.sun_path + 1, name.data(), name.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return a;
}

class FakeComm {
 public:
  FakeComm(std::string name, int rank) : name_(std::move(name)), rank_(rank) {
    sender_ = std::thread([this] { SendLoop(); });
  }
  ~FakeComm() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      aborted_ = true;
      if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
    }
    cv_.notify_all();
    if (sender_.joinable()) sender_.join();
    if (receiver_.joinable()) receiver_.join();
    std::lock_guard<std::mutex> lock(mu_);
    FailQueuedLocked();
    if (fd_ >= 0) ::close(fd_);
  }

  int state() {
    std::lock_guard<std::mutex> lock(mu_);
    return state_;
  }

  int Post(Op op, bool send) {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ != kNcclSuccess && state_ != kNcclInProgress) return state_;
    ++op.stream->pending;
    (send ? sends_ : recvs_).push_back(op);
    cv_.notify_all();
    return kNcclSuccess;
  }

 private:
  // Joins the peer (rank 0 accepts on the id's listener, rank 1 connects), then writes sends.
  void SendLoop() {
    const int fd = rank_ == 0 ? Accept() : Connect();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (fd < 0 || aborted_) {
        if (fd >= 0) ::close(fd);
        if (state_ == kNcclInProgress) state_ = kNcclSystemError;
        FailQueuedLocked();
        return;
      }
      fd_ = fd;
      state_ = kNcclSuccess;
      receiver_ = std::thread([this] { RecvLoop(); });
    }
    while (true) {
      Op op;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return aborted_ || state_ != kNcclSuccess || !sends_.empty(); });
        if (aborted_ || state_ != kNcclSuccess) return;
        op = sends_.front();
      }
      const uint64_t size = op.bytes;
      const bool ok =
          WriteAll(&size, sizeof(size)) && (op.bytes == 0 || WriteAll(op.send_buf, op.bytes));
      std::lock_guard<std::mutex> lock(mu_);
      if (!ok) {
        Fail(kNcclRemoteError);
        return;
      }
      if (!sends_.empty()) {  // else FailQueuedLocked already counted it
        sends_.pop_front();
        --op.stream->pending;
      }
    }
  }

  void RecvLoop() {
    while (true) {
      Op op;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return aborted_ || state_ != kNcclSuccess || !recvs_.empty(); });
        if (aborted_ || state_ != kNcclSuccess) return;
        op = recvs_.front();
      }
      uint64_t size = 0;
      int err = kNcclSuccess;
      if (!ReadAll(&size, sizeof(size))) {
        err = kNcclRemoteError;
      } else if (size != op.bytes) {
        err = kNcclInvalidUsage;  // a receive matched a send of another size
      } else if (op.bytes > 0 && !ReadAll(op.recv_buf, op.bytes)) {
        err = kNcclRemoteError;
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (err != kNcclSuccess) {
        Fail(err);
        return;
      }
      if (!recvs_.empty()) {
        recvs_.pop_front();
        --op.stream->pending;
      }
    }
  }

  // mu_ held: the communicator failed; queued operations end (their buffers are not touched).
  void Fail(int err) {
    if (state_ == kNcclSuccess || state_ == kNcclInProgress) state_ = err;
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
    FailQueuedLocked();
    cv_.notify_all();
  }
  void FailQueuedLocked() {
    for (auto* q : {&sends_, &recvs_}) {
      for (const Op& op : *q) --op.stream->pending;
      q->clear();
    }
  }

  bool Stopped() {
    std::lock_guard<std::mutex> lock(mu_);
    return aborted_;
  }

  int Accept() {
    int listener = -1;
    {
      std::lock_guard<std::mutex> lock(g_ids_mu);
      auto it = Listeners().find(name_);
      if (it == Listeners().end()) return -1;  // the id was made in another process
      listener = it->second;
      Listeners().erase(it);
    }
    int fd = -1;
    while (fd < 0 && !Stopped()) {
      pollfd p{listener, POLLIN, 0};
      if (::poll(&p, 1, 20) == 1) fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    }
    ::close(listener);
    return fd;
  }

  int Connect() {
    socklen_t len = 0;
    const sockaddr_un a = Address(name_, &len);
    while (!Stopped()) {
      const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) return -1;
      if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), len) == 0) return fd;
      ::close(fd);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

  bool WriteAll(const void* data, size_t n) {
    const auto* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::send(fd_, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
  bool ReadAll(void* data, size_t n) {
    auto* p = static_cast<char*>(data);
    while (n > 0) {
      const ssize_t r = ::recv(fd_, p, n, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }

  const std::string name_;
  const int rank_;
  std::mutex mu_;
  std::condition_variable cv_;
  int state_ = kNcclInProgress;
  bool aborted_ = false;
  int fd_ = -1;  // set once joined; read by the I/O threads without the lock after that
  std::deque<Op> sends_;
  std::deque<Op> recvs_;
  std::thread sender_;
  std::thread receiver_;
};

int GetUniqueId(NcclUniqueId* id) {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  const std::string name = "tandem-fake-nccl-" + std::to_string(::getpid()) + "-" +
                           std::to_string(counter++) + "-" + std::to_string(rd());
  socklen_t len = 0;
  const sockaddr_un a = Address(name, &len);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return kNcclSystemError;
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&a), len) != 0 || ::listen(fd, 1) != 0) {
    ::close(fd);
    return kNcclSystemError;
  }
  {
    std::lock_guard<std::mutex> lock(g_ids_mu);
    Listeners()[name] = fd;
  }
  *id = NcclUniqueId{};
  std::memcpy(id->bytes, kMagic, sizeof(kMagic));
  std::memcpy(id->bytes + sizeof(kMagic), name.data(), name.size());
  return kNcclSuccess;
}

int CommInitRank(NcclApi::Comm* comm, int nranks, const NcclUniqueId& id, int rank) {
  if (nranks != 2 || (rank != 0 && rank != 1)) return kNcclInvalidArgument;
  if (std::memcmp(id.bytes, kMagic, sizeof(kMagic)) != 0) return kNcclInvalidArgument;
  const char* name = id.bytes + sizeof(kMagic);
  const size_t n = strnlen(name, sizeof(id.bytes) - sizeof(kMagic));
  // The id comes from the peer (kNcclInit): a name longer than a socket address holds is
  // refused here, before Connect() would copy it into one.
  if (n == 0 || n > kMaxName) return kNcclInvalidArgument;
  *comm = new FakeComm(std::string(name, n), rank);
  return kNcclInProgress;
}

int CommGetAsyncError(NcclApi::Comm comm, int* err) {
  *err = static_cast<FakeComm*>(comm)->state();
  return kNcclSuccess;
}

int CommAbort(NcclApi::Comm comm) {
  delete static_cast<FakeComm*>(comm);
  return kNcclSuccess;
}

int GroupNoop() { return kNcclSuccess; }

int Send(const void* buf, size_t bytes, int peer, NcclApi::Comm comm, NcclApi::Stream stream) {
  if (peer != 0 && peer != 1) return kNcclInvalidArgument;
  Op op;
  op.send_buf = static_cast<const std::byte*>(buf);
  op.bytes = bytes;
  op.stream = static_cast<FakeStream*>(stream);
  return static_cast<FakeComm*>(comm)->Post(op, /*send=*/true);
}

int Recv(void* buf, size_t bytes, int peer, NcclApi::Comm comm, NcclApi::Stream stream) {
  if (peer != 0 && peer != 1) return kNcclInvalidArgument;
  Op op;
  op.recv_buf = static_cast<std::byte*>(buf);
  op.bytes = bytes;
  op.stream = static_cast<FakeStream*>(stream);
  return static_cast<FakeComm*>(comm)->Post(op, /*send=*/false);
}

int StreamCreate(NcclApi::Stream* stream) {
  *stream = new FakeStream();
  return kNcclSuccess;
}
int StreamQuery(NcclApi::Stream stream) {
  return static_cast<FakeStream*>(stream)->pending.load() == 0 ? kNcclSuccess : kNcclInProgress;
}
int StreamDestroy(NcclApi::Stream stream) {
  delete static_cast<FakeStream*>(stream);
  return kNcclSuccess;
}

int MemAlloc(void** ptr, size_t bytes) {
  *ptr = std::malloc(bytes == 0 ? 1 : bytes);
  return *ptr ? kNcclSuccess : kNcclSystemError;
}
int MemFree(void* ptr) {
  std::free(ptr);
  return kNcclSuccess;
}
int MemCopy(void* dst, const void* src, size_t bytes) {
  std::memcpy(dst, src, bytes);
  return kNcclSuccess;
}

const char* ErrorString(int result) {
  switch (result) {
    case kNcclSuccess:
      return "no error";
    case kNcclSystemError:
      return "unhandled system error (fake: socket)";
    case kNcclInvalidArgument:
      return "invalid argument";
    case kNcclInvalidUsage:
      return "invalid usage (fake: a receive matched a send of another size)";
    case kNcclRemoteError:
      return "remote process exited or there was a network error";
    case kNcclInProgress:
      return "NCCL operation in progress";
    default:
      return "unknown result";
  }
}

}  // namespace

const NcclApi& FakeNcclApi() {
  static const NcclApi api = {"fake",    GetUniqueId,  CommInitRank, CommGetAsyncError,
                              CommAbort, GroupNoop,    GroupNoop,    Send,
                              Recv,      StreamCreate, StreamQuery,  StreamDestroy,
                              MemAlloc,  MemFree,      MemCopy,      ErrorString};
  return api;
}

}  // namespace tandem

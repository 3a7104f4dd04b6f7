// LoadNcclLibrary (see nccl_api.h): libnccl.so.2 and the CUDA runtime through dlopen, so the
// data plane needs neither at link time. Communicators are non-blocking (config.blocking = 0):
// every call returns at once and the data plane polls, with its own deadlines.
#include <dlfcn.h>

#include <cstring>
#include <mutex>

#include "tandem/kvtransfer/nccl_api.h"

#if defined(TANDEM_HAVE_NCCL_H)
#include <nccl.h>
#endif

namespace tandem {

StatusOr<const NcclApi*> NcclApiFromFlag(const std::string& flag) {
  if (flag == "fake") return &FakeNcclApi();
  return LoadNcclLibrary(flag);
}

#if !defined(TANDEM_HAVE_NCCL_H)

StatusOr<const NcclApi*> LoadNcclLibrary(const std::string&) {
  return UnimplementedError(
      "this build had no nccl.h: the nccl KV transport can only use the fake");
}

#else

namespace {

// The symbols, resolved once.
struct Symbols {
  decltype(&ncclGetUniqueId) get_unique_id;
  decltype(&ncclCommInitRankConfig) init_rank_config;
  decltype(&ncclCommGetAsyncError) get_async_error;
  decltype(&ncclCommAbort) abort;
  decltype(&ncclGroupStart) group_start;
  decltype(&ncclGroupEnd) group_end;
  decltype(&ncclSend) send;
  decltype(&ncclRecv) recv;
  decltype(&ncclGetErrorString) error_string;
  decltype(&ncclGetVersion) get_version;
  // CUDA runtime (cudaStream_t is a pointer; cudaError_t an int; cudaSuccess 0, NotReady 600).
  int (*stream_create)(void** stream, unsigned int flags);
  int (*stream_query)(void* stream);
  int (*stream_destroy)(void* stream);
  int (*malloc)(void** ptr, size_t bytes);
  int (*free)(void* ptr);
  int (*memcpy)(void* dst, const void* src, size_t bytes, int kind);
};
Symbols g;

constexpr int kCudaSuccess = 0;
constexpr int kCudaErrorNotReady = 600;
constexpr unsigned int kCudaStreamNonBlocking = 1;

int Cuda(int e) { return e == kCudaSuccess ? kNcclSuccess : kNcclUnhandledCudaError; }

int GetUniqueId(NcclUniqueId* id) {
  static_assert(sizeof(ncclUniqueId) == sizeof(NcclUniqueId));
  ncclUniqueId u;
  const ncclResult_t r = g.get_unique_id(&u);
  std::memcpy(id->bytes, &u, sizeof(u));
  return r;
}
int CommInitRank(NcclApi::Comm* comm, int nranks, const NcclUniqueId& id, int rank) {
  ncclUniqueId u;
  std::memcpy(&u, id.bytes, sizeof(u));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t c = nullptr;
  const ncclResult_t r = g.init_rank_config(&c, nranks, u, rank, &config);
  *comm = c;
  return r;
}
int CommGetAsyncError(NcclApi::Comm comm, int* err) {
  ncclResult_t e = ncclSuccess;
  const ncclResult_t r = g.get_async_error(static_cast<ncclComm_t>(comm), &e);
  *err = e;
  return r;
}
int CommAbort(NcclApi::Comm comm) { return g.abort(static_cast<ncclComm_t>(comm)); }
int GroupStart() { return g.group_start(); }
int GroupEnd() { return g.group_end(); }
int Send(const void* buf, size_t bytes, int peer, NcclApi::Comm comm, NcclApi::Stream stream) {
  return g.send(buf, bytes, ncclUint8, peer, static_cast<ncclComm_t>(comm),
                static_cast<cudaStream_t>(stream));
}
int Recv(void* buf, size_t bytes, int peer, NcclApi::Comm comm, NcclApi::Stream stream) {
  return g.recv(buf, bytes, ncclUint8, peer, static_cast<ncclComm_t>(comm),
                static_cast<cudaStream_t>(stream));
}
int StreamCreate(NcclApi::Stream* stream) {
  return Cuda(g.stream_create(stream, kCudaStreamNonBlocking));
}
int StreamQuery(NcclApi::Stream stream) {
  const int e = g.stream_query(stream);
  return e == kCudaErrorNotReady ? kNcclInProgress : Cuda(e);
}
int StreamDestroy(NcclApi::Stream stream) { return Cuda(g.stream_destroy(stream)); }
int MemAlloc(void** ptr, size_t bytes) { return Cuda(g.malloc(ptr, bytes == 0 ? 1 : bytes)); }
int MemFree(void* ptr) { return Cuda(g.free(ptr)); }
constexpr int kCudaMemcpyDefault = 4;
int MemCopy(void* dst, const void* src, size_t bytes) {
  return Cuda(g.memcpy(dst, src, bytes, kCudaMemcpyDefault));
}
const char* ErrorString(int r) { return g.error_string(static_cast<ncclResult_t>(r)); }

template <typename T>
bool Resolve(void* lib, const char* name, T* out, std::string* missing) {
  *out = reinterpret_cast<T>(::dlsym(lib, name));
  if (*out == nullptr) *missing += std::string(missing->empty() ? "" : ", ") + name;
  return *out != nullptr;
}

}  // namespace

StatusOr<const NcclApi*> LoadNcclLibrary(const std::string& path) {
  static std::mutex mu;
  static NcclApi* loaded = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  if (loaded != nullptr) return loaded;
  const std::string file = path.empty() ? "libnccl.so.2" : path;
  void* nccl = ::dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (nccl == nullptr) {
    return UnavailableError("cannot load NCCL ({}): {}", file, ::dlerror());
  }
  void* cudart = nullptr;
  for (const char* name : {"libcudart.so.13", "libcudart.so.12", "libcudart.so"}) {
    if ((cudart = ::dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
  }
  if (cudart == nullptr) {
    ::dlclose(nccl);
    return UnavailableError("NCCL needs the CUDA runtime: cannot load libcudart.so.13 or .12: {}",
                            ::dlerror());
  }
  std::string missing;
  Resolve(nccl, "ncclGetUniqueId", &g.get_unique_id, &missing);
  Resolve(nccl, "ncclCommInitRankConfig", &g.init_rank_config, &missing);
  Resolve(nccl, "ncclCommGetAsyncError", &g.get_async_error, &missing);
  Resolve(nccl, "ncclCommAbort", &g.abort, &missing);
  Resolve(nccl, "ncclGroupStart", &g.group_start, &missing);
  Resolve(nccl, "ncclGroupEnd", &g.group_end, &missing);
  Resolve(nccl, "ncclSend", &g.send, &missing);
  Resolve(nccl, "ncclRecv", &g.recv, &missing);
  Resolve(nccl, "ncclGetErrorString", &g.error_string, &missing);
  Resolve(nccl, "ncclGetVersion", &g.get_version, &missing);
  Resolve(cudart, "cudaStreamCreateWithFlags", &g.stream_create, &missing);
  Resolve(cudart, "cudaStreamQuery", &g.stream_query, &missing);
  Resolve(cudart, "cudaStreamDestroy", &g.stream_destroy, &missing);
  Resolve(cudart, "cudaMalloc", &g.malloc, &missing);
  Resolve(cudart, "cudaFree", &g.free, &missing);
  Resolve(cudart, "cudaMemcpy", &g.memcpy, &missing);
  if (!missing.empty()) {
    return UnavailableError("{} or the CUDA runtime lacks: {}", file, missing);
  }
  int version = 0;
  g.get_version(&version);
  static NcclApi api;
  api =
      NcclApi{fmt::format("{} {}.{}.{}", file, version / 10000, version / 100 % 100, version % 100),
              GetUniqueId,
              CommInitRank,
              CommGetAsyncError,
              CommAbort,
              GroupStart,
              GroupEnd,
              Send,
              Recv,
              StreamCreate,
              StreamQuery,
              StreamDestroy,
              MemAlloc,
              MemFree,
              MemCopy,
              ErrorString};
  loaded = &api;
  return loaded;
}

#endif

}  // namespace tandem

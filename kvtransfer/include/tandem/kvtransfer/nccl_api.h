// NcclApi: the part of NCCL (and of the CUDA runtime's streams) that the `nccl` KV data plane
// calls, as a table of functions, so that one code path runs against two implementations:
//
//   * LoadNcclLibrary(): the real libnccl.so.2 and libcudart, opened with dlopen (no link-time
//     dependency: a build without NCCL still builds, and a CPU host never loads it). Buffers must
//     be device memory.
//   * FakeNcclApi(): a loopback stand-in for CPU hosts and CI. A communicator is a Unix socket
//     pair between the two ranks' processes (the unique id names an abstract socket that
//     GetUniqueId listens on); Send and Recv run in order on per-communicator threads, each
//     message framed with its size, so a Recv posted for a different size than the matching Send
//     fails the communicator (NCCL's matching rule made loud). Buffers are host memory.
//
// Semantics the data plane relies on (both implementations):
//   * CommInitRank is non-blocking (NCCL's config.blocking = 0): it returns kInProgress or
//     kSuccess, and CommGetAsyncError reports kInProgress until both ranks joined;
//   * Send/Recv between GroupStart and GroupEnd are queued on `stream`; StreamQuery answers
//     kSuccess once everything queued on it finished, kInProgress while it runs; the
//     communicator's errors (peer gone, size mismatch) come from CommGetAsyncError;
//   * sends and receives between two ranks match in the order they were issued;
//   * CommAbort may be called at any time from the thread that issued the operations; it ends
//     every queued operation, after it no buffer is touched, and it frees the communicator.
//
// Thread safety: a communicator and its stream are used from one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "tandem/common/status.h"

namespace tandem {

struct NcclUniqueId {
  char bytes[128] = {};
};

// NCCL's result codes (nccl.h ncclResult_t) that the data plane tells apart.
enum NcclResult : int {
  kNcclSuccess = 0,
  kNcclUnhandledCudaError = 1,
  kNcclSystemError = 2,
  kNcclInternalError = 3,
  kNcclInvalidArgument = 4,
  kNcclInvalidUsage = 5,
  kNcclRemoteError = 6,
  kNcclInProgress = 7,
};

struct NcclApi {
  using Comm = void*;
  using Stream = void*;

  std::string name;  // "fake" or "libnccl.so.2 <version>"
  int (*get_unique_id)(NcclUniqueId* id);
  int (*comm_init_rank)(Comm* comm, int nranks, const NcclUniqueId& id, int rank);
  int (*comm_get_async_error)(Comm comm, int* async_error);
  // Also the end of a healthy communicator: a peer may be gone by then, and a finalize would
  // wait for it.
  int (*comm_abort)(Comm comm);
  int (*group_start)();
  int (*group_end)();
  int (*send)(const void* buf, size_t bytes, int peer, Comm comm, Stream stream);
  int (*recv)(void* buf, size_t bytes, int peer, Comm comm, Stream stream);
  int (*stream_create)(Stream* stream);
  int (*stream_query)(Stream stream);
  int (*stream_destroy)(Stream stream);
  // Memory of the kind Send/Recv take (device memory for the real library, host for the fake):
  // the receiver's scratch for layers it drops.
  int (*mem_alloc)(void** ptr, size_t bytes);
  int (*mem_free)(void* ptr);
  // Copies between that memory and host memory, either way (cudaMemcpyDefault; the fake:
  // memcpy). For checks and benchmarks that fill and read pages.
  int (*mem_copy)(void* dst, const void* src, size_t bytes);
  const char* (*error_string)(int result);
};

// The loopback stand-in (see above). Always available.
const NcclApi& FakeNcclApi();

// The real library: `path` is libnccl's file ("" = "libnccl.so.2" from the loader's path); the
// CUDA runtime is opened as libcudart.so.13 or .12. UNAVAILABLE naming what is missing when
// either cannot be opened or lacks a symbol; UNIMPLEMENTED when this build had no nccl.h.
// The table lives for the process.
StatusOr<const NcclApi*> LoadNcclLibrary(const std::string& path = "");

// `flag` is "fake" or a library path / "" for the real one (--nccl-library).
StatusOr<const NcclApi*> NcclApiFromFlag(const std::string& flag);

}  // namespace tandem

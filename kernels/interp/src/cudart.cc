// The fake CUDA runtime: the cuda_runtime_api.h functions Tandem uses, with C linkage, so host
// code built against the real headers links against this instead of libcudart.
//
// Execution model: work is executed eagerly when it is enqueued, in program order. That is a
// valid schedule of the CUDA stream semantics (every stream-ordered dependency holds), so
// synchronization calls have nothing to wait for; what it cannot show is a missing
// cross-stream dependency (another valid schedule could reorder the streams). Stream capture
// records the work by value instead; a graph launch replays it in order.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

#include "internal.h"
#include "tandem/kernels/interp/runtime.h"

// Opaque handle types of the runtime API (incomplete in the headers).
struct CUgraph_st;
struct CUstream_st {
  unsigned flags = cudaStreamDefault;
  int priority = 0;
  CUgraph_st* capture = nullptr;  // graph being captured into, or null
};
struct CUevent_st {
  unsigned flags = cudaEventDefault;
  bool recorded = false;
  std::chrono::steady_clock::time_point time;
  CUgraph_st* captured_in = nullptr;  // recorded during this (ongoing) capture
};
struct CUgraph_st {
  std::vector<std::function<void()>> ops;
  bool capturing = false;
  bool invalidated = false;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id thread;
  CUstream_st* origin = nullptr;
  std::vector<CUstream_st*> streams;  // origin and joined streams
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> ops;
};

// The device's warpSize built-in variable (declared in cuda_interp.h).
extern "C" {
extern const int warpSize;
const int warpSize = 32;
}

namespace tandem::interp {
namespace {

using internal::ExecMutex;
using internal::SetLastError;

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local cudaStreamCaptureMode t_capture_mode = cudaStreamCaptureModeGlobal;

struct State {
  CUstream_st legacy;
  std::set<CUstream_st*> streams;
  std::set<CUevent_st*> events;
  std::set<CUgraph_st*> graphs;
  std::set<CUgraphExec_st*> execs;
  std::map<uintptr_t, size_t> device;  // base -> bytes asked for (copies are checked against it)
  std::map<uintptr_t, size_t> host;    // pinned host allocations
  size_t device_used = 0;
  size_t device_total = 0;
  std::unordered_map<const void*, size_t> max_dynamic_smem;
};

State& S() {
  static State* s = [] {
    auto* st = new State();
    size_t mb = 4096;
    if (const char* env = std::getenv("TANDEM_INTERP_DEVICE_MB"); env != nullptr && *env != 0) {
      mb = std::strtoull(env, nullptr, 10);
    }
    st->device_total = mb << 20;
    return st;
  }();
  return *s;
}

using Lock = std::lock_guard<std::recursive_mutex>;

bool IsLegacy(cudaStream_t s) {
  return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread;
}

// Resolves a handle; null if it is not a live stream.
CUstream_st* Resolve(cudaStream_t s) {
  if (IsLegacy(s)) return &S().legacy;
  return S().streams.count(s) != 0 ? s : nullptr;
}

void Invalidate(CUgraph_st* g) { g->invalidated = true; }

// CUDA forbids "potentially unsafe" calls (cudaMalloc, synchronous copies, device syncs...)
// while a capture is under way: by this thread unless relaxed, by any thread in global mode.
cudaError_t CheckUnsafeCall() {
  if (t_capture_mode == cudaStreamCaptureModeRelaxed) return cudaSuccess;
  const std::thread::id self = std::this_thread::get_id();
  bool bad = false;
  for (CUgraph_st* g : S().graphs) {
    if (!g->capturing) continue;
    if ((g->thread == self && g->mode != cudaStreamCaptureModeRelaxed) ||
        g->mode == cudaStreamCaptureModeGlobal) {
      Invalidate(g);
      bad = true;
    }
  }
  return bad ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}

// Work on the legacy stream synchronizes with every blocking stream: illegal while one of
// them captures.
cudaError_t CheckLegacyUse() {
  bool bad = false;
  for (CUgraph_st* g : S().graphs) {
    if (!g->capturing) continue;
    for (CUstream_st* s : g->streams) {
      if ((s->flags & cudaStreamNonBlocking) == 0) {
        Invalidate(g);
        bad = true;
        break;
      }
    }
  }
  return bad ? cudaErrorStreamCaptureImplicit : cudaSuccess;
}

bool InDevice(const void* p, size_t n) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  const auto& m = S().device;
  auto it = m.upper_bound(a);
  if (it == m.begin()) return false;
  --it;
  return a >= it->first && a + n <= it->first + it->second;
}

cudaError_t CheckCopy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) {
    return cudaErrorInvalidMemcpyDirection;
  }
  if (count == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return cudaErrorInvalidValue;
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (dst_dev && !InDevice(dst, count)) return cudaErrorInvalidValue;
  if (src_dev && !InDevice(src, count)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

size_t RoundUp256(size_t n) { return (n + 255) / 256 * 256; }

constexpr size_t kPoisonLimit = size_t{256} << 20;

}  // namespace

cudaError_t Enqueue(cudaStream_t stream, std::function<void()> work) {
  Lock lock(ExecMutex());
  CUstream_st* s = Resolve(stream);
  if (s == nullptr) return SetLastError(cudaErrorInvalidResourceHandle);
  if (s->capture != nullptr) {
    if (s->capture->invalidated) return SetLastError(cudaErrorStreamCaptureInvalidated);
    s->capture->ops.push_back(std::move(work));
    return cudaSuccess;
  }
  if (s == &S().legacy) {
    if (const cudaError_t e = CheckLegacyUse(); e != cudaSuccess) return SetLastError(e);
  }
  work();
  return cudaSuccess;
}

namespace internal {

std::recursive_mutex& ExecMutex() {
  static auto* mu = new std::recursive_mutex();
  return *mu;
}

cudaError_t SetLastError(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

size_t MaxDynamicSmem(const void* func) {
  Lock lock(ExecMutex());
  auto it = S().max_dynamic_smem.find(func);
  return it == S().max_dynamic_smem.end() ? kSmemPerBlockDefault : it->second;
}

}  // namespace internal
}  // namespace tandem::interp

using namespace tandem::interp;  // NOLINT: this file implements the C API
using tandem::interp::internal::ExecMutex;
using tandem::interp::internal::SetLastError;

extern "C" {

// ---- Errors ---------------------------------------------------------------------------------
cudaError_t cudaGetLastError(void) {
  const cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return t_last_error; }

#define TANDEM_INTERP_ERRORS(X)                                                                   \
  X(cudaSuccess, "no error")                                                                      \
  X(cudaErrorInvalidValue, "invalid argument")                                                    \
  X(cudaErrorMemoryAllocation, "out of memory")                                                   \
  X(cudaErrorInitializationError, "initialization error")                                         \
  X(cudaErrorInvalidConfiguration, "invalid configuration argument")                              \
  X(cudaErrorInvalidDevicePointer, "invalid device pointer")                                      \
  X(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy")                         \
  X(cudaErrorInvalidDeviceFunction, "invalid device function")                                    \
  X(cudaErrorNoDevice, "no CUDA-capable device is detected")                                      \
  X(cudaErrorInvalidDevice, "invalid device ordinal")                                             \
  X(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version")  \
  X(cudaErrorInvalidResourceHandle, "invalid resource handle")                                    \
  X(cudaErrorNotReady, "device not ready")                                                        \
  X(cudaErrorIllegalAddress, "an illegal memory access was encountered")                          \
  X(cudaErrorLaunchOutOfResources, "too many resources requested for launch")                     \
  X(cudaErrorLaunchFailure, "unspecified launch failure")                                         \
  X(cudaErrorNotSupported, "operation not supported")                                             \
  X(cudaErrorStreamCaptureUnsupported, "operation not permitted when stream is capturing")        \
  X(cudaErrorStreamCaptureInvalidated, "operation failed due to a previous error during capture") \
  X(cudaErrorStreamCaptureMerge,                                                                  \
    "operation would result in a merge of separate capture "                                      \
    "sequences")                                                                                  \
  X(cudaErrorStreamCaptureUnmatched, "capture was not initiated in this stream")                  \
  X(cudaErrorStreamCaptureUnjoined, "capturing stream has unjoined work")                         \
  X(cudaErrorStreamCaptureIsolation, "dependency created on uncaptured work in another stream")   \
  X(cudaErrorStreamCaptureImplicit,                                                               \
    "operation would make the legacy stream depend on a capturing blocking stream")               \
  X(cudaErrorStreamCaptureWrongThread,                                                            \
    "attempt to terminate a thread-local capture sequence from another thread")                   \
  X(cudaErrorIllegalState, "the operation is not permitted in the current state")                 \
  X(cudaErrorUnknown, "unknown error")

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
#define X(code, text) \
  case code:          \
    return text;
    TANDEM_INTERP_ERRORS(X)
#undef X
    default:
      return "unrecognized error code";
  }
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
#define X(code, text) \
  case code:          \
    return #code;
    TANDEM_INTERP_ERRORS(X)
#undef X
    default:
      return "cudaErrorUnknown";
  }
}

// ---- Device ---------------------------------------------------------------------------------
cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return SetLastError(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return SetLastError(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : SetLastError(cudaErrorInvalidDevice);
}

cudaError_t cudaDeviceReset(void) { return cudaSuccess; }

cudaError_t cudaRuntimeGetVersion(int* version) {
  if (version == nullptr) return SetLastError(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) { return cudaRuntimeGetVersion(version); }

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return SetLastError(cudaErrorInvalidValue);
  if (device != 0) return SetLastError(cudaErrorInvalidDevice);
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "Tandem CUDA interpreter");
  {
    Lock lock(ExecMutex());
    prop->totalGlobalMem = S().device_total;
  }
  prop->sharedMemPerBlock = internal::kSmemPerBlockDefault;
  prop->sharedMemPerBlockOptin = internal::kSmemPerBlockOptin;
  prop->sharedMemPerMultiprocessor = internal::kSmemPerSm;
  prop->reservedSharedMemPerBlock = 1024;
  prop->regsPerBlock = 65536;
  prop->regsPerMultiprocessor = 65536;
  prop->warpSize = 32;
  prop->memPitch = SIZE_MAX;
  prop->maxThreadsPerBlock = internal::kMaxThreadsPerBlock;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->totalConstMem = 65536;
  prop->major = 9;
  prop->minor = 0;
  prop->textureAlignment = 512;
  prop->multiProcessorCount = internal::kSmCount;
  prop->canMapHostMemory = 1;
  prop->concurrentKernels = 1;
  prop->asyncEngineCount = 2;
  prop->unifiedAddressing = 1;
  prop->memoryBusWidth = 5120;
  prop->l2CacheSize = 50 << 20;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->maxBlocksPerMultiProcessor = 32;
  prop->streamPrioritiesSupported = 1;
  prop->managedMemory = 1;
  prop->cooperativeLaunch = 1;
  prop->memoryPoolsSupported = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (value == nullptr) return SetLastError(cudaErrorInvalidValue);
  if (device != 0) return SetLastError(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = internal::kSmCount;
      break;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = internal::kMaxThreadsPerBlock;
      break;
    case cudaDevAttrMaxBlockDimX:
    case cudaDevAttrMaxBlockDimY:
      *value = 1024;
      break;
    case cudaDevAttrMaxBlockDimZ:
      *value = 64;
      break;
    case cudaDevAttrMaxGridDimX:
      *value = 0x7fffffff;
      break;
    case cudaDevAttrMaxGridDimY:
    case cudaDevAttrMaxGridDimZ:
      *value = 65535;
      break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = static_cast<int>(internal::kSmemPerBlockDefault);
      break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = static_cast<int>(internal::kSmemPerBlockOptin);
      break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *value = static_cast<int>(internal::kSmemPerSm);
      break;
    case cudaDevAttrWarpSize:
      *value = 32;
      break;
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      break;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      break;
    case cudaDevAttrMaxThreadsPerMultiProcessor:
      *value = 2048;
      break;
    case cudaDevAttrL2CacheSize:
      *value = 50 << 20;
      break;
    case cudaDevAttrUnifiedAddressing:
    case cudaDevAttrConcurrentKernels:
      *value = 1;
      break;
    default:
      *value = 0;  // not modelled
      break;
  }
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  if (func == nullptr) return SetLastError(cudaErrorInvalidDeviceFunction);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > internal::kSmemPerBlockOptin) {
      return SetLastError(cudaErrorInvalidValue);
    }
    Lock lock(ExecMutex());
    S().max_dynamic_smem[func] = static_cast<size_t>(value);
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) {
    return (value >= -1 && value <= 100) ? cudaSuccess : SetLastError(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  Lock lock(ExecMutex());
  return SetLastError(CheckUnsafeCall());
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  if (free == nullptr || total == nullptr) return SetLastError(cudaErrorInvalidValue);
  Lock lock(ExecMutex());
  *total = S().device_total;
  *free = S().device_total - S().device_used;
  return cudaSuccess;
}

// ---- Memory ---------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** ptr, size_t size) {
  if (ptr == nullptr) return SetLastError(cudaErrorInvalidValue);
  Lock lock(ExecMutex());
  if (const cudaError_t e = CheckUnsafeCall(); e != cudaSuccess) return SetLastError(e);
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  const size_t bytes = RoundUp256(size);
  if (bytes > S().device_total - S().device_used) return SetLastError(cudaErrorMemoryAllocation);
  // Exactly `size` bytes, so that AddressSanitizer builds catch kernels reading or writing past
  // the end (the accounting uses the 256-byte granularity of a real allocator).
  void* p = nullptr;
  if (posix_memalign(&p, 256, size) != 0) return SetLastError(cudaErrorMemoryAllocation);
  // Fresh device memory is garbage on a GPU: poison it so reads before writes show.
  if (size <= kPoisonLimit) std::memset(p, 0xCD, size);
  S().device[reinterpret_cast<uintptr_t>(p)] = size;
  S().device_used += bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  Lock lock(ExecMutex());
  if (const cudaError_t e = CheckUnsafeCall(); e != cudaSuccess) return SetLastError(e);
  auto it = S().device.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == S().device.end()) return SetLastError(cudaErrorInvalidValue);
  S().device_used -= RoundUp256(it->second);
  S().device.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  if (ptr == nullptr) return SetLastError(cudaErrorInvalidValue);
  Lock lock(ExecMutex());
  if (const cudaError_t e = CheckUnsafeCall(); e != cudaSuccess) return SetLastError(e);
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  void* p = std::aligned_alloc(256, RoundUp256(size));
  if (p == nullptr) return SetLastError(cudaErrorMemoryAllocation);
  S().host[reinterpret_cast<uintptr_t>(p)] = size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** ptr, size_t size, unsigned int flags) {
  (void)flags;
  return cudaMallocHost(ptr, size);
}

cudaError_t cudaFreeHost(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  Lock lock(ExecMutex());
  auto it = S().host.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == S().host.end()) return SetLastError(cudaErrorInvalidValue);
  S().host.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes* attr, const void* ptr) {
  if (attr == nullptr) return SetLastError(cudaErrorInvalidValue);
  Lock lock(ExecMutex());
  std::memset(attr, 0, sizeof(*attr));
  if (InDevice(ptr, 1)) {
    attr->type = cudaMemoryTypeDevice;
    attr->devicePointer = const_cast<void*>(ptr);
  } else {
    const auto a = reinterpret_cast<uintptr_t>(ptr);
    auto it = S().host.upper_bound(a);
    const bool pinned = it != S().host.begin() && (--it, a < it->first + it->second);
    attr->type = pinned ? cudaMemoryTypeHost : cudaMemoryTypeUnregistered;
    attr->device = pinned ? 0 : -2;
    attr->hostPointer = const_cast<void*>(ptr);
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  Lock lock(ExecMutex());
  if (const cudaError_t e = CheckCopy(dst, src, count, kind); e != cudaSuccess) {
    return SetLastError(e);
  }
  if (count == 0) return cudaSuccess;
  return Enqueue(stream, [dst, src, count] { std::memmove(dst, src, count); });
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
  Lock lock(ExecMutex());
  if (const cudaError_t e = CheckUnsafeCall(); e != cudaSuccess) return SetLastError(e);
  return cudaMemcpyAsync(dst, src, count, kind, nullptr);
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  Lock lock(ExecMutex());
  if (count == 0) return cudaSuccess;
  if (!InDevice(ptr, count)) return SetLastError(cudaErrorInvalidValue);
  return Enqueue(stream, [ptr, value, count] { std::memset(ptr, value, count); });
}

cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  Lock lock(ExecMutex());
  if (const cudaError_t e = CheckUnsafeCall(); e != cudaSuccess) return SetLastError(e);
  return cudaMemsetAsync(ptr, value, count, nullptr);
}

// ---- Streams --------------------------------------------------------------------------------
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* stream, unsigned int flags, int priority) {
  if (stream == nullptr || (flags & ~unsigned{cudaStreamNonBlocking}) != 0) {
    return SetLastError(cudaErrorInvalidValue);
  }
  Lock lock(ExecMutex());
  auto* s = new CUstream_st();
  s->flags = flags;
  s->priority = priority;
  S().streams.insert(s);
  *stream = s;
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  return cudaStreamCreateWithPriority(stream, flags, 0);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  return cudaStreamCreateWithPriority(stream, cudaStreamDefault, 0);
}

cudaError_t cudaStreamGetFlags(cudaStream_t stream, unsigned int* flags) {
  Lock lock(ExecMutex());
  CUstream_st* s = Resolve(stream);
  if (s == nullptr || flags == nullptr) return SetLastError(cudaErrorInvalidResourceHandle);
  *flags = s->flags;
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  Lock lock(ExecMutex());
  if (IsLegacy(stream) || S().streams.erase(stream) == 0) {
    return SetLastError(cudaErrorInvalidResourceHandle);
  }
  if (stream->capture != nullptr) Invalidate(stream->capture);
  for (CUgraph_st* g : S().graphs) {
    std::erase(g->streams, stream);
    if (g->origin == stream) g->origin = nullptr;
  }
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  Lock lock(ExecMutex());
  CUstream_st* s = Resolve(stream);
  if (s == nullptr) return SetLastError(cudaErrorInvalidResourceHandle);
  if (s->capture != nullptr) {
    Invalidate(s->capture);
    return SetLastError(cudaErrorStreamCaptureUnsupported);
  }
  if (s == &S().legacy) {
    if (const cudaError_t e = CheckLegacyUse(); e != cudaSuccess) return SetLastError(e);
  }
  return cudaSuccess;  // eager execution: the work is done
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  Lock lock(ExecMutex());
  CUstream_st* s = Resolve(stream);
  if (s == nullptr) return SetLastError(cudaErrorInvalidResourceHandle);
  if (s->capture != nullptr) {
    Invalidate(s->capture);
    return SetLastError(cudaErrorStreamCaptureUnsupported);
  }
  return cudaSuccess;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* user_data) {
  if (fn == nullptr) return SetLastError(cudaErrorInvalidValue);
  return Enqueue(stream, [fn, user_data] { fn(user_data); });
}

// ---- Events ---------------------------------------------------------------------------------
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  if (event == nullptr) return SetLastError(cudaErrorInvalidValue);
  Lock lock(ExecMutex());
  auto* e = new CUevent_st();
  e->flags = flags;
  S().events.insert(e);
  *event = e;
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  Lock lock(ExecMutex());
  if (S().events.erase(event) == 0) return SetLastError(cudaErrorInvalidResourceHandle);
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecordWithFlags(cudaEvent_t event, cudaStream_t stream, unsigned int flags) {
  (void)flags;
  Lock lock(ExecMutex());
  if (S().events.count(event) == 0) return SetLastError(cudaErrorInvalidResourceHandle);
  CUstream_st* s = Resolve(stream);
  if (s == nullptr) return SetLastError(cudaErrorInvalidResourceHandle);
  event->captured_in = s->capture;
  return Enqueue(stream, [event] {
    event->recorded = true;
    event->time = std::chrono::steady_clock::now();
  });
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  return cudaEventRecordWithFlags(event, stream, 0);
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  Lock lock(ExecMutex());
  if (S().events.count(event) == 0) return SetLastError(cudaErrorInvalidResourceHandle);
  if (event->captured_in != nullptr && event->captured_in->capturing) {
    return SetLastError(cudaErrorStreamCaptureUnsupported);
  }
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) { return cudaEventSynchronize(event); }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  Lock lock(ExecMutex());
  if (ms == nullptr) return SetLastError(cudaErrorInvalidValue);
  if (S().events.count(start) == 0 || S().events.count(end) == 0) {
    return SetLastError(cudaErrorInvalidResourceHandle);
  }
  if (((start->flags | end->flags) & cudaEventDisableTiming) != 0 || !start->recorded ||
      !end->recorded) {
    return SetLastError(cudaErrorInvalidResourceHandle);
  }
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  (void)flags;
  Lock lock(ExecMutex());
  CUstream_st* s = Resolve(stream);
  if (s == nullptr || S().events.count(event) == 0) {
    return SetLastError(cudaErrorInvalidResourceHandle);
  }
  CUgraph_st* g = event->captured_in;
  if (g != nullptr && g->capturing) {
    if (s->capture == nullptr) {  // fork: the stream joins the capture
      if (s == &S().legacy) return SetLastError(cudaErrorStreamCaptureImplicit);
      s->capture = g;
      g->streams.push_back(s);
    } else if (s->capture != g) {
      Invalidate(s->capture);
      return SetLastError(cudaErrorStreamCaptureMerge);
    }
    return cudaSuccess;
  }
  if (s->capture != nullptr) {  // a captured wait on work outside the capture
    Invalidate(s->capture);
    return SetLastError(cudaErrorStreamCaptureIsolation);
  }
  return cudaSuccess;  // eager execution: the event's work is done
}

// ---- Stream capture and graphs --------------------------------------------------------------
cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode* mode) {
  if (mode == nullptr) return SetLastError(cudaErrorInvalidValue);
  std::swap(*mode, t_capture_mode);
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
  Lock lock(ExecMutex());
  if (IsLegacy(stream)) return SetLastError(cudaErrorStreamCaptureUnsupported);
  CUstream_st* s = Resolve(stream);
  if (s == nullptr) return SetLastError(cudaErrorInvalidResourceHandle);
  if (s->capture != nullptr) return SetLastError(cudaErrorIllegalState);
  auto* g = new CUgraph_st();
  g->capturing = true;
  g->mode = mode;
  g->thread = std::this_thread::get_id();
  g->origin = s;
  g->streams.push_back(s);
  S().graphs.insert(g);
  s->capture = g;
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  Lock lock(ExecMutex());
  if (graph == nullptr) return SetLastError(cudaErrorInvalidValue);
  CUstream_st* s = Resolve(stream);
  if (s == nullptr) return SetLastError(cudaErrorInvalidResourceHandle);
  CUgraph_st* g = s->capture;
  if (g == nullptr || g->origin != s) return SetLastError(cudaErrorStreamCaptureUnmatched);
  if (g->mode == cudaStreamCaptureModeThreadLocal && g->thread != std::this_thread::get_id()) {
    return SetLastError(cudaErrorStreamCaptureWrongThread);
  }
  for (CUstream_st* member : g->streams) member->capture = nullptr;
  g->streams.clear();
  g->capturing = false;
  for (CUevent_st* e : S().events) {
    if (e->captured_in == g) e->captured_in = nullptr;
  }
  if (g->invalidated) {
    S().graphs.erase(g);
    delete g;
    *graph = nullptr;
    return SetLastError(cudaErrorStreamCaptureInvalidated);
  }
  *graph = g;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus* status) {
  Lock lock(ExecMutex());
  if (status == nullptr) return SetLastError(cudaErrorInvalidValue);
  CUstream_st* s = Resolve(stream);
  if (s == nullptr) return SetLastError(cudaErrorInvalidResourceHandle);
  if (s == &S().legacy && CheckLegacyUse() != cudaSuccess) {
    return SetLastError(cudaErrorStreamCaptureImplicit);
  }
  *status = s->capture == nullptr     ? cudaStreamCaptureStatusNone
            : s->capture->invalidated ? cudaStreamCaptureStatusInvalidated
                                      : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream, enum cudaStreamCaptureStatus* status,
                                     unsigned long long* id, cudaGraph_t* graph,
                                     const cudaGraphNode_t** dependencies,
                                     const cudaGraphEdgeData** edge_data,
                                     size_t* num_dependencies) {
  Lock lock(ExecMutex());
  if (status == nullptr) return SetLastError(cudaErrorInvalidValue);
  CUstream_st* s = Resolve(stream);
  if (s == nullptr) return SetLastError(cudaErrorInvalidResourceHandle);
  CUgraph_st* g = s->capture;
  *status = g == nullptr     ? cudaStreamCaptureStatusNone
            : g->invalidated ? cudaStreamCaptureStatusInvalidated
                             : cudaStreamCaptureStatusActive;
  if (id != nullptr) *id = reinterpret_cast<uintptr_t>(g);
  if (graph != nullptr) *graph = g;  // graph node APIs are not modelled
  if (dependencies != nullptr) *dependencies = nullptr;
  if (edge_data != nullptr) *edge_data = nullptr;
  if (num_dependencies != nullptr) *num_dependencies = 0;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                 unsigned long long flags) {
  (void)flags;
  Lock lock(ExecMutex());
  if (exec == nullptr) return SetLastError(cudaErrorInvalidValue);
  if (S().graphs.count(graph) == 0 || graph->capturing) {
    return SetLastError(cudaErrorInvalidValue);
  }
  auto* x = new CUgraphExec_st();
  x->ops = graph->ops;
  S().execs.insert(x);
  *exec = x;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* exec, cudaGraph_t graph,
                                          unsigned long long flags) {
  return cudaGraphInstantiate(exec, graph, flags);
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  Lock lock(ExecMutex());
  if (S().execs.count(exec) == 0) return SetLastError(cudaErrorInvalidResourceHandle);
  return Enqueue(stream, [ops = exec->ops] {
    for (const auto& op : ops) op();
  });
}

cudaError_t cudaGraphUpload(cudaGraphExec_t exec, cudaStream_t stream) {
  Lock lock(ExecMutex());
  if (S().execs.count(exec) == 0 || Resolve(stream) == nullptr) {
    return SetLastError(cudaErrorInvalidResourceHandle);
  }
  return cudaSuccess;  // nothing to upload
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  Lock lock(ExecMutex());
  if (S().execs.erase(exec) == 0) return SetLastError(cudaErrorInvalidResourceHandle);
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  Lock lock(ExecMutex());
  if (S().graphs.count(graph) == 0 || graph->capturing) {
    return SetLastError(cudaErrorInvalidValue);
  }
  S().graphs.erase(graph);
  delete graph;
  return cudaSuccess;
}

}  // extern "C"

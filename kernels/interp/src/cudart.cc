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

#include "cudart_state.h"
#include "internal.h"
#include "tandem/kernels/interp/runtime.h"

// The device's warpSize built-in variable (declared in cuda_interp.h).
extern "C" {
extern const int warpSize;
const int warpSize = 32;
}

namespace tandem::interp {
namespace {
thread_local cudaError_t t_last_error = cudaSuccess;
}  // namespace

namespace rt {

cudaStreamCaptureMode& CaptureMode() {
  thread_local cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  return mode;
}

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

bool IsLegacy(cudaStream_t s) {
  return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread;
}

CUstream_st* Resolve(cudaStream_t s) {
  if (IsLegacy(s)) return &S().legacy;
  return S().streams.count(s) != 0 ? s : nullptr;
}

cudaError_t CheckUnsafeCall() {
  if (CaptureMode() == cudaStreamCaptureModeRelaxed) return cudaSuccess;
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

}  // namespace rt

namespace {

using namespace rt;  // NOLINT: private implementation file
using internal::ExecMutex;
using internal::SetLastError;

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

using internal::kPoisonLimit;

}  // namespace

using namespace rt;  // NOLINT

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
  // One fixed UUID: every process running the interpreter sees the same device.
  std::memcpy(prop->uuid.bytes, "tandem-interp-00", sizeof(prop->uuid.bytes));
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
  if (it == S().device.end() || S().vmm.count(it->first) != 0) {
    return SetLastError(cudaErrorInvalidValue);  // not cudaMalloc'd (cuMemUnmap frees a mapping)
  }
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

}  // extern "C"

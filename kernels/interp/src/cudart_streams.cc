// The fake CUDA runtime (see cudart.cc): streams, events, stream capture and graphs.
#include <chrono>
#include <functional>
#include <thread>
#include <vector>

#include "cudart_state.h"
#include "internal.h"
#include "tandem/kernels/interp/runtime.h"

using namespace tandem::interp;      // NOLINT: this file implements the C API
using namespace tandem::interp::rt;  // NOLINT
using tandem::interp::internal::ExecMutex;
using tandem::interp::internal::SetLastError;

extern "C" {

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
  std::swap(*mode, CaptureMode());
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

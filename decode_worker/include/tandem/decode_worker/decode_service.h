// DecodeService: the tandem.v1.DecodeWorker gRPC service (callback API).
//
//   Reserve  unary: pages + transfer registration under a lease (ReservationTable), returns the
//            ticket. UNAVAILABLE while loading or draining; RESOURCE_EXHAUSTED without pages.
//   Decode   server stream, one reactor per call: attaches to the reservation, waits
//            asynchronously for the KV, hands the request to the EngineLoop and streams its
//            tokens. Cancellation or the call's deadline cancels the transfer or the engine
//            request, which frees the pages.
//   Release  unary: drops an unattached reservation.
// Status values cross module boundaries; they become grpc::Status only here.
//
// Thread safety: gRPC calls the handlers on its threads; nothing in a handler or reaction
// blocks (waits happen through callbacks). The backend must outlive every call (the server is
// shut down before the backend is destroyed).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "tandem/common/live_set.h"
#include "tandem/common/metrics.h"
#include "tandem/common/status.h"
#include "tandem/decode_worker/engine_loop.h"
#include "tandem/decode_worker/reservations.h"
#include "tandem/engine/engine.h"
#include "tandem/kvtransfer/layout.h"
#include "tandem/kvtransfer/transceiver.h"
#include "tandem/v1/internal.grpc.pb.h"

namespace tandem {

class DecodeStream;
// The Decode streams in flight: added when the call starts, removed in its OnDone.
using DecodeStreams = LiveSet<DecodeStream>;

// What the service works with once the model is loaded; owned by the server.
struct DecodeBackend {
  Engine* engine = nullptr;
  Transceiver* transceiver = nullptr;
  ReservationTable* table = nullptr;
  EngineLoop* loop = nullptr;
  KvPageLayout layout;
  std::string worker_id;
  Metrics* metrics = nullptr;
  // nccl receives into the engine's device pages (WorkerNcclChoice::device_pages): only a
  // reservation made for nccl names the nccl endpoint then.
  bool nccl_device_pages = false;
};

class DecodeService final : public v1::DecodeWorker::CallbackService {
 public:
  DecodeService() = default;

  // Calls without `key` (tandem/rpc/cluster_auth.h) are refused UNAUTHENTICATED; empty: none
  // required. Call before the service is registered with a server.
  void SetClusterKey(std::string key) { cluster_key_ = std::move(key); }

  // Makes the service ready: until then every call gets UNAVAILABLE ("loading").
  void SetBackend(DecodeBackend* backend) { backend_.store(backend); }
  // Draining: new Reserve calls get UNAVAILABLE; Decode of existing reservations still runs.
  void SetDraining() { draining_.store(true); }
  bool draining() const { return draining_.load(); }
  // Decode streams not yet done (OnDone not yet run).
  int32_t active_streams() const { return streams_.count(); }
  // Ends every Decode stream in flight with UNAVAILABLE naming `why` (a drain out of budget);
  // their requests are cancelled, which frees their pages. Returns their request ids.
  std::vector<std::string> CutStreams(const std::string& why);

  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* ctx,
                                    const v1::ReserveRequest* request,
                                    v1::ReserveResponse* response) override;
  grpc::ServerWriteReactor<v1::DecodeResponse>* Decode(grpc::CallbackServerContext* ctx,
                                                       const v1::DecodeRequest* request) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* ctx,
                                    const v1::ReleaseRequest* request,
                                    v1::ReleaseResponse* response) override;

 private:
  std::atomic<DecodeBackend*> backend_{nullptr};
  std::atomic<bool> draining_{false};
  std::string cluster_key_;
  DecodeStreams streams_;
};

}  // namespace tandem

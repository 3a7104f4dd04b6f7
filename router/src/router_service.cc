#include "tandem/router/router_service.h"

#include "generate_call.h"
#include "tandem/common/logging.h"
#include "tandem/common/secret.h"
#include "tandem/router/request_validation.h"
#include "tandem/rpc/grpc_status.h"
#include "write_stall_watch.h"

namespace tandem {

StatusOr<std::unique_ptr<RouterBackend>> LoadRouterBackend(const RouterOptions& options,
                                                           Metrics* metrics) {
  auto b = std::make_unique<RouterBackend>(options);
  b->metrics = metrics;
  TANDEM_ASSIGN_OR_RETURN(b->meta, LoadModelMeta(options.model_dir));
  TANDEM_ASSIGN_OR_RETURN(b->tokenizer, LoadTokenizer(options.model_dir));
  b->chat_format = DetectChatFormat(options.model_dir);
  if (!b->chat_format.ok()) {
    TLOG_WARN("router: chat requests will fail: {}", b->chat_format.status().ToString());
  }
  b->eos_ids = b->meta.eos_token_ids;
  if (b->eos_ids.empty() && b->tokenizer->eos_id()) b->eos_ids.push_back(*b->tokenizer->eos_id());
  WorkerPoolOptions po;
  po.prefill_addresses = options.prefill_addresses;
  po.decode_addresses = options.decode_addresses;
  po.heartbeat_interval = options.heartbeat_interval;
  po.lost_after = options.worker_lost_after;
  po.channel_credentials = MakeChannelCredentials(options.tls);
  b->pool = std::make_unique<WorkerPool>(std::move(po));
  b->tokenize =
      std::make_unique<TokenizeQueue>(options.tokenize_threads, options.max_tokenize_queue);
  return b;
}

RouterService::RouterService() = default;
RouterService::~RouterService() {
  owned_.reset();  // stops the pool's watchdog, which reaches calls_, before calls_ goes
}

void RouterService::SetBackend(std::unique_ptr<RouterBackend> backend) {
  stall_watch_ = std::make_unique<WriteStallWatch>(backend->options.grpc_write_stall_timeout);
  owned_ = std::move(backend);
  backend_.store(owned_.get());
}

Status CheckApiKey(const std::vector<std::string>& keys, std::string_view authorization) {
  if (keys.empty()) return Status::Ok();
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.substr(0, kBearer.size()) != kBearer) {
    return UnauthenticatedError("missing API key: send 'authorization: Bearer <key>'");
  }
  const std::string_view key = authorization.substr(kBearer.size());
  bool found = false;
  for (const std::string& k : keys) found |= SecretEquals(k, key);  // every key, in constant time
  return found ? Status::Ok() : UnauthenticatedError("invalid API key");
}

namespace {

// The authorization metadata of a call ("" when absent).
std::string_view Authorization(const grpc::CallbackServerContext* ctx) {
  auto it = ctx->client_metadata().find("authorization");
  if (it == ctx->client_metadata().end()) return {};
  return std::string_view(it->second.data(), it->second.size());
}

// OK, or why the call must be refused (loading, API key).
Status Admit(const grpc::CallbackServerContext* ctx, const RouterBackend* b) {
  if (b == nullptr) return UnavailableError("router is loading");
  Status st = CheckApiKey(b->options.api_keys, Authorization(ctx));
  if (!st.ok()) b->metrics->CountError(st.code());
  return st;
}

// A Generate refused before it started.
class RefusedGenerate final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  explicit RefusedGenerate(const Status& status) { Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

// The gRPC side of one GenerateCall: a write reactor that forwards writes and the outcome, and
// deletes itself (dropping its reference to the call) in OnDone. With a write-stall watch, a
// write that does not complete in time (the client stopped reading) ends the call
// (GenerateCall::WriteStalled) and cancels the RPC, whose pending write then fails.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse>,
                              public GenerateOutput {
 public:
  // `watch` may be nullptr (no watch, or a loading router).
  GenerateReactor(std::shared_ptr<GenerateCall> call, grpc::CallbackServerContext* ctx,
                  WriteStallWatch* watch)
      : call_(std::move(call)) {
    if (watch == nullptr) return;
    // Runs before OnDone's Close returns, so the context is still valid.
    stall_ = watch->Watch([this, ctx, timeout = watch->timeout()] {
      call_->WriteStalled(timeout);
      ctx->TryCancel();
    });
  }

  void StartWrite(const v1::GenerateResponse* msg) override {
    if (stall_ != nullptr) stall_->WriteStarted();  // first: OnWriteDone may come at once
    grpc::ServerWriteReactor<v1::GenerateResponse>::StartWrite(msg);
  }
  void Finish(const grpc::Status& status) override {
    grpc::ServerWriteReactor<v1::GenerateResponse>::Finish(status);
  }
  void OnWriteDone(bool ok) override {
    if (stall_ != nullptr) stall_->WriteEnded();
    call_->OnWriteDone(ok);
  }
  void OnCancel() override { call_->Cancel(); }
  void OnDone() override {
    if (stall_ != nullptr) stall_->Close();
    call_->OnOutputDone();
    delete this;
  }

 private:
  std::shared_ptr<GenerateCall> call_;
  std::shared_ptr<WriteStallWatch::Stream> stall_;
};

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* RouterService::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) {
  RouterBackend* b = backend_.load();
  if (b != nullptr) {  // a loading router answers UNAVAILABLE through the call itself
    if (Status st = Admit(ctx, b); !st.ok()) return new RefusedGenerate(st);
    if (Status st = ValidateRequestBounds(*request, b->options.limits); !st.ok()) {
      b->metrics->CountError(st.code());
      TLOG_INFO("Generate refused: {}", st.ToString());
      return new RefusedGenerate(st);
    }
  }
  auto call = std::make_shared<GenerateCall>(b, &calls_, ctx->deadline(), *request);
  auto* reactor = new GenerateReactor(call, ctx, b != nullptr ? stall_watch_.get() : nullptr);
  call->Start(reactor, draining_.load());
  return reactor;
}

grpc::ServerUnaryReactor* RouterService::Tokenize(grpc::CallbackServerContext* ctx,
                                                  const v1::TokenizeRequest* request,
                                                  v1::TokenizeResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  RouterBackend* b = backend_.load();
  if (Status st = Admit(ctx, b); !st.ok()) {
    reactor->Finish(ToGrpcStatus(st));
    return reactor;
  }
  if (static_cast<int64_t>(request->text().size()) > b->options.limits.max_prompt_bytes) {
    reactor->Finish(ToGrpcStatus(InvalidArgumentError("text must be at most {} bytes, got {}",
                                                      b->options.limits.max_prompt_bytes,
                                                      request->text().size())));
    return reactor;
  }
  // On a tokenize thread; request and response live until Finish.
  auto encode = [b, reactor, request, response] {
    auto ids = b->tokenizer->Encode(request->text(), request->add_special_tokens());
    if (!ids.ok()) return reactor->Finish(ToGrpcStatus(ids.status()));
    for (int32_t id : *ids) response->add_token_ids(id);
    reactor->Finish(grpc::Status::OK);
  };
  if (Status st = b->tokenize->Submit(encode); !st.ok()) reactor->Finish(ToGrpcStatus(st));
  return reactor;
}

grpc::ServerUnaryReactor* RouterService::ModelInfo(grpc::CallbackServerContext* ctx,
                                                   const v1::ModelInfoRequest* request,
                                                   v1::ModelInfoResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  RouterBackend* b = backend_.load();
  if (Status st = Admit(ctx, b); !st.ok()) {
    reactor->Finish(ToGrpcStatus(st));
    return reactor;
  }
  response->set_model(b->meta.name);
  response->set_architecture(b->meta.architecture);
  response->set_max_context_tokens(b->meta.max_context_tokens);
  response->set_vocab_size(b->meta.vocab_size);
  response->set_prefill_workers(b->pool->num_prefill());
  response->set_decode_workers(b->pool->num_decode());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace tandem

#include "tandem/client/client.h"

#include <thread>

#include <grpcpp/grpcpp.h>

#include "tandem/rpc/grpc_status.h"
#include "tandem/rpc/tls_credentials.h"

namespace tandem {
namespace {

void FillParams(const GenerateParams& p, v1::GenerateRequest* r) {
  v1::SamplingParameters* s = r->mutable_sampling();
  s->set_temperature(p.temperature);
  s->set_top_k(p.top_k);
  s->set_top_p(p.top_p);
  s->set_min_p(p.min_p);
  s->set_repetition_penalty(p.repetition_penalty);
  s->set_presence_penalty(p.presence_penalty);
  s->set_frequency_penalty(p.frequency_penalty);
  if (p.seed) s->set_seed(*p.seed);
  v1::StoppingCriteria* st = r->mutable_stopping();
  st->set_max_tokens(p.max_tokens);
  for (const auto& stop : p.stop) st->add_stop(stop);
  for (int32_t id : p.stop_token_ids) st->add_stop_token_ids(id);
  st->set_ignore_eos(p.ignore_eos);
  r->set_logprobs(p.logprobs);
  r->set_top_logprobs(p.top_logprobs);
}

}  // namespace

v1::GenerateRequest TextRequest(std::string_view text, const GenerateParams& params) {
  v1::GenerateRequest r;
  r.set_text(std::string(text));
  FillParams(params, &r);
  return r;
}

v1::GenerateRequest ChatRequest(std::string_view system, std::string_view user,
                                const GenerateParams& params) {
  v1::GenerateRequest r;
  if (!system.empty()) {
    v1::ChatMessage* m = r.mutable_chat()->add_messages();
    m->set_role("system");
    m->set_content(std::string(system));
  }
  v1::ChatMessage* m = r.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content(std::string(user));
  FillParams(params, &r);
  return r;
}

v1::GenerateRequest TokenRequest(const std::vector<int32_t>& ids, const GenerateParams& params) {
  v1::GenerateRequest r;
  for (int32_t id : ids) r.mutable_token_ids()->add_ids(id);
  FillParams(params, &r);
  return r;
}

StatusOr<std::unique_ptr<Client>> Client::Connect(ClientOptions options) {
  if (options.address.empty()) return InvalidArgumentError("ClientOptions.address is empty");
  if (options.max_attempts < 1) options.max_attempts = 1;
  if (options.tls_cert_pem.empty() != options.tls_key_pem.empty()) {
    return InvalidArgumentError("ClientOptions.tls_cert_pem and tls_key_pem go together");
  }
  if (!options.tls_cert_pem.empty() && options.tls_ca_pem.empty()) {
    return InvalidArgumentError("ClientOptions.tls_cert_pem needs tls_ca_pem");
  }
  return std::unique_ptr<Client>(new Client(std::move(options)));
}

Client::Client(ClientOptions options) : options_(std::move(options)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  TlsConfig tls;
  tls.ca_pem = options_.tls_ca_pem;
  tls.cert_pem = options_.tls_cert_pem;
  tls.key_pem = options_.tls_key_pem;
  stub_ = v1::Tandem::NewStub(
      grpc::CreateCustomChannel(options_.address, MakeChannelCredentials(tls), args));
}

void Client::Prepare(grpc::ClientContext* ctx) const {
  ctx->set_deadline(std::chrono::system_clock::now() + options_.timeout);
  if (!options_.api_key.empty()) ctx->AddMetadata("authorization", "Bearer " + options_.api_key);
}

Status Client::WithRetries(const std::function<Status(bool* delivered)>& attempt) const {
  auto backoff = options_.retry_backoff;
  Status last;
  for (int32_t i = 0; i < options_.max_attempts; ++i) {
    if (i > 0) {
      std::this_thread::sleep_for(backoff);
      backoff *= 2;
    }
    bool delivered = false;
    last = attempt(&delivered);
    if (last.code() != StatusCode::kUnavailable || delivered) return last;
  }
  return last;
}

StatusOr<v1::GenerateFinal> Client::Generate(const v1::GenerateRequest& request,
                                             const ChunkCallback& on_chunk) {
  v1::GenerateFinal final;
  Status st = WithRetries([&](bool* delivered) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    auto reader = stub_->Generate(&ctx, request);
    v1::GenerateResponse msg;
    bool have_final = false, stopped = false;
    while (reader->Read(&msg)) {
      if (msg.has_chunk()) {
        *delivered = true;
        if (on_chunk && !on_chunk(msg.chunk())) {
          stopped = true;
          ctx.TryCancel();
          break;
        }
      } else if (msg.has_final()) {
        final = msg.final();
        have_final = true;
      }
    }
    if (stopped) {
      (void)reader->Finish();
      return CancelledError("the stream was cancelled by its chunk callback");
    }
    Status s = FromGrpcStatus(reader->Finish());
    if (s.ok() && !have_final) return UnavailableError("the stream ended without a final message");
    return s;
  });
  if (!st.ok()) return st;
  return final;
}

StatusOr<std::vector<int32_t>> Client::Tokenize(std::string_view text, bool add_special_tokens) {
  v1::TokenizeResponse resp;
  Status st = WithRetries([&](bool*) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::TokenizeRequest req;
    req.set_text(std::string(text));
    req.set_add_special_tokens(add_special_tokens);
    return FromGrpcStatus(stub_->Tokenize(&ctx, req, &resp));
  });
  if (!st.ok()) return st;
  return std::vector<int32_t>(resp.token_ids().begin(), resp.token_ids().end());
}

StatusOr<v1::ModelInfoResponse> Client::ModelInfo() {
  v1::ModelInfoResponse resp;
  Status st = WithRetries([&](bool*) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    return FromGrpcStatus(stub_->ModelInfo(&ctx, v1::ModelInfoRequest(), &resp));
  });
  if (!st.ok()) return st;
  return resp;
}

}  // namespace tandem

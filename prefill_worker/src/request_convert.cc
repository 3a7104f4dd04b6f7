#include "request_convert.h"

#include <algorithm>
#include <chrono>

#include "tandem/common/hash.h"

namespace tandem {
namespace {

StatusOr<DType> DtypeFromName(std::string_view name) {
  if (name == "float32" || name == "f32") return DType::kF32;
  if (name == "float16" || name == "f16") return DType::kF16;
  if (name == "bfloat16" || name == "bf16") return DType::kBF16;
  return InvalidArgumentError("unknown dtype '{}'", name);
}

// Explains a fingerprint mismatch by the first differing field when the ticket carries them.
std::string DescribeMismatch(const v1::KvLayoutInfo& info, const KvPageLayout& ours) {
  auto dtype = DtypeFromName(info.dtype());
  if (!dtype.ok()) return "";
  KvPageLayout theirs;
  theirs.model_hash = info.model_hash();
  theirs.dtype = *dtype;
  theirs.num_layers = info.num_layers();
  theirs.num_kv_heads = info.num_kv_heads();
  theirs.head_dim = info.head_dim();
  theirs.page_size = info.page_size();
  theirs.layout_version = info.layout_version();
  Status s = CheckCompatible(ours, theirs);
  return s.ok() ? "" : "; " + s.message();
}

SamplingParams FromProto(const v1::SamplingParameters& p) {
  SamplingParams s;
  s.temperature = p.temperature();
  s.top_k = p.top_k();
  s.top_p = p.top_p() == 0.0f ? 1.0f : p.top_p();  // 0 (unset) = off
  s.min_p = p.min_p();
  s.repetition_penalty = p.repetition_penalty() == 0.0f ? 1.0f : p.repetition_penalty();
  s.presence_penalty = p.presence_penalty();
  s.frequency_penalty = p.frequency_penalty();
  s.seed = p.seed();
  return s;
}

}  // namespace

uint64_t TransferIdFor(std::string_view request_id) { return Hash64(request_id); }

StatusOr<std::string> NormalizeEndpoint(std::string_view endpoint) {
  std::string_view e = endpoint;
  if (e.substr(0, 4) == "shm:" && e.size() > 4) return std::string(e);  // same-host transport
  if (e.substr(0, 6) == "tcp://") e.remove_prefix(6);
  const size_t colon = e.rfind(':');
  if (e.empty() || colon == std::string_view::npos || colon == 0 || colon + 1 == e.size() ||
      !std::all_of(e.begin() + colon + 1, e.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return InvalidArgumentError(
        "ticket.endpoint must be \"host:port\", \"tcp://host:port\" or \"shm:<socket>\", got "
        "'{}'",
        endpoint);
  }
  return std::string(e);
}

StatusOr<std::shared_ptr<PrefillJob>> MakePrefillJob(const v1::PrefillRequest& req,
                                                     const ConvertLimits& limits) {
  const ModelConfig& config = *limits.config;
  if (req.request_id().empty()) return InvalidArgumentError("request_id must not be empty");
  if (req.prompt_token_ids().empty()) {
    return InvalidArgumentError("prompt_token_ids must not be empty");
  }
  if (req.prompt_token_ids_size() > config.max_position_embeddings) {
    return InvalidArgumentError("prompt_token_ids has {} tokens, the model's context is {}",
                                req.prompt_token_ids_size(), config.max_position_embeddings);
  }
  for (int i = 0; i < req.prompt_token_ids_size(); ++i) {
    const int32_t t = req.prompt_token_ids(i);
    if (t < 0 || t >= config.vocab_size) {
      return InvalidArgumentError("prompt_token_ids[{}] = {} is outside the vocabulary [0, {})", i,
                                  t, config.vocab_size);
    }
  }
  SamplingParams sampling = FromProto(req.sampling());
  if (req.top_logprobs() < 0 || req.top_logprobs() > 20) {
    return InvalidArgumentError("top_logprobs must be in [0, 20], got {}", req.top_logprobs());
  }
  sampling.top_logprobs = req.logprobs() ? req.top_logprobs() : 0;
  if (Status s = sampling.Validate(); !s.ok()) {
    return InvalidArgumentError("sampling.{}", s.message());
  }

  // Compatibility before anything is computed or sent.
  const v1::TransferTicket& t = req.ticket();
  const uint64_t ours = limits.layout.Fingerprint();
  if (t.layout().fingerprint() != ours) {
    return FailedPreconditionError(
        "ticket.layout.fingerprint {:#x} does not match this prefill worker's {:#x} ({}){}",
        t.layout().fingerprint(), ours, limits.layout.Describe(),
        DescribeMismatch(t.layout(), limits.layout));
  }
  TANDEM_ASSIGN_OR_RETURN(std::string endpoint, NormalizeEndpoint(t.endpoint()));
  const int64_t page_size = limits.layout.page_size;
  const int64_t needed = (req.prompt_token_ids_size() + page_size - 1) / page_size;
  if (t.block_ids_size() < needed) {
    return InvalidArgumentError("ticket.block_ids has {} blocks, the prompt's {} tokens need {}",
                                t.block_ids_size(), req.prompt_token_ids_size(), needed);
  }

  // The lease only says by when the transfer must start (the scheduler starts it on Submit);
  // once started, the request's own deadline bounds it.
  const Deadline deadline = limits.deadline;
  if (t.lease_deadline_unix_micros() > 0) {
    const auto lease_sys = std::chrono::system_clock::time_point(
        std::chrono::microseconds(t.lease_deadline_unix_micros()));
    if (lease_sys <= std::chrono::system_clock::now()) {
      return DeadlineExceededError("ticket.lease_deadline_unix_micros has already passed");
    }
  }

  auto job = std::make_shared<PrefillJob>();
  job->request_id = req.request_id();
  job->prompt.assign(req.prompt_token_ids().begin(), req.prompt_token_ids().end());
  job->sampling = sampling;
  job->deadline = deadline;
  job->ticket.request_id = TransferIdFor(req.request_id());
  job->ticket.dest_endpoint = std::move(endpoint);
  job->ticket.dest_blocks.assign(t.block_ids().begin(), t.block_ids().begin() + needed);
  job->ticket.dest_fingerprint = t.layout().fingerprint();
  job->ticket.deadline = deadline;
  return job;
}

void FillResponse(const PrefillResult& result, bool logprobs, v1::PrefillResponse* resp) {
  resp->set_first_token_id(result.first_token.token);
  if (logprobs) {
    v1::TokenLogprobs* lp = resp->mutable_logprobs();
    lp->set_logprob(result.first_token.logprob);
    for (const TokenLogprob& t : result.first_token.top_logprobs) {
      v1::TokenLogprob* e = lp->add_top();
      e->set_token_id(t.token);
      e->set_logprob(t.logprob);
    }
  }
  resp->set_queue_seconds(result.queue_seconds);
  resp->set_compute_seconds(result.compute_seconds);
  resp->set_transfer_seconds(result.transfer_seconds);
  resp->set_transfer_bytes(result.transfer_bytes);
}

}  // namespace tandem

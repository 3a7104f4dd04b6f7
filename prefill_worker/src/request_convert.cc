#include "request_convert.h"

#include <algorithm>
#include <chrono>

#include "tandem/kvtransfer/transports.h"
#include "tandem/worker/kv_pages.h"
#include "tandem/worker/proto_convert.h"

namespace tandem {
namespace {

// Explains a fingerprint mismatch by the first differing field when the ticket carries them.
std::string DescribeMismatch(const v1::KvLayoutInfo& info, const KvPageLayout& ours) {
  StatusOr<KvPageLayout> theirs = FromProto(info);
  if (!theirs.ok()) return "";
  Status s = CheckCompatible(ours, *theirs);
  return s.ok() ? "" : "; " + s.message();
}

}  // namespace

StatusOr<std::string> NormalizeEndpoint(std::string_view endpoint) {
  std::string_view e = endpoint;
  if (KvTransportOfEndpoint(e) == kKvTransportShm && e.size() > 4) return std::string(e);
  if (KvTransportOfEndpoint(e) == kKvTransportCudaIpc && e.size() > 9) return std::string(e);
  const bool nccl = KvTransportOfEndpoint(e) == kKvTransportNccl;
  if (nccl) e.remove_prefix(5);
  if (e.substr(0, 6) == "tcp://") e.remove_prefix(6);
  const size_t colon = e.rfind(':');
  if (e.empty() || colon == std::string_view::npos || colon == 0 || colon + 1 == e.size() ||
      !std::all_of(e.begin() + colon + 1, e.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return InvalidArgumentError(
        "ticket.endpoint must be \"host:port\", \"tcp://host:port\", \"nccl:host:port\", "
        "\"shm:<socket>\" or \"cuda_ipc:<socket>\", got '{}'",
        endpoint);
  }
  return (nccl ? "nccl:" : "") + std::string(e);
}

StatusOr<std::shared_ptr<PrefillJob>> MakePrefillJob(const v1::PrefillRequest& req,
                                                     const ConvertLimits& limits) {
  const ModelConfig& config = *limits.config;
  if (req.request_id().empty()) return InvalidArgumentError("request_id must not be empty");
  if (req.prompt_token_ids().empty()) {
    return InvalidArgumentError("prompt_token_ids must not be empty");
  }
  const int64_t sequence =
      int64_t{req.prompt_token_ids_size()} + req.generated_token_ids_size();  // K/V to compute
  if (sequence > config.max_position_embeddings) {
    return InvalidArgumentError(
        "prompt_token_ids ({}) + generated_token_ids ({}) exceed the model's context of {}",
        req.prompt_token_ids_size(), req.generated_token_ids_size(),
        config.max_position_embeddings);
  }
  for (int i = 0; i < req.prompt_token_ids_size(); ++i) {
    const int32_t t = req.prompt_token_ids(i);
    if (t < 0 || t >= config.vocab_size) {
      return InvalidArgumentError("prompt_token_ids[{}] = {} is outside the vocabulary [0, {})", i,
                                  t, config.vocab_size);
    }
  }
  for (int i = 0; i < req.generated_token_ids_size(); ++i) {
    const int32_t t = req.generated_token_ids(i);
    if (t < 0 || t >= config.vocab_size) {
      return InvalidArgumentError("generated_token_ids[{}] = {} is outside the vocabulary [0, {})",
                                  i, t, config.vocab_size);
    }
  }
  TANDEM_ASSIGN_OR_RETURN(SamplingParams sampling,
                          SamplingForRequest(req.sampling(), req.logprobs(), req.top_logprobs()));

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
  const int64_t needed = (sequence + page_size - 1) / page_size;
  if (t.block_ids_size() < needed) {
    return InvalidArgumentError("ticket.block_ids has {} blocks, the prompt's {} tokens need {}",
                                t.block_ids_size(), sequence, needed);
  }
  if (t.first_block() < 0 || t.first_block() >= needed) {
    return InvalidArgumentError(
        "ticket.first_block must be in [0, {}) (the prompt's {} tokens fill {} blocks), got {}",
        needed, sequence, needed, t.first_block());
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
  job->prompt.insert(job->prompt.end(), req.generated_token_ids().begin(),
                     req.generated_token_ids().end());
  job->num_generated = req.generated_token_ids_size();
  job->sampling = sampling;
  job->deadline = deadline;
  job->ticket.request_id = TransferId(req.request_id());
  job->ticket.dest_endpoint = std::move(endpoint);
  job->first_block = t.first_block();
  job->ticket.dest_blocks.assign(t.block_ids().begin() + t.first_block(),
                                 t.block_ids().begin() + needed);
  job->ticket.dest_fingerprint = t.layout().fingerprint();
  job->ticket.deadline = deadline;
  job->ticket.token = t.transfer_token();
  return job;
}

void FillResponse(const PrefillResult& result, bool logprobs, v1::PrefillResponse* resp) {
  resp->set_first_token_id(result.first_token.token);
  if (logprobs) ToProto(result.first_token, resp->mutable_logprobs());
  resp->set_queue_seconds(result.queue_seconds);
  resp->set_compute_seconds(result.compute_seconds);
  resp->set_transfer_seconds(result.transfer_seconds);
  resp->set_transfer_bytes(result.transfer_bytes);
  resp->set_transfer_wire_seconds(result.wire_seconds);
  resp->set_computed_tokens(result.computed_tokens);
}

}  // namespace tandem

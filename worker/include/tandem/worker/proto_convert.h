// The internal services' messages <-> engine and kvtransfer types, written once for the prefill
// and the decode worker: the KV layout of tickets and registrations, a request's stopping and
// logprob reporting (its sampling: sampling_proto.h, which the router links too).
//
// Logprobs follow OpenAI's rule, the same in both workers and the router: a request reports
// log-probabilities only when `logprobs` is set, and `top_logprobs` alternatives only then
// (a worker ignores top_logprobs without logprobs; the router refuses such a request).
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>

#include "tandem/common/status.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/sampling.h"
#include "tandem/kvtransfer/layout.h"
#include "tandem/v1/generate.pb.h"
#include "tandem/v1/internal.pb.h"
#include "tandem/worker/sampling_proto.h"

namespace tandem {

// Sets every field of `out`: model_hash, dtype (DTypeName), geometry, layout_version and the
// fingerprint.
void ToProto(const KvPageLayout& layout, v1::KvLayoutInfo* out);
// The layout `info` describes; INVALID_ARGUMENT naming layout.dtype when its dtype is not a name
// ParseDType accepts. The fingerprint is neither recomputed nor checked (callers compare
// info.fingerprint() with their own layout's).
StatusOr<KvPageLayout> FromProto(const v1::KvLayoutInfo& info);

// max_tokens, stop strings, stop token ids and ignore_eos of `stopping` into `out`.
void FromProto(const v1::StoppingCriteria& stopping, GenerationRequest* out);

// A sampled token's log-probability and its alternatives (as many as the sampler reported).
void ToProto(const SampleResult& sample, v1::TokenLogprobs* out);

}  // namespace tandem

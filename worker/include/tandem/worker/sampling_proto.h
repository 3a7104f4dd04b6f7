// A request's sampling parameters, tandem.v1 -> engine, written once for the router and both
// workers: the router validates with the same rules the workers sample with. Light: proto and
// the sampling library only (no engine, no forward pass — the router links it).
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>

#include "tandem/common/status.h"
#include "tandem/engine/sampling.h"
#include "tandem/v1/generate.pb.h"

namespace tandem {

// The client's sampling parameters; 0 (unset) top_p and repetition_penalty mean off (1).
// Not validated; top_logprobs stays 0 (see SamplingForRequest).
SamplingParams FromProto(const v1::SamplingParameters& p);

// What a worker samples with for one request: FromProto(sampling) with
// top_logprobs = logprobs ? top_logprobs : 0, validated. INVALID_ARGUMENT with field
// "top_logprobs" when it is outside [0, 20] (logprobs set or not), else with field and message
// naming "sampling.<field>".
StatusOr<SamplingParams> SamplingForRequest(const v1::SamplingParameters& sampling, bool logprobs,
                                            int32_t top_logprobs);

}  // namespace tandem

// The servers' own figures for a `tandem bench` run: the prefill workers' Prometheus counters,
// scraped from their /metrics before and after a stretch of requests and subtracted.
//
// Only series labelled role="prefill" count, summed over every URL given, so the router's and
// decode workers' endpoints may be listed too (their tandem_prompt_tokens_total is not added).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/common/status.h"

namespace tandem::bench {

struct PrefillFigures {
  double prompt_tokens = 0;   // tandem_prompt_tokens_total: prompt tokens prefilled
  double hit_tokens = 0;      // tandem_prefix_cache_hit_tokens_total: of those, from the cache
  double pages_sent = 0;      // tandem_kv_pages_sent_total: KV pages shipped to decode workers
  double pages_not_sent = 0;  // tandem_kv_pages_not_sent_total: prompt pages decode workers held
  double bytes_sent = 0;      // tandem_kv_transfer_bytes_sum: KV bytes shipped (every transport)

  double computed_tokens() const { return prompt_tokens - hit_tokens; }
  PrefillFigures operator-(const PrefillFigures& before) const;
  nlohmann::json ToJson() const;
};

// Sums the figures over the role="prefill" series of a Prometheus text exposition.
PrefillFigures ParsePrefillFigures(const std::string& exposition);

// Scrapes every URL ("http://HOST:PORT/metrics"; the path defaults to /metrics) and adds their
// figures up. UNAVAILABLE naming the URL when one cannot be read.
StatusOr<PrefillFigures> ScrapePrefillFigures(const std::vector<std::string>& urls);

}  // namespace tandem::bench

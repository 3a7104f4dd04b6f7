// The single-process reference the worker and cluster tests compare against: every request
// through one Generator on `engine`, run to the end; the tokens per request, in request order.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include <gtest/gtest.h>

#include "tandem/engine/engine.h"

namespace tandem::testing_engine {

inline std::vector<std::vector<int32_t>> ReferenceTokens(
    Engine& engine, const std::vector<GenerationRequest>& reqs) {
  Generator g(engine, GeneratorOptions{});
  std::map<int64_t, size_t> which;
  for (size_t i = 0; i < reqs.size(); ++i) which[*g.Add(reqs[i])] = i;
  std::vector<std::vector<int32_t>> out(reqs.size());
  std::vector<TokenEvent> ev;
  for (int steps = 0; g.HasWork() && steps < 100000; ++steps) {
    ev.clear();
    EXPECT_TRUE(g.Step(&ev).ok());
    for (auto& e : ev) out[which[e.request]].push_back(e.token);
  }
  return out;
}

}  // namespace tandem::testing_engine

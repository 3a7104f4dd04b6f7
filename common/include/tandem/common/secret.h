// Shared secrets: the cluster credential that authenticates the router, the workers and their KV
// transfers to one another (tandem/rpc/cluster_auth.h), and a comparison that takes the same
// time wherever two secrets differ.
//
// Thread safety: pure functions (LoadClusterKey reads the environment and a file).
#pragma once

#include <string>
#include <string_view>

#include "tandem/common/status.h"

namespace tandem {

// The environment variable holding the cluster key itself, when no key file is given.
inline constexpr char kClusterKeyEnv[] = "TANDEM_CLUSTER_KEY";
// Shortest accepted cluster key, in bytes.
inline constexpr size_t kMinClusterKeyBytes = 16;

// The cluster key: the contents of `file` (surrounding whitespace removed) when `file` is not
// empty, else $TANDEM_CLUSTER_KEY, else "" (no key: internal services accept any caller).
// INVALID_ARGUMENT naming the file or the variable for an unreadable file or a key shorter than
// kMinClusterKeyBytes.
StatusOr<std::string> LoadClusterKey(const std::string& file);

// A fresh random cluster key: 32 bytes from the kernel's CSPRNG, hex (64 characters). INTERNAL
// when the kernel gives no randomness.
StatusOr<std::string> NewClusterKey();

// a == b, in time that depends only on the lengths.
bool SecretEquals(std::string_view a, std::string_view b);

}  // namespace tandem

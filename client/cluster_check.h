// Connecting to a cluster, the part every client shares: reading the list of
// shard addresses, and checking that the servers at those addresses are the
// shards 0..S-1 of one cluster, each exactly once, and in which order.
//
// ps::Client::Connect, psctl and the tests' raw clients all use it. Nothing
// here talks to the network: each caller asks every address for its
// ClusterInfo in its own way (with retries, with a token, ...) and hands the
// answers here.
//
// Thread safety: every function is thread-safe.
#ifndef PS_CLIENT_CLUSTER_CHECK_H_
#define PS_CLIENT_CLUSTER_CHECK_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps {

// A shard's address, HOST:PORT.
struct ServerAddress {
  // A DNS name, an IPv4 address, or an IPv6 address in brackets ("[::1]"),
  // as given.
  std::string host;
  // 1..65535.
  uint16_t port = 0;

  // "HOST:PORT" with the port in decimal without leading zeros: the address
  // to dial.
  std::string ToString() const;
};

// Parses "HOST:PORT". INVALID_ARGUMENT, naming the entry and what is wrong
// with it, for an empty host, a missing or non-numeric port, a port of 0 or
// above 65535, a bare IPv6 address, or a host with characters no host name
// or address has (spaces, '/', a gRPC scheme such as "dns:///").
absl::StatusOr<ServerAddress> ParseServerAddress(absl::string_view text);

// Checks a list of shard addresses: at least one, each parses, and none is
// listed twice (hosts compare case-insensitively, ports as numbers).
// INVALID_ARGUMENT naming the first bad or repeated entry.
absl::Status CheckServerAddresses(const std::vector<std::string>& addresses);

// Splits "HOST:PORT,HOST:PORT,..." (spaces around entries are ignored) and
// checks it as CheckServerAddresses does; INVALID_ARGUMENT also for an empty
// entry. Returns each entry as ServerAddress::ToString writes it.
absl::StatusOr<std::vector<std::string>> ParseServerList(
    absl::string_view text);

// Checks what the servers said they are: infos[i] is the ClusterInfo that
// addresses[i] answered. They must agree on num_shards, block_size,
// consistency, num_workers and quorum; num_shards and block_size must be
// above 0; there must be num_shards addresses, and their shard indexes must
// cover 0..num_shards-1 once each. Returns the shard order: element k is the
// position in `addresses` of shard k. FAILED_PRECONDITION, "not one cluster:
// ...", naming the addresses, otherwise. Two clusters started with the same
// settings cannot be told apart: a ClusterInfo names no cluster.
// REQUIRES: infos.size() == addresses.size() > 0.
absl::StatusOr<std::vector<size_t>> CheckCluster(
    const std::vector<std::string>& addresses,
    const std::vector<v1::ClusterInfo>& infos);

// The same when some servers did not answer (infos[i] is empty): the answers
// there are must pass the same checks, except that a shard index nobody
// claimed is allowed when a server did not answer. Each server that did not
// answer takes the lowest index no answer claimed, in the order of
// `addresses`; with no answer at all, the order is that of `addresses`.
// REQUIRES: infos.size() == addresses.size() > 0.
absl::StatusOr<std::vector<size_t>> PlaceShards(
    const std::vector<std::string>& addresses,
    const std::vector<std::optional<v1::ClusterInfo>>& infos);

}  // namespace ps

#endif  // PS_CLIENT_CLUSTER_CHECK_H_

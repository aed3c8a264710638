// The coordinator of cluster checkpoints (DESIGN.md, "Cluster checkpoints").
//
// Shard 0 coordinates (the only shard of a one-shard cluster trivially):
// for checkpoint N = 1 + the highest number any shard has used, it asks
// every shard at once to write part N (its own through the Checkpointer,
// the others over AdminService.WriteCheckpointPart), and once every part is
// complete it has every shard record the cluster manifest of N
// (CommitCheckpoint). A part that fails leaves N incomplete: no shard
// records its manifest, and each deletes the orphan part once a later
// checkpoint completes.
//
// In async mode the parts are cut when each shard receives its request:
// they are apart by the spread of those moments (CheckpointResponse's
// cut_spread_seconds, a few milliseconds on one machine). In sync mode they
// are one cut before one step K (docs/checkpoints.md): the coordinator
// first holds every shard's steps (HoldSyncSteps: no shard applies the step
// it collects, or a later one, and each answers that step), picks K, the
// highest answer, and asks every shard for its part cut before K: each lets
// its blocks apply the steps below K (the workers are lock-stepped, so this
// is at most one step), writes its part, and lets training go on. The
// manifest records K and that the parts are one cut.
//
// Thread safety: Make may be called from any thread; one checkpoint at a
// time is the caller's to ensure (the server's checkpoint thread).
#ifndef PS_SERVER_CLUSTER_CHECKPOINT_H_
#define PS_SERVER_CLUSTER_CHECKPOINT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/ps/v1/ps.grpc.pb.h"
#include "server/checkpoint.h"

namespace ps {

struct PeerOptions {
  // Every shard's address, by shard index ("" or this shard's own entry
  // are not called). Empty: a one-shard cluster.
  std::vector<std::string> peers;
  // The bearer token for the peers' AdminService ("" = none).
  std::string admin_token;
  // PEM roots to check the peers' TLS certificates against; "" = plaintext.
  std::string tls_roots;
  // The deadline of one peer's call; a part of a large shard takes long.
  absl::Duration timeout = absl::Minutes(10);
};

// The peers' AdminService stubs, made once.
class Peers {
 public:
  Peers(uint32_t shard_index, PeerOptions options);

  // AdminService of shard i; nullptr for this shard or an unknown one.
  v1::AdminService::Stub* admin(uint32_t i) const;
  // A context with the token and the deadline.
  std::unique_ptr<grpc::ClientContext> Context() const;
  size_t size() const { return options_.peers.size(); }

 private:
  const uint32_t shard_index_;
  const PeerOptions options_;
  std::vector<std::unique_ptr<v1::AdminService::Stub>> stubs_;
};

class ClusterCheckpointer {
 public:
  // REQUIRES: local and peers outlive this; peers lists num_shards
  // addresses when num_shards > 1.
  // `store`: this shard's, whose steps a sync cut holds (null: async) for
  // at most `hold` (1..600 s: longer than the parts' cut timeout, so that
  // a hold never runs out before its cut; a coordinator that dies stalls
  // training that long at most).
  ClusterCheckpointer(Checkpointer* local, Store* store, const Peers* peers,
                      uint32_t shard_index, uint32_t num_shards,
                      uint64_t block_size,
                      absl::Duration hold = absl::Seconds(90));

  // Makes cluster checkpoint N and answers N, every part (path, size, sync
  // step), the bytes in all, the seconds and the cut spread. The error of
  // the first shard that failed otherwise (its code, its message naming
  // it); N is then incomplete.
  absl::StatusOr<v1::CheckpointResponse> Make();

 private:
  bool sync() const { return store_ != nullptr && store_->options().sync; }
  // Sync: holds every shard's steps and answers the step to cut before;
  // the error of the first shard that failed (the holds are released).
  absl::StatusOr<uint64_t> HoldEveryShard();
  // Ends the holds of a checkpoint that failed, on every shard.
  void ReleaseEveryShard();

  Checkpointer* const local_;
  Store* const store_;
  const Peers* const peers_;
  const uint32_t shard_index_;
  const uint32_t num_shards_;
  const uint64_t block_size_;
  const double hold_seconds_;
};

}  // namespace ps

#endif  // PS_SERVER_CLUSTER_CHECKPOINT_H_

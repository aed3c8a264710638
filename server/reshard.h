// Restoring a cluster checkpoint into another shape (num_shards or
// block_size): each shard reads every part and keeps what it owns under its
// own plan.
//
// Re-placement is per entry kind: a dense variable's block records move
// whole to their new owner when block_size is the same (exact), and are
// re-cut into blocks of the new size when it differs, which needs every
// block of the variable to be at one step with the same per-step state
// (always so in sync mode; in async mode blocks step on their own and the
// restore is refused, naming a variable and its steps). A kind added behind
// the Entry seam (a sparse table's rows) adds its own re-placement beside
// RecutDense, keyed by the record's kind.
//
// Exactly-once tables and sessions' seqs count per shard, so they do not
// survive a re-shard: sessions keep their epochs, and seqs start afresh.
#ifndef PS_SERVER_RESHARD_H_
#define PS_SERVER_RESHARD_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/ps/storage/v1/checkpoint.pb.h"
#include "server/env.h"
#include "server/store.h"

namespace ps {

// Restores into `store` (no variables yet) the blocks it owns of the
// checkpoint described by `manifest`, whose parts are the folders `parts`
// (one per shard of the checkpoint, each verified). Returns a line saying
// what was moved. FAILED_PRECONDITION when a variable cannot be re-cut into
// the new block_size; DATA_LOSS when the parts do not hold together.
absl::StatusOr<std::string> RestoreResharded(
    Env* env, const storage::v1::ClusterManifest& manifest,
    const std::vector<std::filesystem::path>& parts, Store* store);

// Re-cuts the blocks of one dense variable of `size` values, cut at
// `from_block_size` (`records`, every block once, any order), into the
// blocks `wanted` of `to_block_size`. FAILED_PRECONDITION when the blocks
// are not at one step with the same per-step state.
absl::StatusOr<std::vector<storage::v1::BlockRecord>> RecutDense(
    const std::string& variable, uint64_t size,
    std::vector<storage::v1::BlockRecord> records, uint64_t from_block_size,
    uint64_t to_block_size, const std::vector<uint64_t>& wanted);

}  // namespace ps

#endif  // PS_SERVER_RESHARD_H_

// Durable checkpoints: one shard's parts of the cluster's checkpoints.
//
// Cluster checkpoint N (DESIGN.md, "Cluster checkpoints") is one part per
// shard and a cluster manifest. Shard i of S writes its part as the folder
// ckpt-<N>-shard-<i>-of-<S> holding state.pb (configs and variables),
// blocks.bin (every block of the shard: values, optimizer state, step, sync
// aggregation, exactly-once table) and MANIFEST (the shard layout and each
// file's size and CRC-32, itself checksummed). A part is written as
// <name>.tmp, every file and the folder fsynced, then renamed into place and
// the parent folder fsynced. Once every part is complete the coordinator has
// every shard write ckpt-<N>.cluster (the ClusterManifest: every part's
// size, MANIFEST checksum and sync step), the same way; N counts only
// through it. A crash at any moment leaves the previous complete checkpoints
// as they were.
//
// Part names carry the shard, so one folder may hold every shard's parts
// (a shared volume) or one shard's: a shard lists, removes and loads only
// its own parts, and reads another's only to verify it or to re-shard.
// Every file operation goes through an Env (server/env.h), so tests can
// make the disk fail.
//
// Thread safety: every method may be called from any thread; writes are
// serialized. Training goes on during a write (see Store::Snapshot).
#ifndef PS_SERVER_CHECKPOINT_H_
#define PS_SERVER_CHECKPOINT_H_

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/ps/storage/v1/checkpoint.pb.h"
#include "proto/ps/v1/ps.pb.h"
#include "server/env.h"
#include "server/store.h"

namespace ps {

struct CheckpointOptions {
  // The folder of this shard's checkpoints; created when missing.
  std::string dir;
  // Complete checkpoints kept; older ones are deleted after each write.
  // More costs disk; fewer leaves fewer to fall back on if one is damaged.
  int keep = 3;
  // The file system; null = the real one.
  Env* env = nullptr;
  // Sync mode: how long a cut may wait for every block to apply the steps
  // below it (see WritePart). Longer rides out slower workers; the steps
  // from the cut on wait meanwhile.
  absl::Duration sync_cut_timeout = absl::Seconds(30);
};

class Checkpointer {
 public:
  // REQUIRES: store outlives the checkpointer; options.keep >= 1.
  Checkpointer(CheckpointOptions options, Store* store);

  // Makes the folder ready before the shard serves: creates it, removes the
  // unfinished checkpoints (ckpt-<n>.tmp) a crash left, and proves that it
  // can be written by writing, fsyncing and removing a small file. An error
  // (PERMISSION_DENIED for a read-only or foreign folder, RESOURCE_EXHAUSTED
  // for a full disk) names the folder and the reason: a shard that could
  // not checkpoint would lose every push at its next restart.
  absl::Status Prepare() ABSL_LOCKS_EXCLUDED(mu_);

  // Writes this shard's part of cluster checkpoint `number` (0: the next
  // above every number this folder holds). ABORTED when `number` is not
  // above every number of this shard's parts and the cluster manifests
  // here (another coordinator took it). On an error nothing is left that
  // could be taken for a complete part.
  //
  // `cut_before` (sync mode): the part is a consistent cut before that step:
  // the shard lets every block apply the steps below it, holds the later
  // ones while it writes (Store::CutBefore), and records the step with
  // sync_cut set. DEADLINE_EXCEEDED when a block does not get there within
  // sync_cut_timeout.
  absl::StatusOr<v1::CheckpointPart> WritePart(
      uint64_t number, std::optional<uint64_t> cut_before = std::nullopt)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Records that cluster checkpoint `commit.number` is complete: writes its
  // cluster manifest (unless this folder has it already, as a shared one
  // does once one shard wrote it), then keeps the newest `keep` complete
  // checkpoints and deletes this shard's older parts. INVALID_ARGUMENT when
  // the parts do not form the cluster (one per shard, in order) or this
  // shard's part is not the one it wrote.
  absl::Status Commit(const v1::CommitCheckpointRequest& commit)
      ABSL_LOCKS_EXCLUDED(mu_);

  // A checkpoint of a one-shard cluster: WritePart, then Commit. With more
  // shards, only the part (which counts once a coordinator commits it).
  // Answers with the number, the path, the bytes written and the seconds.
  absl::StatusOr<v1::CheckpointResponse> Write() ABSL_LOCKS_EXCLUDED(mu_);

  // The complete cluster checkpoints whose manifests this folder holds,
  // newest first, and the highest number used here.
  absl::StatusOr<v1::ListCheckpointsResponse> List() ABSL_LOCKS_EXCLUDED(mu_);

  // Loads the newest complete cluster checkpoint into the store, which must
  // hold no variables yet. A checkpoint whose manifest, own part or (in a
  // shared folder) any other part is torn, corrupt or missing is skipped
  // with a warning that names it, and the one before is tried. Made with
  // another num_shards or block_size, it is re-sharded: every part it lists
  // must be in this folder (a shared one), and each entry's blocks move to
  // their new owners (see server/reshard.h). Returns the checkpoint's
  // number and what was loaded, or number 0 when there is none. DATA_LOSS
  // when there are checkpoints but none can be loaded; FAILED_PRECONDITION
  // when the newest cannot be re-sharded into this shape (the message says
  // why).
  struct Loaded {
    uint64_t number = 0;
    storage::v1::ClusterManifest manifest;
    std::string path;     // this shard's part, or the folder re-sharded from
    std::string summary;  // what a re-shard moved; "" otherwise
  };
  absl::StatusOr<Loaded> LoadNewest() ABSL_LOCKS_EXCLUDED(mu_);

  // Sync mode: goes back, while serving, to this shard's part of complete
  // cluster checkpoint `number` (a peer restarted from it), through
  // Store::RollBack. Answers the step the workers resume from.
  // FAILED_PRECONDITION when this folder has no such complete checkpoint,
  // it is not a sync cut, or it has another shape; DATA_LOSS for a damaged
  // part; Store::RollBack's errors.
  absl::StatusOr<uint64_t> RollBackTo(uint64_t number) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Writes every file of a part into folder `tmp`, fsynced; returns the
  // bytes written and the CRC-32 of its MANIFEST.
  absl::StatusOr<std::pair<uint64_t, uint32_t>> WriteFolder(
      const std::filesystem::path& tmp, absl::Time start, uint64_t* sync_step,
      uint64_t* block_steps) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::CheckpointPart> WritePartLocked(
      uint64_t number, std::optional<uint64_t> cut_before)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CommitLocked(const v1::CommitCheckpointRequest& commit)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The highest number of this shard's parts and of the cluster manifests.
  absl::StatusOr<uint64_t> HighestNumber() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CheckpointOptions options_;
  Env* const env_;
  Store* const store_;
  absl::Mutex mu_;
  uint64_t highest_written_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ps

#endif  // PS_SERVER_CHECKPOINT_H_

// Durable checkpoints of one shard.
//
// A checkpoint is a folder ckpt-<n> (n increasing) holding state.pb (configs
// and variables), blocks.bin (every block of this shard: values, optimizer
// state, step, sync aggregation, exactly-once table) and MANIFEST (the shard
// layout and each file's size and CRC-32, itself checksummed). It is written
// as ckpt-<n>.tmp, every file and the folder fsynced, then renamed into place
// and the parent folder fsynced: a crash at any moment leaves the previous
// complete checkpoints as they were. Every file operation goes through an
// Env (server/env.h), so tests can make the disk fail.
//
// Thread safety: Write and LoadNewest may be called from any thread; writes
// are serialized. Training goes on during a write (see
// Store::Snapshot).
#ifndef PS_SERVER_CHECKPOINT_H_
#define PS_SERVER_CHECKPOINT_H_

#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
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

  // Writes a checkpoint and deletes those beyond `keep`. Answers with its
  // path, the bytes written and the seconds it took. On an error nothing
  // is left that could be taken for a complete checkpoint.
  absl::StatusOr<v1::CheckpointResponse> Write() ABSL_LOCKS_EXCLUDED(mu_);

  // Loads the newest complete checkpoint into the store, which must hold no
  // variables yet. A torn or corrupt checkpoint (bad checksum, missing file)
  // is skipped with a warning that names it, and the one before is tried.
  // Returns the folder loaded, or "" when there is none. DATA_LOSS when there
  // are checkpoints but none can be loaded.
  // FAILED_PRECONDITION when it was made with another num_shards, block_size
  // or shard_index (the message names both values).
  absl::StatusOr<std::string> LoadNewest() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Writes every file of a checkpoint into folder `tmp`, fsynced; returns
  // the bytes written.
  absl::StatusOr<uint64_t> WriteFolder(const std::filesystem::path& tmp,
                                       absl::Time start)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CheckpointOptions options_;
  Env* const env_;
  Store* const store_;
  absl::Mutex mu_;
  uint64_t next_number_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace ps

#endif  // PS_SERVER_CHECKPOINT_H_

// The workers' sessions on one shard (DESIGN.md, "Worker sessions"): for
// each worker id, the epoch of its current session and the highest push seq
// this shard has seen in it. Like an idempotent producer's id and epoch
// (Kafka's KIP-98): a newer epoch fences the older one, and seqs count from
// 1 within an epoch, so that a restarted worker whose counter went back is
// never taken for a retry of pushes it did not send.
//
// Epochs are picked above every epoch the shard knows for the worker and at
// least the shard's clock in microseconds, so that after a whole cluster was
// restored from a checkpoint (which forgets the epochs opened since), a new
// session still gets an epoch that no live worker used.
//
// Thread safety: every method may be called concurrently.
#ifndef PS_SERVER_SESSIONS_H_
#define PS_SERVER_SESSIONS_H_

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "proto/ps/storage/v1/checkpoint.pb.h"

namespace ps {

class WorkerSessions {
 public:
  // How far a push's seq may run ahead of the highest this shard has seen
  // in its session. A client has at most a few requests in flight per
  // shard; the bound keeps one push with seq 2^64-1 from making every
  // later seq of the worker look like a repeat.
  static constexpr uint64_t kMaxSeqAhead = uint64_t{1} << 20;
  // How far past a shard's clock an epoch given to it may lie, in
  // microseconds (a day): epochs are picked at the clock of the shard that
  // picks them, and shards' clocks differ by far less. One far in the
  // future would fence the worker's real sessions for as long.
  static constexpr uint64_t kMaxEpochAheadMicros = uint64_t{86400} * 1000000;

  // `shard_index` only names the shard in messages; at most `max_workers`
  // worker ids are held (0 = no limit).
  WorkerSessions(uint32_t shard_index, uint64_t max_workers)
      : shard_index_(shard_index), max_workers_(max_workers) {}

  // Opens a session of `worker`. `epoch` 0: picks one above every epoch this
  // shard knows for the worker (and at least the clock, `now_micros`);
  // otherwise takes `epoch`, which must not be below the known one (equal:
  // a repeat of the same open). Returns the worker's epoch now.
  // INVALID_ARGUMENT for an empty worker id or an epoch more than
  // kMaxEpochAheadMicros past the clock; ABORTED when `epoch` is below the
  // known one (a newer session exists: open again); RESOURCE_EXHAUSTED past
  // max_workers.
  absl::StatusOr<uint64_t> Open(absl::string_view worker, uint64_t epoch,
                                uint64_t now_micros) ABSL_LOCKS_EXCLUDED(mu_);

  // Admits a push of (worker, epoch, seq), seq > 0: an epoch above the known
  // one is taken (the worker opened it on the other shards while this one
  // was away); the known one is checked; an older one is fenced
  // (FAILED_PRECONDITION). INVALID_ARGUMENT for epoch 0, an epoch more than
  // kMaxEpochAheadMicros past the clock, or a seq more than kMaxSeqAhead past
  // the highest seen; RESOURCE_EXHAUSTED past max_workers. Records seq as
  // seen (and a newer epoch as the worker's, even if the push is refused
  // later: the worker holds that session).
  absl::Status Admit(absl::string_view worker, uint64_t epoch, uint64_t seq,
                     uint64_t now_micros) ABSL_LOCKS_EXCLUDED(mu_);

  // The worker's epoch on this shard, or 0 when it has none.
  uint64_t EpochOf(absl::string_view worker) const ABSL_LOCKS_EXCLUDED(mu_);

  // Checkpoints: every session as a record, and back.
  void Snapshot(
      google::protobuf::RepeatedPtrField<storage::v1::SessionRecord>* out) const
      ABSL_LOCKS_EXCLUDED(mu_);
  void Restore(
      const google::protobuf::RepeatedPtrField<storage::v1::SessionRecord>&
          records) ABSL_LOCKS_EXCLUDED(mu_);

  size_t size() const ABSL_LOCKS_EXCLUDED(mu_);

  // Sync mode's roll-back to cluster checkpoint `checkpoint`, whose workers
  // resume from `step`: every session now known is closed. Its pushes are
  // refused (FAILED_PRECONDITION, a message beginning with
  // kRolledBackPrefix, never applied) and it cannot be reopened with its
  // epoch (ABORTED): the worker opens a new one (epoch 0).
  void RollBack(uint64_t checkpoint, uint64_t step) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Session {
    uint64_t epoch = 0;
    uint64_t highest_seq = 0;
    // Epochs up to this one were closed by a roll-back.
    uint64_t rolled_back_through = 0;
  };

  absl::Status RolledBack(absl::string_view worker, uint64_t epoch) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // INVALID_ARGUMENT for an epoch too far past the clock.
  static absl::Status CheckEpoch(absl::string_view worker, uint64_t epoch,
                                 uint64_t now_micros);

  // The session of `worker`, created empty if there is room.
  absl::StatusOr<Session*> Get(absl::string_view worker)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const uint32_t shard_index_;
  const uint64_t max_workers_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Session> sessions_ ABSL_GUARDED_BY(mu_);
  // The latest roll-back: its checkpoint and the step workers resume from.
  uint64_t rollback_checkpoint_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t rollback_step_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ps

#endif  // PS_SERVER_SESSIONS_H_

// The variable store of one shard: this shard's blocks of every variable,
// their optimizer state, the exactly-once table and sync aggregation.
//
// Thread safety: every method may be called concurrently. Each block has its
// own lock; a push takes the locks of the blocks it touches one at a time, so
// pushes to different blocks run in parallel and a pull never sees a block
// half-updated. The variable table and the optimizer configs have their own
// locks, held only for look-ups.
#ifndef PS_SERVER_STORE_H_
#define PS_SERVER_STORE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/optimizer_settings.h"
#include "common/partition.h"
#include "common/seq_window.h"
#include "proto/ps/storage/v1/checkpoint.pb.h"
#include "proto/ps/v1/ps.pb.h"
#include "server/optimizer/helper_threads.h"
#include "server/optimizer/update.h"
#include "server/sessions.h"
#include "server/stats.h"

namespace ps {

struct StoreOptions {
  uint32_t shard_index = 0;
  uint32_t num_shards = 1;
  uint64_t block_size = 262144;
  // Sync: pushes for one step are averaged and applied once `quorum` of
  // `num_workers` distinct workers have pushed it. Async when false.
  bool sync = false;
  uint32_t num_workers = 0;
  uint32_t quorum = 0;
  // The most worker ids with a session on the shard (0 = no limit): each
  // costs a session record and one exactly-once record per block it
  // pushed to.
  uint64_t max_workers = 0;
  // The optimizer of variables without their own; must be valid.
  v1::OptimizerConfig default_optimizer;
  // The most bytes of values and optimizer state the shard may hold; 0 = no
  // limit. A variable or an optimizer change that would take it past the
  // limit is refused (RESOURCE_EXHAUSTED) before any memory is touched.
  uint64_t memory_limit_bytes = 0;
  // Threads one block's update may run on at once: its own and
  // update_threads - 1 helpers shared by every update of the shard (see
  // server/optimizer/helper_threads.h). 1 = each update on its own thread.
  int update_threads = 1;
  // The largest answer a Pull or PushPull may build, in bytes (gRPC's send
  // limit); 0 = none. A request whose answer would be larger is refused
  // (RESOURCE_EXHAUSTED) before any of it is built.
  uint64_t max_answer_bytes = 0;
};

// An optimizer config as given and as resolved; immutable once made.
struct OptimizerEntry {
  v1::OptimizerConfig config;
  optimizer::OptimizerSettings settings;
};

class PushCompletion;

// Aggregation of one block's pushes for the step being collected (sync).
struct SyncSlot {
  bool started = false;    // false until the first push sets next_step
  uint64_t next_step = 0;  // the step being collected
  std::vector<float> sum;  // of the gradients pushed for next_step
  absl::flat_hash_set<std::string> workers;  // who pushed next_step
  double loss_sum = 0;
  uint32_t losses = 0;
  // Pushes waiting for next_step to be applied: (completion, part index).
  std::vector<std::pair<std::shared_ptr<PushCompletion>, size_t>> waiters;
  // Workers that pushed a step ahead of next_step, with that step: when a
  // quorum of them are ahead and nobody pushed next_step, the block moves
  // on to the lowest of their steps (a shard restarted from an older
  // checkpoint catches up with its workers).
  absl::flat_hash_map<std::string, uint64_t> ahead;
};

// One block of one variable on this shard.
struct Block {
  Block(uint64_t index, FlatRange range) : index(index), range(range) {}

  const uint64_t index;   // k: the block's position in the variable
  const FlatRange range;  // its flat values in the variable

  mutable absl::Mutex mu;
  std::vector<float> values ABSL_GUARDED_BY(mu);
  optimizer::BlockOptimizerState state ABSL_GUARDED_BY(mu);
  SyncSlot sync ABSL_GUARDED_BY(mu);
  // The exactly-once table: per worker, its session epoch and the push
  // seqs of it applied to this block. Kept per block so that it always
  // matches the block's values, also in a checkpoint.
  struct AppliedSeqs {
    uint64_t epoch = 0;
    SeqWindow seqs;
  };
  absl::flat_hash_map<std::string, AppliedSeqs> applied ABSL_GUARDED_BY(mu);
  // An update left values that are not finite (at step diverged_at): the
  // block takes no more pushes (see docs/optimizers.md).
  bool diverged ABSL_GUARDED_BY(mu) = false;
  uint64_t diverged_at ABSL_GUARDED_BY(mu) = 0;
};

// A variable's shape and this shard's blocks of it. The block map is fixed
// at creation; blocks are never added or removed.
struct Variable {
  std::string name;
  std::vector<uint64_t> shape;
  uint64_t size = 0;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Block>> blocks;
};

// A push that passed every check. A float32 gradient is read in place from
// the request's bytes, and so (in async mode) is a 16-bit one, widened chunk
// by chunk during the update, so the request must outlive ApplyPush. In
// sync mode 16-bit gradients are widened into `decoded` here.
struct PreparedPush {
  struct Part {
    std::shared_ptr<Variable> variable;
    Block* block = nullptr;
    std::span<const float> gradient;  // the request's bytes, or `decoded`
    std::unique_ptr<float[]> decoded;
    // Set instead of `gradient`: 16-bit values in the request's bytes.
    std::string_view half;
    v1::DType half_dtype = v1::FLOAT32;
  };
  std::string worker_id;
  uint64_t epoch = 0;
  uint64_t seq = 0;
  uint64_t step = 0;
  std::optional<double> loss;
  std::vector<Part> parts;
};

// Holds the locks of a set of blocks, taken in address order so that two
// holders never wait on each other. (Opaque to the thread-safety analysis:
// functions that use it say ABSL_NO_THREAD_SAFETY_ANALYSIS.)
class LockedBlocks {
 public:
  explicit LockedBlocks(std::vector<Block*> blocks);
  // The blocks of every part of `push`.
  explicit LockedBlocks(const PreparedPush& push);
  ~LockedBlocks() { Unlock(); }
  LockedBlocks(const LockedBlocks&) = delete;
  LockedBlocks& operator=(const LockedBlocks&) = delete;

  // Releases every lock now (the destructor then does nothing).
  void Unlock();

 private:
  std::vector<Block*> blocks_;  // sorted, without repeats
  bool held_ = false;
};

// Collects a push's answer block by block and reports once, when every block
// has been applied (or when one failed). The answer holds one slice per part,
// in request order, with the block's values after the push.
//
// Thread safety: Fill and PartDone may be called from any thread, for
// different parts concurrently.
class PushCompletion {
 public:
  using DoneCallback =
      absl::AnyInvocable<void(absl::Status, v1::PullResponse answer)>;

  // `with_values`: fill the answer (PushPull); otherwise it stays empty.
  PushCompletion(size_t parts, bool with_values, v1::DType dtype,
                 DoneCallback on_done);

  // Writes block's values into part `part` of the answer.
  // REQUIRES: block.mu is held.
  void Fill(size_t part, const Variable& variable, const Block& block)
      ABSL_SHARED_LOCKS_REQUIRED(block.mu);

  // The encoding of the answer's values.
  v1::DType dtype() const { return dtype_; }

  // Where the update of part `part` can write the answer as it goes (see
  // optimizer::UpdatedValuesSink): the buffer handed over by ReuseBuffer,
  // when it holds exactly `values` values in the answer's dtype; else null.
  // The caller then calls FillWritten instead of Fill.
  char* WritableAnswer(size_t part, size_t values);

  // Fill for a part whose values the update wrote into WritableAnswer(part).
  // REQUIRES: block.mu is held.
  void FillWritten(size_t part, const Variable& variable, const Block& block)
      ABSL_SHARED_LOCKS_REQUIRED(block.mu);

  // Hands part `part` of the answer a buffer to encode into, so that the
  // answer needs no fresh memory: PushPull gives the request's gradient
  // bytes, which Fill(part) overwrites only once that part's gradient has
  // been applied. A heap-allocated string keeps its bytes where they are when
  // moved, so a gradient read in place stays valid.
  // REQUIRES: called before any Fill or PartDone.
  void ReuseBuffer(size_t part, std::string buffer);

  // Marks a part done (or failed). The last call runs on_done; call it with
  // no block lock held.
  void PartDone(absl::Status status = absl::OkStatus());

 private:
  const bool with_values_;
  const v1::DType dtype_;
  std::atomic<size_t> remaining_;
  absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  v1::PullResponse answer_;  // parts are written by distinct threads
  DoneCallback on_done_;
};

class VariableStore {
 public:
  // REQUIRES: options.default_optimizer is valid; num_shards > 0;
  // block_size > 0.
  explicit VariableStore(const StoreOptions& options);

  VariableStore(const VariableStore&) = delete;
  VariableStore& operator=(const VariableStore&) = delete;

  const PartitionPlan& plan() const { return plan_; }
  const StoreOptions& options() const { return options_; }

  // Creates the variable with this shard's blocks (zeros unless initial
  // values are given). Returns false when it exists with the same shape;
  // ALREADY_EXISTS for another shape; INVALID_ARGUMENT for a bad shape,
  // initial values or optimizer; FAILED_PRECONDITION for initial values of
  // another shard's blocks; RESOURCE_EXHAUSTED when its values and the
  // state of its rule would take the shard past memory_limit_bytes.
  absl::StatusOr<bool> CreateVariable(const v1::CreateVariableRequest& request);

  // Answers each requested range (inside one block of this shard) with its
  // values and the block's version. Checks every slice before answering:
  // INVALID_ARGUMENT for ranges that repeat or overlap one another,
  // RESOURCE_EXHAUSTED when the answer would exceed max_answer_bytes.
  absl::Status Pull(const v1::PullRequest& request,
                    v1::PullResponse* response) const;

  // Checks a push and decodes its gradients; changes nothing but the
  // worker's session (see WorkerSessions::Admit). `answered`:
  // the push is a PushPull, whose answer must fit in max_answer_bytes.
  // REQUIRES: `request` outlives ApplyPush of the result (float32 gradients
  // are not copied).
  absl::StatusOr<PreparedPush> PreparePush(const v1::PushRequest& request,
                                           bool answered = false);

  // Applies a prepared push (async: now; sync: once its step has its
  // quorum), or acknowledges a repeated (worker_id, seq) without applying it.
  // Calls completion->Fill/PartDone once per part.
  void ApplyPush(PreparedPush push, std::shared_ptr<PushCompletion> completion);

  struct Session {
    uint64_t epoch = 0;
    uint64_t sync_step = 0;
  };
  // Opens (or reopens) a session of `worker` (see server/sessions.h): its
  // epoch, and in sync mode the step this shard collects.
  absl::StatusOr<Session> OpenSession(const std::string& worker,
                                      uint64_t epoch);

  // The optimizer in force for `variable` (the default when it has none).
  std::shared_ptr<const OptimizerEntry> OptimizerFor(
      const std::string& variable) const;

  // The default optimizer ("") or the one in force for a variable, with
  // config_version set to this shard's config version. NOT_FOUND for an
  // unknown variable.
  absl::StatusOr<v1::OptimizerConfig> GetOptimizer(
      const std::string& variable) const;

  struct ConfigChange {
    uint64_t previous_version = 0;
    uint64_t version = 0;
  };

  // Replaces the default optimizer and that of every variable without its
  // own ("" ), or sets one variable's own. Validates first and changes
  // nothing on a bad config (INVALID_ARGUMENT) or an unknown variable
  // (NOT_FOUND). The change lands between two updates of each block: every
  // affected block is locked while its state is adapted, as follows.
  //   reset_state: fresh state, the next update is step 1.
  //   same rule: all state is kept (a change of hyper-parameters).
  //   another rule: slots that mean the same thing are kept, the rest are
  //   freed and start at zero; the step count is kept. See
  //   docs/optimizers.md for the table.
  // RESOURCE_EXHAUSTED, changing nothing, when the state the new rule needs
  // would take the shard past memory_limit_bytes.
  // `validate_only`: every check, no change (both versions are the current).
  absl::StatusOr<ConfigChange> SetOptimizer(const std::string& variable,
                                            const v1::OptimizerConfig& config,
                                            bool reset_state,
                                            bool validate_only = false);

  // Every variable with this shard's blocks, versions and optimizer.
  v1::ListVariablesResponse ListVariables() const;

  // The counters, and per variable its step and current learning rate.
  v1::Stats Stats() const;

  // The bytes of values and optimizer state the shard's variables may hold
  // under their rules, as counted against memory_limit_bytes.
  uint64_t StateBytes() const;
  // The bytes of bookkeeping around them, also counted against the limit:
  // each block's record (kBlockBookkeepingBytes; with a small block_size it
  // outweighs the values), each exactly-once record of a worker in a
  // block, and each worker session.
  uint64_t BookkeepingBytes() const;

  // What one block costs besides its arrays: the Block, its slot in the
  // variable's map, and malloc's headers of it and its arrays.
  static const uint64_t kBlockBookkeepingBytes;
  // One worker's exactly-once record in one block, and one session.
  static constexpr uint64_t kAppliedRecordBytes = 96;
  static constexpr uint64_t kSessionBytes = 128;

  ServerStats& stats() { return stats_; }

  // Checkpoints (server/checkpoint.h drives these).

  // A consistent cut of the shard: calls `state` once (optimizer configs,
  // config version, variables), then `block` for each block of exactly
  // those variables, with a copy of it (values, optimizer state, sync
  // aggregation, exactly-once table) made under that block's lock. `block`
  // runs with no block lock held, so pushes and pulls go on; variables are
  // not created and optimizers do not change until it returns (those calls
  // wait for it). Stops at the first error.
  absl::Status Snapshot(
      absl::FunctionRef<absl::Status(const storage::v1::ShardState&)> state,
      absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)> block)
      const ABSL_LOCKS_EXCLUDED(memory_mu_);

  // The number of blocks this shard holds (a restore must give each once).
  uint64_t NumBlocks() const;

  // Restores the shard-wide part into a store that has no variables yet.
  absl::Status RestoreState(const storage::v1::ShardState& state);
  // Restores one block of a variable that RestoreState created.
  absl::Status RestoreBlock(const storage::v1::BlockRecord& record);

  // The variable, or null.
  std::shared_ptr<Variable> Find(const std::string& name) const;

  // The names of every variable.
  std::vector<std::string> VariableNames() const;

 private:
  // Validates one gradient or pull range against the variable and this
  // shard's ownership; returns the block. `whole_block` for gradients.
  absl::StatusOr<Block*> CheckRange(const Variable& variable, uint64_t offset,
                                    uint64_t length, bool whole_block) const;

  // The bytes a slice of `length` values of `variable` takes in an answer
  // in `dtype`, an upper bound.
  static uint64_t AnswerBytes(const std::string& variable, uint64_t length,
                              v1::DType dtype);
  // RESOURCE_EXHAUSTED when an answer of `bytes` exceeds max_answer_bytes.
  absl::Status CheckAnswerSize(uint64_t bytes, int slices) const;
  // INVALID_ARGUMENT when two of the slices name a value in common.
  static absl::Status CheckDisjoint(
      const google::protobuf::RepeatedPtrField<v1::Slice>& slices,
      absl::string_view what);

  // What a variable may hold on this shard: its values and, for each state
  // slot its rules may have left allocated, an array as long (see
  // optimizer::SlotsOf), plus in sync mode the sum of a step's gradients.
  struct MemoryCharge {
    uint64_t values = 0;
    optimizer::StateSlots slots = 0;
    uint64_t blocks = 0;  // charged in bookkeeping_bytes_
  };
  uint64_t BytesOf(const MemoryCharge& charge) const;
  // OK when `more` bytes fit under the limit besides the charged ones; else
  // RESOURCE_EXHAUSTED saying that `what` needs them.
  absl::Status CheckMemory(uint64_t more, absl::string_view what) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(memory_mu_);

  void ApplyAsync(PreparedPush& push,
                  const std::shared_ptr<PushCompletion>& completion)
      ABSL_NO_THREAD_SAFETY_ANALYSIS;
  void ApplySync(PreparedPush& push,
                 const std::shared_ptr<PushCompletion>& completion);

  const StoreOptions options_;
  const PartitionPlan plan_;

  mutable absl::Mutex variables_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Variable>> variables_
      ABSL_GUARDED_BY(variables_mu_);

  // Held throughout CreateVariable and SetOptimizer, so that the charges
  // follow every variable and rule change: creations and optimizer changes
  // run one at a time (pushes and pulls do not take it). Snapshot holds it
  // shared, so a checkpoint sees no creation or rule change half done.
  mutable absl::Mutex memory_mu_;
  absl::flat_hash_map<std::string, MemoryCharge> charges_
      ABSL_GUARDED_BY(memory_mu_);
  // Changed only under memory_mu_; read without it (Stats must not wait for
  // the creation of a large variable).
  std::atomic<uint64_t> charged_bytes_ = 0;
  // Blocks' records and exactly-once records (see BookkeepingBytes); the
  // latter grow as workers push to blocks, without memory_mu_.
  std::atomic<uint64_t> bookkeeping_bytes_ = 0;

  // Lock order: memory_mu_, then block locks (in address order), then
  // config_mu_.
  mutable absl::Mutex config_mu_;
  uint64_t config_version_ ABSL_GUARDED_BY(config_mu_) = 1;
  std::shared_ptr<const OptimizerEntry> default_optimizer_
      ABSL_GUARDED_BY(config_mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<const OptimizerEntry>>
      overrides_ ABSL_GUARDED_BY(config_mu_);

  // Answers to report once the block locks are released.
  using ReadyParts =
      std::vector<std::pair<std::shared_ptr<PushCompletion>, absl::Status>>;

  // Sync: records that `push` ran ahead of `block`'s step and moves the
  // block on to the lowest step of the workers ahead when a quorum of them
  // is (see SyncSlot::ahead); the pushes waiting for the abandoned step are
  // answered ABORTED through `ready`. Returns whether the block is now at
  // the push's step.
  bool VoteAhead(const PreparedPush& push, const Variable& variable,
                 Block& block, ReadyParts& ready)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(block.mu);
  // Sync: sync_step_ = max(sync_step_, step).
  void RaiseSyncStep(uint64_t step);

  ServerStats stats_;
  optimizer::HelperThreads helpers_;
  WorkerSessions sessions_;
  // Sync: the highest step any block of the shard collects; a block that
  // has not started takes pushes up to it.
  std::atomic<uint64_t> sync_step_ = 0;
};

}  // namespace ps

#endif  // PS_SERVER_STORE_H_

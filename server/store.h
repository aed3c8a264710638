// The store of one shard: what it holds of every variable (values and the
// optimizer state that belongs to them), and the verbs the services call on
// it. This header is the store's surface; server/store_impl.h is its
// implementation and the parts it is made of:
//
//   dense_variable.h  a variable's blocks on this shard, each with its lock
//   push.h            a push decoded and checked, and its answer assembled
//   sync_steps.h      sync mode's steps, from the cluster
//   rule_table.h      optimizer configs, and what a change of rule keeps
//   memory_budget.h   what the entries may hold against the memory limit
//   sessions.h        the workers' sessions (exactly-once across restarts)
//
// Thread safety: every method may be called concurrently. Each block has its
// own lock; a push takes the locks of all its blocks (in address order),
// checks them all, then applies them all: it is all or nothing, and pushes
// to different blocks run in parallel. Creations and optimizer changes run
// one at a time.
#ifndef PS_SERVER_STORE_H_
#define PS_SERVER_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/partition.h"
#include "proto/ps/storage/v1/checkpoint.pb.h"
#include "proto/ps/v1/ps.pb.h"
#include "server/membership.h"
#include "server/push.h"
#include "server/stats.h"

namespace ps {

struct StoreOptions {
  uint32_t shard_index = 0;
  uint32_t num_shards = 1;
  uint64_t block_size = kDefaultBlockSize;
  // Sync: pushes for one step are averaged and applied once `quorum` of
  // `num_workers` distinct workers have pushed it. Async when false.
  // (quorum 0: every member; see server/membership.h.)
  bool sync = false;
  uint32_t num_workers = 0;
  uint32_t quorum = 0;
  // Bounded staleness (ssp, when sync is false): pushes are applied as
  // they arrive, and a worker's PushPull of step s (or Pull naming step s)
  // is answered once the slowest member pushed step s - staleness - 1.
  bool ssp = false;
  uint32_t staleness = 0;
  // Sync and ssp: a member that neither pushes nor heartbeats for this long
  // is dropped (server/membership.h).
  absl::Duration lease_timeout = absl::Seconds(10);
  // The most worker ids with a session on the shard (0 = no limit): each
  // costs a session record and one exactly-once record per block it
  // pushed to.
  uint64_t max_workers = 0;
  // The optimizer of variables without their own; must be valid.
  v1::OptimizerConfig default_optimizer;
  // The most bytes of values, optimizer state and bookkeeping the shard may
  // hold; 0 = no limit. A variable or an optimizer change that would take it
  // past the limit is refused (RESOURCE_EXHAUSTED) before any memory is
  // touched.
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

class Store {
 public:
  // REQUIRES: options.default_optimizer is valid; num_shards > 0;
  // block_size > 0.
  static std::unique_ptr<Store> Create(const StoreOptions& options);

  virtual ~Store() = default;

  virtual const StoreOptions& options() const = 0;
  virtual const PartitionPlan& plan() const = 0;

  // ---- what workers call

  // Creates the variable with this shard's blocks (zeros unless initial
  // values are given). Returns false when it exists with the same shape;
  // ALREADY_EXISTS for another shape; INVALID_ARGUMENT for a bad shape,
  // initial values or optimizer; FAILED_PRECONDITION for initial values of
  // another shard's blocks; RESOURCE_EXHAUSTED when its values, the state of
  // its rule and its blocks' bookkeeping would take the shard past the
  // memory limit.
  //
  // A request that finds the variable existing with this shape (and is not
  // `continued`) is compared with what the variable was created with: with
  // on_exists ERROR, another optimizer (own or the default) or other initial
  // values (by checksum) is ALREADY_EXISTS naming what differs; REUSE keeps
  // the variable as it is; RESET replaces it (another shape too) as
  // DeleteVariable then a creation would, and returns true.
  virtual absl::StatusOr<bool> CreateVariable(
      const v1::CreateVariableRequest& request) = 0;

  // Removes a variable or a sparse table: its blocks or rows (values,
  // optimizer state, exactly-once records), its own optimizer and its
  // memory. Pushes already decoded for it, and sync pushes waiting for a
  // step of it, are answered NOT_FOUND; a later CreateVariable (or
  // CreateTable) of the name starts afresh. Returns false when there is
  // nothing of the name; INVALID_ARGUMENT for an empty name.
  virtual absl::StatusOr<bool> DeleteVariable(const std::string& name) = 0;

  // Creates a sparse table (DESIGN.md, "Sparse tables"): every shard holds
  // the rows of it that row_shard gives it. Returns false when it exists
  // with the same dim, init and policy; ALREADY_EXISTS when it exists with
  // others or a variable has the name; INVALID_ARGUMENT for a bad dim,
  // init, policy or optimizer.
  virtual absl::StatusOr<bool> CreateTable(
      const v1::CreateTableRequest& request) = 0;

  // Answers each requested range (inside one block of this shard) with its
  // values and the block's version, and each requested table row with its
  // values (an id without a row: its initial row, creating nothing).
  // Checks every slice before answering:
  // INVALID_ARGUMENT for ranges that repeat or overlap one another,
  // RESOURCE_EXHAUSTED when the answer would exceed max_answer_bytes.
  virtual absl::Status Pull(const v1::PullRequest& request,
                            v1::PullResponse* response) const = 0;

  // Checks a push and decodes its gradients; changes nothing but the
  // worker's session (WorkerSessions::Admit). `answered`: the push is a
  // PushPull, whose answer must fit in max_answer_bytes.
  // REQUIRES: `request` outlives ApplyPush of the result (float32 gradients
  // are not copied).
  virtual absl::StatusOr<PreparedPush> PreparePush(
      const v1::PushRequest& request, bool answered) = 0;

  // Applies a prepared push, all or nothing (async: now; sync: once its
  // step has its quorum), or acknowledges a repeated (worker, epoch, seq)
  // without applying it. Calls completion->PartDone once per part, and
  // Fill for each part whose values the answer holds.
  virtual void ApplyPush(PreparedPush push,
                         std::shared_ptr<PushCompletion> completion) = 0;

  struct Session {
    uint64_t epoch = 0;
    uint64_t sync_step = 0;
  };
  // Opens (or reopens) a session of `worker` (server/sessions.h): its epoch,
  // and in sync mode the step this shard collects.
  virtual absl::StatusOr<Session> OpenSession(const std::string& worker,
                                              uint64_t epoch) = 0;

  // Renews `worker`'s lease (rejoining it), or makes it leave: the steps
  // that waited only for it complete. `epoch` 0 or the worker's current
  // session; FAILED_PRECONDITION for an older one (a fenced process),
  // INVALID_ARGUMENT for an empty id. Leave returns whether it was a member.
  virtual absl::StatusOr<uint32_t> Heartbeat(const std::string& worker,
                                             uint64_t epoch) = 0;
  virtual absl::StatusOr<bool> Leave(const std::string& worker,
                                     uint64_t epoch) = 0;

  // ssp: runs `done` once `worker` may compute `step` (see StoreOptions),
  // or with DEADLINE_EXCEEDED at `deadline`. Sync and async: at once.
  virtual void AwaitStaleness(const std::string& worker, uint64_t step,
                              absl::Time deadline,
                              std::function<void(absl::Status)> done) = 0;

  // Drops the members whose lease ran out, completes the steps that waited
  // for them, and answers the staleness waits past their deadline. The
  // server calls it a few times per lease timeout.
  virtual void Tick() = 0;
  // Answers every staleness wait (UNAVAILABLE): the shard shuts down.
  virtual void CloseWaits() = 0;

  virtual Membership& membership() = 0;

  // ---- what operators call

  // The default optimizer ("") or the one in force for a variable, with
  // config_version set to this shard's config version. NOT_FOUND for an
  // unknown variable.
  virtual absl::StatusOr<v1::OptimizerConfig> GetOptimizer(
      const std::string& variable) const = 0;

  struct ConfigChange {
    uint64_t previous_version = 0;
    uint64_t version = 0;
    // A change of the default: the variables and tables that kept their
    // own optimizer.
    uint64_t kept_overrides = 0;
  };
  // Replaces the default optimizer and that of every variable without its
  // own (""), or sets one variable's own. Validates first and changes
  // nothing on a bad config (INVALID_ARGUMENT) or an unknown variable
  // (NOT_FOUND). The change lands between two updates of each block: every
  // affected block is locked while its state is adapted (rule_table.h,
  // AdaptState; docs/optimizers.md has the table). RESOURCE_EXHAUSTED,
  // changing nothing, when the state the new rule needs would take the
  // shard past its memory limit. `validate_only`: every check, no change
  // (both versions are the current).
  virtual absl::StatusOr<ConfigChange> SetOptimizer(
      const std::string& variable, const v1::OptimizerConfig& config,
      bool reset_state, bool validate_only) = 0;

  // ---- a variable's optimizer state (state_dict, load_state_dict)

  // This shard's blocks of `request.variable` from `first_block` on, each
  // with its values, slots, step and Eve's feedback, until the answer
  // holds about max_bytes (then `more` and `next_block`). INVALID_ARGUMENT
  // for no name or a table, NOT_FOUND for an unknown variable.
  virtual absl::Status ReadState(const v1::ReadStateRequest& request,
                                 v1::ReadStateResponse* response) const = 0;
  // Sets the given blocks' values, slots, step and Eve feedback, keeping
  // their exactly-once records and sync step; a diverged block takes pushes
  // again. Returns the blocks written. Changes nothing on any bad block:
  // NOT_FOUND (unknown variable), INVALID_ARGUMENT (not a whole block, a
  // block twice, wrong sizes, values that are not finite, a slot the rule
  // and the block's charge do not cover), FAILED_PRECONDITION (a block of
  // another shard). `validate_only`: every check, no change (returns 0).
  virtual absl::StatusOr<uint64_t> WriteState(
      const v1::WriteStateRequest& request) = 0;

  // Every variable with this shard's blocks, versions and optimizer.
  virtual v1::ListVariablesResponse ListVariables() const = 0;

  // The counters, memory and, per variable, its step and current learning
  // rate.
  virtual v1::Stats Stats() const = 0;

  // The counters the services record calls in.
  virtual ServerStats& counters() = 0;

  // ---- checkpoints (server/checkpoint.h drives these)

  // A consistent cut of the shard: calls `state` once (optimizer configs,
  // config version, variables, sessions, sync step), then `block` for each
  // block of exactly those variables, copied under that block's lock.
  // `block` runs with no block lock held, so pushes and pulls go on;
  // variables are not created and optimizers do not change until it returns.
  // Stops at the first error.
  virtual absl::Status Snapshot(
      absl::FunctionRef<absl::Status(const storage::v1::ShardState&)> state,
      absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)> block)
      const = 0;

  // Restores the shard-wide part into a store that has no variables yet:
  // DATA_LOSS when it does not hold together, RESOURCE_EXHAUSTED when it
  // does not fit the memory limit.
  virtual absl::Status RestoreState(const storage::v1::ShardState& state) = 0;
  // Restores one block of a variable that RestoreState created.
  virtual absl::Status RestoreBlock(const storage::v1::BlockRecord& record) = 0;
  // The blocks this shard holds (a restore must give each once).
  virtual uint64_t NumBlocks() const = 0;

  // ---- sync mode's consistent cut (docs/checkpoints.md)

  // Holds the steps from the one the shard collects now (answered) for at
  // most `limit`: no block applies it or a later one until CutBefore or
  // ReleaseSteps. Async and ssp: 0, nothing held.
  virtual uint64_t HoldSteps(absl::Duration limit) = 0;
  // Lets every block apply the steps below `step`, holds the later ones, and
  // waits until every block that has started collects `step` (or later).
  // DEADLINE_EXCEEDED at `deadline`, naming a block that is behind, with the
  // hold released. FAILED_PRECONDITION outside sync mode. On success the
  // hold lasts until ReleaseSteps.
  virtual absl::Status CutBefore(uint64_t step, absl::Time deadline) = 0;
  // Ends a hold and applies the steps it kept waiting.
  virtual void ReleaseSteps() = 0;

  // ---- sync mode's whole-cluster roll-back (docs/checkpoints.md)

  // After this shard restored cluster checkpoint `checkpoint`, cut before
  // `step`: the steps collected at the cut are dropped (their pushes were
  // never answered), the shard collects `step`, and every session it holds
  // is closed (WorkerSessions::RollBack), so that live workers learn of the
  // roll-back and resume from `step`.
  virtual void StartAfterRollBack(uint64_t checkpoint, uint64_t step) = 0;

  // Goes back, in place and while serving, to this shard's part of cluster
  // checkpoint `checkpoint` (`state`; `read_blocks` calls its argument for
  // each block record), cut before `step`: pushes waiting for a step are
  // answered with the roll-back's refusal, as is any push admitted before
  // it; then every block is restored, every table replaced by its records,
  // every entry's own optimizer and origin set as the checkpoint has them,
  // entries created after it deleted, and StartAfterRollBack's closing
  // applies. New pushes and sessions are refused with UNAVAILABLE (retry)
  // meanwhile. FAILED_PRECONDITION, changing nothing, when a variable of
  // the checkpoint is missing or has another shape, or a table of it is a
  // variable here.
  virtual absl::Status RollBack(
      const storage::v1::ShardState& state, uint64_t checkpoint, uint64_t step,
      absl::FunctionRef<absl::Status(
          absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)>)>
          read_blocks) = 0;
};

}  // namespace ps

#endif  // PS_SERVER_STORE_H_

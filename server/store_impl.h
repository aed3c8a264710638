// The store's implementation (server/store.h is its surface): the entries
// by name, and the parts each job is done by. Tests and tools that look
// inside a store (its blocks, its charges) include this header.
//
// Lock order: structure_mu_, then entry locks (blocks, in address order),
// then the parts' own locks (RuleTable, MemoryBudget, WorkerSessions),
// then entries_mu_.
#ifndef PS_SERVER_STORE_IMPL_H_
#define PS_SERVER_STORE_IMPL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/dense_variable.h"
#include "server/memory_budget.h"
#include "server/optimizer/helper_threads.h"
#include "server/rule_table.h"
#include "server/sessions.h"
#include "server/stats.h"
#include "server/store.h"
#include "server/sync_steps.h"
#include "server/table.h"

namespace ps {

class VariableStore final : public Store {
 public:
  // REQUIRES: as Store::Create.
  explicit VariableStore(const StoreOptions& options);

  const StoreOptions& options() const override { return options_; }
  const PartitionPlan& plan() const override { return plan_; }

  absl::StatusOr<bool> CreateVariable(
      const v1::CreateVariableRequest& request) override;
  absl::StatusOr<bool> DeleteVariable(const std::string& name) override;
  absl::StatusOr<bool> CreateTable(
      const v1::CreateTableRequest& request) override;
  absl::Status Pull(const v1::PullRequest& request,
                    v1::PullResponse* response) const override;
  absl::StatusOr<PreparedPush> PreparePush(const v1::PushRequest& request,
                                           bool answered = false) override;
  void ApplyPush(PreparedPush push,
                 std::shared_ptr<PushCompletion> completion) override;
  absl::StatusOr<Session> OpenSession(const std::string& worker,
                                      uint64_t epoch) override;
  absl::StatusOr<uint32_t> Heartbeat(const std::string& worker,
                                     uint64_t epoch) override;
  absl::StatusOr<bool> Leave(const std::string& worker,
                             uint64_t epoch) override;
  void AwaitStaleness(const std::string& worker, uint64_t step,
                      absl::Time deadline,
                      std::function<void(absl::Status)> done) override;
  void Tick() override;
  void CloseWaits() override { staleness_.Close(); }
  Membership& membership() override { return members_; }

  absl::StatusOr<v1::OptimizerConfig> GetOptimizer(
      const std::string& variable) const override;
  absl::StatusOr<ConfigChange> SetOptimizer(
      const std::string& variable, const v1::OptimizerConfig& config,
      bool reset_state, bool validate_only = false) override;
  v1::ListVariablesResponse ListVariables() const override;
  absl::Status ReadState(const v1::ReadStateRequest& request,
                         v1::ReadStateResponse* response) const override;
  absl::StatusOr<uint64_t> WriteState(
      const v1::WriteStateRequest& request) override;
  v1::Stats Stats() const override;
  ServerStats& counters() override { return counters_; }

  absl::Status Snapshot(
      absl::FunctionRef<absl::Status(const storage::v1::ShardState&)> state,
      absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)> block)
      const override;
  absl::Status RestoreState(const storage::v1::ShardState& state) override;
  absl::Status RestoreBlock(const storage::v1::BlockRecord& record) override;
  uint64_t NumBlocks() const override;
  uint64_t HoldSteps(absl::Duration limit) override;
  absl::Status CutBefore(uint64_t step, absl::Time deadline) override;
  void ReleaseSteps() override;
  void StartAfterRollBack(uint64_t checkpoint, uint64_t step) override;
  absl::Status RollBack(
      const storage::v1::ShardState& state, uint64_t checkpoint, uint64_t step,
      absl::FunctionRef<absl::Status(
          absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)>)>
          read_blocks) override;

  // ---- inside views, for tests and tools

  // The variable, or null.
  std::shared_ptr<DenseVariable> Find(const std::string& name) const;
  // The table, or null.
  std::shared_ptr<SparseTable> FindTable(const std::string& name) const;
  // The names of every variable, sorted.
  std::vector<std::string> VariableNames() const;
  // The optimizer in force for `variable` (the default when it has none).
  std::shared_ptr<const OptimizerEntry> OptimizerFor(
      const std::string& variable) const {
    return rules_.For(variable);
  }
  // Values and optimizer state, and bookkeeping, as counted against the
  // memory limit (memory_budget.h).
  uint64_t StateBytes() const { return memory_.StateBytes(); }
  uint64_t BookkeepingBytes() const { return memory_.BookkeepingBytes(); }

 private:
  // Sets the blocks of `variable` that `request`'s initial values give and
  // that no push has updated (step 0). INVALID_ARGUMENT, changing nothing,
  // for a slice that is not one whole block of this shard, a block given
  // twice, or values that are not finite.
  absl::Status SetInitialValues(DenseVariable& variable,
                                const v1::CreateVariableRequest& request) const;

  // Compares a creation of an existing variable or table (`what`) with
  // what it was created with (on_exists ERROR): ALREADY_EXISTS naming what
  // differs.
  absl::Status CheckSameOrigin(const std::string& name, const char* what,
                               const storage::v1::VariableOrigin& wanted) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(structure_mu_);
  // Takes `variable` out of the store (DeleteVariable): marks its blocks
  // deleted, answers the pushes waiting in them, drops its records, own
  // optimizer, origin and charge.
  void RemoveVariable(const DenseVariable& variable)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(structure_mu_);
  // The same for a sparse table: marks it deleted, answers the pushes
  // waiting for its sync step, drops its records, own optimizer and bytes.
  void RemoveTable(SparseTable& table)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(structure_mu_);

  // RestoreBlock's part for a record of table rows: fills the table and
  // counts its rows, records and sync step.
  absl::Status RestoreRows(const storage::v1::BlockRecord& record);
  // Charges `variable` for the slots a restored block holds (`held`) that
  // it is not charged for yet.
  void ChargeHeldSlots(const DenseVariable& variable,
                       optimizer::StateSlots held)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(structure_mu_);

  // Every variable, sorted by name.
  std::vector<std::shared_ptr<DenseVariable>> SortedVariables() const;
  // Every table, sorted by name.
  std::vector<std::shared_ptr<SparseTable>> SortedTables() const;
  // Whether a variable or a table has the name.
  bool Exists(const std::string& name) const;

  // A push's rows: checked, then applied, under the locks ApplyAsync and
  // ApplySync hold (server/store_tables.cc).
  absl::Status DecodeRows(const v1::PushRequest& request, PreparedPush& push,
                          uint64_t& answer_bytes) const;
  absl::Status PullRows(const v1::PullRequest& request, uint64_t slice_bytes,
                        v1::PullResponse* response) const;
  // Checks every table part of an async push, plans it (Rows::plan, for
  // ApplyRowsAsync under the same locks) and reserves the memory its new
  // rows take; `duplicate[j]` is set for parts already applied.
  absl::Status CheckRowsAsync(PreparedPush& push, std::vector<bool>& duplicate,
                              uint64_t& reserved)
      ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // Books the table parts of an async push (SparseTable::Book) under its
  // locks; answers the parts already applied.
  int64_t ApplyRowsAsync(PreparedPush& push, const std::vector<bool>& duplicate,
                         uint64_t reserved,
                         const std::shared_ptr<PushCompletion>& completion)
      ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // After the push's locks are released: runs the updates ApplyRowsAsync
  // booked and fills the answer's rows.
  void RunRowsAsync(PreparedPush& push,
                    const std::shared_ptr<PushCompletion>& completion);
  absl::Status CheckRowsSync(const PreparedPush& push,
                             std::vector<bool>& duplicate)
      ABSL_NO_THREAD_SAFETY_ANALYSIS;
  int64_t ApplyRowsSync(PreparedPush& push, const std::vector<bool>& duplicate,
                        const std::shared_ptr<PushCompletion>& completion,
                        ReadyParts& ready) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // Applies a table's collected sync step; answers its waiters.
  void FinishTableStep(SparseTable& table,
                       ReadyParts& ready) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // Applies the tables' steps that are complete but were held by a cut.
  void CompleteHeldTableSteps();

  void ApplyAsync(PreparedPush& push,
                  const std::shared_ptr<PushCompletion>& completion)
      ABSL_NO_THREAD_SAFETY_ANALYSIS;
  void ApplySync(PreparedPush& push,
                 const std::shared_ptr<PushCompletion>& completion)
      ABSL_NO_THREAD_SAFETY_ANALYSIS;

  // Applies the mean of the step `block` collects, and ends the step.
  void ApplyStep(DenseVariable& variable, Block& block, ReadyParts& ready)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(block.mu);
  // Completes every sync step that membership changes completed (members
  // that have not pushed left or were dropped).
  void CompleteWaitingSteps();
  // Drops every step being collected (blocks and tables), answering its
  // pushes with `why`.
  void DropCollectedSteps(const absl::Status& why);
  // INVALID_ARGUMENT for an empty id, FAILED_PRECONDITION for an epoch
  // older than the worker's session.
  absl::Status CheckCaller(const std::string& worker, uint64_t epoch) const;

  // The session count, as the budget charges it.
  void CountSessions() { memory_.SetSessions(sessions_.size()); }

  const StoreOptions options_;
  const PartitionPlan plan_;

  // Held throughout CreateVariable and SetOptimizer (and restores), so
  // that the entries, their rules and their charges change together:
  // creations and optimizer changes run one at a time. Snapshot holds it
  // shared, so a checkpoint sees no creation or rule change half done.
  // Pushes and pulls do not take it.
  mutable absl::Mutex structure_mu_;
  // What each variable and table was created with (those restored from a
  // checkpoint that did not record it have none): what a later creation of
  // the name is compared with.
  absl::flat_hash_map<std::string, storage::v1::VariableOrigin> origins_
      ABSL_GUARDED_BY(structure_mu_);

  mutable absl::Mutex entries_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<DenseVariable>> entries_
      ABSL_GUARDED_BY(entries_mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<SparseTable>> tables_
      ABSL_GUARDED_BY(entries_mu_);

  RuleTable rules_;
  MemoryBudget memory_;
  WorkerSessions sessions_;
  Membership members_;
  SyncSteps sync_;
  StalenessGate staleness_;
  // The membership generation whose completions were last looked for.
  std::atomic<uint64_t> checked_generation_ = 0;
  // Roll-backs since start, and whether one is under way.
  std::atomic<uint64_t> rollbacks_ = 0;
  std::atomic<bool> rolling_back_ = false;
  // The latest roll-back's checkpoint and step (for the refusals).
  std::atomic<uint64_t> rollback_checkpoint_ = 0;
  std::atomic<uint64_t> rollback_step_ = 0;
  absl::Status RolledBackError() const;
  ServerStats counters_;
  optimizer::HelperThreads helpers_;
};

}  // namespace ps

#endif  // PS_SERVER_STORE_IMPL_H_

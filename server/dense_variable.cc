#include "server/dense_variable.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/wire.h"
#include "server/rule_table.h"

namespace ps {
namespace {

using storage::v1::BlockRecord;

void PutFloats(const std::vector<float>& values, std::string* out) {
  out->resize(values.size() * sizeof(float));
  if (!values.empty()) {
    std::memcpy(out->data(), values.data(), out->size());
  }
}

absl::Status GetFloats(const std::string& bytes, size_t expected,
                       absl::string_view what, std::vector<float>* out) {
  if (bytes.empty()) {
    out->clear();
    return absl::OkStatus();
  }
  if (bytes.size() != expected * sizeof(float)) {
    return absl::DataLossError(absl::StrCat(what, " holds ", bytes.size(),
                                            " bytes, expected ",
                                            expected * sizeof(float)));
  }
  out->resize(expected);
  std::memcpy(out->data(), bytes.data(), bytes.size());
  return absl::OkStatus();
}

}  // namespace

// Each of a block's arrays (values, four slots, the sync sum) and the
// block itself are malloc allocations with a 16-byte header.
const uint64_t DenseVariable::kBookkeepingBytesPerBlock =
    sizeof(Block) + sizeof(std::pair<uint64_t, std::unique_ptr<Block>>) +
    16 * 7;

DenseVariable::DenseVariable(std::string name, std::vector<uint64_t> shape,
                             uint64_t size, const PartitionPlan& plan,
                             const std::vector<uint64_t>& blocks)
    : Entry(std::move(name)), shape_(std::move(shape)), size_(size) {
  blocks_.reserve(blocks.size());
  for (uint64_t k : blocks) {
    auto block = std::make_unique<Block>(k, plan.BlockRange(size, k));
    absl::MutexLock lock(&block->mu);
    block->values.assign(block->range.length, 0.0f);
    blocks_.emplace(k, std::move(block));
  }
}

absl::StatusOr<Block*> DenseVariable::CheckRange(const PartitionPlan& plan,
                                                 uint32_t shard_index,
                                                 uint64_t offset,
                                                 uint64_t length,
                                                 bool whole_block) const {
  if (length == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "slice of '", name(), "' at offset ", offset, " has length 0"));
  }
  if (offset >= size_ || length > size_ - offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        "range [", offset, ", ", offset + length, ") lies outside variable '",
        name(), "' of ", size_, " values"));
  }
  const uint64_t k = plan.BlockOf(offset);
  const FlatRange block_range = plan.BlockRange(size_, k);
  if (whole_block) {
    if (offset != block_range.offset || length != block_range.length) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gradient slice [", offset, ", ", offset + length, ") of '", name(),
          "' is not a whole block; block ", k, " is [", block_range.offset,
          ", ", block_range.offset + block_range.length, ") with block_size ",
          plan.block_size()));
    }
  } else if (offset + length > block_range.offset + block_range.length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "range [", offset, ", ", offset + length, ") of '", name(),
        "' crosses the end of block ", k, " at ",
        block_range.offset + block_range.length,
        "; split ranges at multiples of block_size ", plan.block_size()));
  }
  const uint32_t owner = plan.ShardOf(name(), k);
  if (owner != shard_index) {
    return absl::FailedPreconditionError(absl::StrCat(
        "block ", k, " of '", name(), "' belongs to shard ", owner,
        ", not to this shard ", shard_index, " of ", plan.num_shards()));
  }
  return blocks_.at(k).get();
}

Block* DenseVariable::block(uint64_t k) const {
  auto it = blocks_.find(k);
  return it == blocks_.end() ? nullptr : it->second.get();
}

std::vector<Block*> DenseVariable::SortedBlocks() const {
  std::vector<Block*> blocks;
  blocks.reserve(blocks_.size());
  for (const auto& [k, block] : blocks_) blocks.push_back(block.get());
  std::sort(blocks.begin(), blocks.end(),
            [](const Block* a, const Block* b) { return a->index < b->index; });
  return blocks;
}

void DenseVariable::Describe(v1::VariableInfo* info) const {
  info->set_name(name());
  for (uint64_t dim : shape_) info->add_shape(dim);
  info->set_size(size_);
  for (const Block* block : SortedBlocks()) {
    absl::ReaderMutexLock lock(&block->mu);
    info->add_blocks(block->index);
    info->add_versions(block->state.step);
  }
}

Entry::Progress DenseVariable::GetProgress() const {
  Progress progress;
  for (const auto& [k, block] : blocks_) {
    absl::ReaderMutexLock lock(&block->mu);
    progress.step = std::max(progress.step, block->state.step);
    progress.diverged += block->diverged ? 1 : 0;
  }
  return progress;
}

EntryShape DenseVariable::Shape() const {
  EntryShape shape;
  for (const auto& [k, block] : blocks_) shape.values += block->range.length;
  shape.blocks = blocks_.size();
  return shape;
}

optimizer::StateSlots DenseVariable::HeldSlots() const {
  optimizer::StateSlots held = 0;
  for (const auto& [k, block] : blocks_) {
    absl::ReaderMutexLock lock(&block->mu);
    held |= optimizer::HeldSlots(block->state);
  }
  return held;
}

void DenseVariable::CollectLocks(std::vector<absl::Mutex*>& locks) const {
  for (const auto& [k, block] : blocks_) locks.push_back(&block->mu);
}

void DenseVariable::AdaptState(const optimizer::RuleParams& from,
                               const optimizer::RuleParams& to,
                               bool reset_state) {
  for (auto& [k, block] : blocks_) {
    ps::AdaptState(from, to, reset_state, block->state);
  }
}

absl::Status DenseVariable::Snapshot(
    absl::FunctionRef<absl::Status(const BlockRecord&)> write) const {
  BlockRecord record;
  for (const Block* block : SortedBlocks()) {
    record.Clear();
    record.set_variable(name());
    record.set_index(block->index);
    {
      absl::ReaderMutexLock lock(&block->mu);
      PutFloats(block->values, record.mutable_values());
      const optimizer::BlockOptimizerState& state = block->state;
      record.set_step(state.step);
      PutFloats(state.momentum, record.mutable_momentum());
      PutFloats(state.square_avg, record.mutable_square_avg());
      PutFloats(state.grad_avg, record.mutable_grad_avg());
      PutFloats(state.max_square_avg, record.mutable_max_square_avg());
      record.set_eve_d(state.eve.d);
      record.set_eve_f_hat(state.eve.f_hat);
      record.set_eve_started(state.eve.started);
      const SyncSlot& sync = block->sync;
      record.set_sync_started(sync.started);
      record.set_sync_next_step(sync.next_step);
      PutFloats(sync.sum, record.mutable_sync_sum());
      for (const std::string& worker : sync.workers) {
        record.add_sync_workers(worker);
      }
      record.set_sync_loss_sum(sync.loss_sum);
      record.set_sync_losses(sync.losses);
      for (const auto& [worker, seqs] : block->applied) {
        storage::v1::AppliedSeqs* applied = record.add_applied();
        applied->set_worker_id(worker);
        applied->set_epoch(seqs.epoch);
        applied->set_highest(seqs.seqs.highest());
        applied->set_window(seqs.seqs.window());
      }
    }
    PS_RETURN_IF_ERROR(write(record));
  }
  return absl::OkStatus();
}

absl::StatusOr<optimizer::StateSlots> DenseVariable::Restore(
    const BlockRecord& record) {
  Block* found = block(record.index());
  if (found == nullptr) {
    return absl::DataLossError(absl::StrCat("block ", record.index(), " of '",
                                            name(),
                                            "' does not belong to this shard"));
  }
  Block& block = *found;
  const size_t n = block.range.length;
  const std::string what =
      absl::StrCat("block ", record.index(), " of '", name(), "'");
  absl::MutexLock lock(&block.mu);
  if (record.values().size() != n * sizeof(float)) {
    return absl::DataLossError(
        absl::StrCat(what, " holds ", record.values().size(),
                     " bytes of values, expected ", n * sizeof(float)));
  }
  PS_RETURN_IF_ERROR(GetFloats(record.values(), n, what, &block.values));
  optimizer::BlockOptimizerState& state = block.state;
  state.step = record.step();
  PS_RETURN_IF_ERROR(GetFloats(record.momentum(), n, what, &state.momentum));
  PS_RETURN_IF_ERROR(
      GetFloats(record.square_avg(), n, what, &state.square_avg));
  PS_RETURN_IF_ERROR(GetFloats(record.grad_avg(), n, what, &state.grad_avg));
  PS_RETURN_IF_ERROR(
      GetFloats(record.max_square_avg(), n, what, &state.max_square_avg));
  state.eve.d = record.eve_d();
  state.eve.f_hat = record.eve_f_hat();
  state.eve.started = record.eve_started();
  SyncSlot& sync = block.sync;
  sync.started = record.sync_started();
  sync.next_step = record.sync_next_step();
  PS_RETURN_IF_ERROR(GetFloats(record.sync_sum(), n, what, &sync.sum));
  sync.workers.clear();
  for (const std::string& worker : record.sync_workers()) {
    sync.workers.insert(worker);
  }
  sync.loss_sum = record.sync_loss_sum();
  sync.losses = record.sync_losses();
  block.applied.clear();
  for (const auto& applied : record.applied()) {
    block.applied[applied.worker_id()] = {
        applied.epoch(), SeqWindow(applied.highest(), applied.window())};
  }
  block.diverged = !AllFinite(block.values);
  block.diverged_at = block.diverged ? state.step : 0;
  return optimizer::HeldSlots(state);
}

absl::Status CheckUpdatable(const DenseVariable& variable, const Block& block) {
  if (block.deleted) {
    return absl::NotFoundError(absl::StrCat(
        "variable '", variable.name(), "' was deleted while the push to it ",
        "was on its way; create it again before pushing to it"));
  }
  if (!block.diverged) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "block ", block.index, " of '", variable.name(),
      "' holds values that are not finite since its update at step ",
      block.diverged_at,
      " (the training diverged: lower the learning rate); it takes no more "
      "pushes until it is restored from a checkpoint or set again"));
}

void MarkDiverged(const DenseVariable& variable, Block& block) {
  if (block.diverged) return;
  block.diverged = true;
  block.diverged_at = block.state.step;
  spdlog::error(
      "block {} of '{}': its update at step {} left values that are not "
      "finite; the block takes no more pushes",
      block.index, variable.name(), block.state.step);
}

}  // namespace ps

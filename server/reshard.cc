#include "server/reshard.h"

#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/delimited_message_util.h>

#include <algorithm>
#include <map>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/partition.h"
#include "common/status.h"
#include "server/table.h"

namespace ps {
namespace {

namespace fs = std::filesystem;
using storage::v1::BlockRecord;

// Every record of a part's blocks.bin.
absl::StatusOr<std::vector<BlockRecord>> ReadRecords(Env* env,
                                                     const fs::path& path) {
  PS_ASSIGN_OR_RETURN(std::string raw, ReadWholeFile(env, path.string()));
  google::protobuf::io::ArrayInputStream input(raw.data(),
                                               static_cast<int>(raw.size()));
  std::vector<BlockRecord> records;
  while (true) {
    BlockRecord record;
    bool clean_eof = false;
    if (!google::protobuf::util::ParseDelimitedFromZeroCopyStream(
            &record, &input, &clean_eof)) {
      if (clean_eof) break;
      return absl::DataLossError(absl::StrCat("cannot parse ", path.string()));
    }
    records.push_back(std::move(record));
  }
  return records;
}

// Bytes [from, from + count) floats of a little-endian float32 array; ""
// stays "" (an unused slot).
std::string FloatRange(const std::string& bytes, uint64_t from,
                       uint64_t count) {
  if (bytes.empty()) return std::string();
  return bytes.substr(from * sizeof(float), count * sizeof(float));
}

}  // namespace

absl::StatusOr<std::vector<BlockRecord>> RecutDense(
    const std::string& variable, uint64_t size,
    std::vector<BlockRecord> records, uint64_t from_block_size,
    uint64_t to_block_size, const std::vector<uint64_t>& wanted) {
  const PartitionPlan from(1, from_block_size);
  const PartitionPlan to(1, to_block_size);
  std::sort(records.begin(), records.end(),
            [](const BlockRecord& a, const BlockRecord& b) {
              return a.index() < b.index();
            });
  if (records.size() != from.NumBlocks(size)) {
    return absl::DataLossError(
        absl::StrCat("the checkpoint holds ", records.size(), " blocks of '",
                     variable, "', not ", from.NumBlocks(size)));
  }
  const BlockRecord& first = records.front();
  for (const BlockRecord& record : records) {
    const bool same_step_state =
        record.step() == first.step() && record.eve_d() == first.eve_d() &&
        record.eve_f_hat() == first.eve_f_hat() &&
        record.eve_started() == first.eve_started() &&
        record.sync_started() == first.sync_started() &&
        record.sync_next_step() == first.sync_next_step() &&
        record.sync_workers_size() == 0 && first.sync_workers_size() == 0;
    if (!same_step_state) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot re-cut '", variable, "' into blocks of ", to_block_size,
          " values: its blocks ", first.index(), " and ", record.index(),
          " are at steps ", first.step(), " and ", record.step(),
          record.sync_workers_size() + first.sync_workers_size() > 0
              ? " with a half-collected sync step"
              : "",
          " (each block keeps its own step and optimizer state, which a new "
          "cut would mix; in async mode blocks step on their own). Restore "
          "with block_size=",
          from_block_size, ", or from a sync-mode checkpoint"));
    }
  }
  // The variable's whole arrays, then each wanted block cut from them.
  auto join = [&records](auto field) {
    std::string all;
    for (const BlockRecord& record : records) all += (record.*field)();
    return all;
  };
  const std::string values = join(&BlockRecord::values);
  const std::string momentum = join(&BlockRecord::momentum);
  const std::string square_avg = join(&BlockRecord::square_avg);
  const std::string grad_avg = join(&BlockRecord::grad_avg);
  const std::string max_square_avg = join(&BlockRecord::max_square_avg);
  const std::string sync_sum = join(&BlockRecord::sync_sum);
  auto check = [&](const std::string& bytes, const char* what) {
    if (!bytes.empty() && bytes.size() != size * sizeof(float)) {
      return absl::DataLossError(absl::StrCat(
          "the blocks of '", variable, "' hold ", bytes.size(), " bytes of ",
          what, " (some blocks have the slot, some not), not ",
          size * sizeof(float)));
    }
    return absl::OkStatus();
  };
  PS_RETURN_IF_ERROR(check(values, "values"));
  PS_RETURN_IF_ERROR(check(momentum, "momentum"));
  PS_RETURN_IF_ERROR(check(square_avg, "square_avg"));
  PS_RETURN_IF_ERROR(check(grad_avg, "grad_avg"));
  PS_RETURN_IF_ERROR(check(max_square_avg, "max_square_avg"));
  PS_RETURN_IF_ERROR(check(sync_sum, "sync sums"));

  std::vector<BlockRecord> cut;
  for (uint64_t k : wanted) {
    const FlatRange range = to.BlockRange(size, k);
    BlockRecord record;
    record.set_variable(variable);
    record.set_index(k);
    record.set_step(first.step());
    record.set_values(FloatRange(values, range.offset, range.length));
    record.set_momentum(FloatRange(momentum, range.offset, range.length));
    record.set_square_avg(FloatRange(square_avg, range.offset, range.length));
    record.set_grad_avg(FloatRange(grad_avg, range.offset, range.length));
    record.set_max_square_avg(
        FloatRange(max_square_avg, range.offset, range.length));
    record.set_eve_d(first.eve_d());
    record.set_eve_f_hat(first.eve_f_hat());
    record.set_eve_started(first.eve_started());
    record.set_sync_started(first.sync_started());
    record.set_sync_next_step(first.sync_next_step());
    record.set_sync_sum(FloatRange(sync_sum, range.offset, range.length));
    cut.push_back(std::move(record));
  }
  return cut;
}

// One table's rows and state gathered from every part for this shard.
struct TableRestore {
  storage::v1::TableState state;
  bool has_state = false;
  storage::v1::TableRows rows;  // the rows this shard owns, slots as held
  uint32_t dim = 0;

  // Takes `record`'s rows (and its state, the first time) that row_shard
  // gives to `shard`.
  void Add(const BlockRecord& record, uint32_t shard, uint32_t num_shards) {
    const storage::v1::TableRows& in = record.rows();
    const uint64_t hash = Fnv1a64(record.variable());
    auto owned = [&](uint64_t id) {
      return RowShard(hash, id, num_shards) == shard;
    };
    if (in.has_state()) {
      const storage::v1::TableState& part = in.state();
      if (!has_state) {
        state = part;
        state.clear_applied();  // seqs count per shard
        state.clear_pending_ids();
        state.clear_pending_counts();
        state.clear_sync_ids();
        state.clear_sync_sum();
        has_state = true;
      }
      state.set_step(std::max(state.step(), part.step()));
      state.set_held_slots(state.held_slots() | part.held_slots());
      for (int k = 0; k < part.pending_ids_size(); ++k) {
        if (!owned(part.pending_ids(k))) continue;
        state.add_pending_ids(part.pending_ids(k));
        state.add_pending_counts(part.pending_counts(k));
      }
      const size_t width = part.sync_ids_size() == 0
                               ? 0
                               : part.sync_sum().size() / part.sync_ids_size();
      for (int k = 0; k < part.sync_ids_size(); ++k) {
        if (!owned(part.sync_ids(k))) continue;
        state.add_sync_ids(part.sync_ids(k));
        state.mutable_sync_sum()->append(part.sync_sum(), k * width, width);
      }
    }
    const size_t n = in.ids_size();
    if (n == 0) return;
    const size_t row_bytes = in.values().size() / n;
    auto copy = [&](const std::string& from, std::string* to, size_t k) {
      if (!from.empty()) to->append(from, k * row_bytes, row_bytes);
    };
    for (size_t k = 0; k < n; ++k) {
      if (!owned(in.ids(k))) continue;
      rows.add_ids(in.ids(k));
      rows.add_last_steps(in.last_steps(k));
      copy(in.values(), rows.mutable_values(), k);
      copy(in.momentum(), rows.mutable_momentum(), k);
      copy(in.square_avg(), rows.mutable_square_avg(), k);
      copy(in.grad_avg(), rows.mutable_grad_avg(), k);
      copy(in.max_square_avg(), rows.mutable_max_square_avg(), k);
    }
  }

  // The records a table of these rows writes: the state first, rows in
  // chunks as SparseTable::Snapshot cuts them.
  std::vector<BlockRecord> Records(const std::string& name) const {
    std::vector<BlockRecord> out;
    const size_t n = rows.ids_size();
    const size_t row_bytes = n == 0 ? 0 : rows.values().size() / n;
    size_t begin = 0;
    do {
      const size_t end = std::min(n, begin + SparseTable::kRowsPerChunk);
      BlockRecord record;
      record.set_variable(name);
      record.set_index(out.size());
      storage::v1::TableRows& chunk = *record.mutable_rows();
      if (out.empty()) *chunk.mutable_state() = state;
      auto slice = [&](const std::string& from, std::string* to) {
        if (!from.empty()) {
          to->assign(from, begin * row_bytes, (end - begin) * row_bytes);
        }
      };
      for (size_t k = begin; k < end; ++k) {
        chunk.add_ids(rows.ids(k));
        chunk.add_last_steps(rows.last_steps(k));
      }
      slice(rows.values(), chunk.mutable_values());
      slice(rows.momentum(), chunk.mutable_momentum());
      slice(rows.square_avg(), chunk.mutable_square_avg());
      slice(rows.grad_avg(), chunk.mutable_grad_avg());
      slice(rows.max_square_avg(), chunk.mutable_max_square_avg());
      out.push_back(std::move(record));
      begin = end;
    } while (begin < n);
    return out;
  }
};

absl::StatusOr<std::string> RestoreResharded(
    Env* env, const storage::v1::ClusterManifest& manifest,
    const std::vector<fs::path>& parts, Store* store) {
  const StoreOptions& options = store->options();
  const PartitionPlan& plan = store->plan();
  if (parts.size() != manifest.num_shards()) {
    return absl::DataLossError("a part folder per shard is needed");
  }
  // The shard-wide state is the same on every shard but for the sessions
  // (seqs count per shard) and the sync step (the highest wins).
  storage::v1::ShardState state;
  absl::flat_hash_map<std::string, uint64_t> epochs;
  for (size_t i = 0; i < parts.size(); ++i) {
    PS_ASSIGN_OR_RETURN(std::string raw,
                        ReadWholeFile(env, (parts[i] / "state.pb").string()));
    storage::v1::ShardState part;
    if (!part.ParseFromString(raw)) {
      return absl::DataLossError(
          absl::StrCat("cannot parse ", (parts[i] / "state.pb").string()));
    }
    for (const auto& session : part.sessions()) {
      uint64_t& epoch = epochs[session.worker_id()];
      epoch = std::max(epoch, session.epoch());
    }
    const uint64_t sync_step = std::max(state.sync_step(), part.sync_step());
    if (i == 0) state = part;
    state.set_sync_step(sync_step);
  }
  state.clear_sessions();
  std::map<std::string, uint64_t> sorted_epochs(epochs.begin(), epochs.end());
  for (const auto& [worker, epoch] : sorted_epochs) {
    storage::v1::SessionRecord* session = state.add_sessions();
    session->set_worker_id(worker);
    session->set_epoch(epoch);
  }
  PS_RETURN_IF_ERROR(store->RestoreState(state));

  absl::flat_hash_map<std::string, uint64_t> sizes;
  for (const auto& header : state.variables()) {
    uint64_t size = 1;
    for (uint64_t dim : header.shape()) size *= dim;
    sizes[header.name()] = size;
  }

  const bool recut = manifest.block_size() != options.block_size;
  uint64_t kept = 0, moved = 0, restored = 0;
  // Dense blocks: same block_size, each record to its owner as it is;
  // another block_size, each variable's records gathered and re-cut.
  std::map<std::string, std::vector<BlockRecord>> by_variable;
  // Tables: every part's rows, each kept by its owner under the new
  // row_shard; the table's state from the first part that has it.
  std::map<std::string, TableRestore> tables;
  for (const auto& header : state.tables()) tables[header.name()];
  for (size_t i = 0; i < parts.size(); ++i) {
    PS_ASSIGN_OR_RETURN(std::vector<BlockRecord> records,
                        ReadRecords(env, parts[i] / "blocks.bin"));
    for (BlockRecord& record : records) {
      if (record.has_rows()) {
        auto table = tables.find(record.variable());
        if (table == tables.end()) {
          return absl::DataLossError(
              absl::StrCat(parts[i].string(), " holds rows of table '",
                           record.variable(), "', which the checkpoint lacks"));
        }
        table->second.Add(record, options.shard_index, options.num_shards);
        continue;
      }
      if (!sizes.contains(record.variable())) {
        return absl::DataLossError(
            absl::StrCat(parts[i].string(), " holds a block of '",
                         record.variable(), "', which the checkpoint lacks"));
      }
      // Seqs count per shard: a block's exactly-once table does not move.
      record.clear_applied();
      if (recut) {
        by_variable[record.variable()].push_back(std::move(record));
        continue;
      }
      if (plan.ShardOf(record.variable(), record.index()) !=
          options.shard_index) {
        continue;
      }
      if (i == options.shard_index) {
        ++kept;
      } else {
        ++moved;
      }
      PS_RETURN_IF_ERROR(store->RestoreBlock(record));
      ++restored;
    }
  }
  for (auto& [variable, records] : by_variable) {
    const uint64_t size = sizes[variable];
    std::vector<uint64_t> wanted;
    for (uint64_t k = 0; k < plan.NumBlocks(size); ++k) {
      if (plan.ShardOf(variable, k) == options.shard_index) wanted.push_back(k);
    }
    PS_ASSIGN_OR_RETURN(
        std::vector<BlockRecord> cut,
        RecutDense(variable, size, std::move(records), manifest.block_size(),
                   options.block_size, wanted));
    for (const BlockRecord& record : cut) {
      PS_RETURN_IF_ERROR(store->RestoreBlock(record));
      ++restored;
      ++moved;
    }
  }
  uint64_t rows = 0;
  for (auto& [name, table] : tables) {
    rows += table.rows.ids_size();
    for (const BlockRecord& record : table.Records(name)) {
      PS_RETURN_IF_ERROR(store->RestoreBlock(record));
      ++restored;
    }
  }
  if (restored != store->NumBlocks()) {
    return absl::DataLossError(absl::StrCat("the checkpoint gave ", restored,
                                            " of the shard's ",
                                            store->NumBlocks(), " blocks"));
  }
  return absl::StrCat(
      "re-sharded checkpoint ", manifest.number(), " from ",
      manifest.num_shards(), " shards of block_size ", manifest.block_size(),
      " into shard ", options.shard_index, " of ", options.num_shards,
      " with block_size ", options.block_size, ": ", restored, " blocks of ",
      state.variables_size(), " variables, ",
      recut ? absl::StrCat(moved, " re-cut from the old blocks")
            : absl::StrCat(kept, " kept from its own old part, ", moved,
                           " moved from other parts"),
      "; ", rows, " rows of ", tables.size(), " tables by row_shard");
}

}  // namespace ps

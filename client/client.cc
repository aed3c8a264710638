#include "client/client.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "client/cluster_check.h"
#include "client/internal/core.h"
#include "client/internal/fanout.h"
#include "client/internal/request_split.h"
#include "client/internal/session.h"
#include "client/internal/shard_call.h"
#include "client/internal/transport.h"
#include "common/status.h"
#include "spdlog/spdlog.h"

// The verbs of ps::Client. How a call travels is in client/internal/ (its
// parts are listed in client/internal/core.h).

namespace ps {
namespace {

using client_internal::CallCreateVariable;
using client_internal::CallGetClusterInfo;
using client_internal::ClientCore;
using client_internal::Fanout;
using client_internal::MakePromise;
using client_internal::PullItem;
using client_internal::PushItem;
using client_internal::PushLane;
using client_internal::RowPushItem;
using client_internal::Shard;
using client_internal::ShardCall;

absl::Status ValidateOptions(const ClientOptions& options) {
  if (options.addresses.empty()) {
    return absl::InvalidArgumentError("ClientOptions::addresses is empty");
  }
  if (absl::Status addresses = CheckServerAddresses(options.addresses);
      !addresses.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions::addresses: ", addresses.message()));
  }
  const RetryPolicy& retry = options.retry;
  if (retry.max_attempts < 0) {
    return absl::InvalidArgumentError(
        "RetryPolicy::max_attempts must be >= 0 (0: no limit)");
  }
  if (retry.deadline < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("RetryPolicy::deadline is negative");
  }
  if (!options.tls_server_name.empty() && options.tls_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "ClientOptions::tls_server_name needs tls_ca_file");
  }
  if (retry.initial_backoff < absl::ZeroDuration() ||
      retry.max_backoff < retry.initial_backoff) {
    return absl::InvalidArgumentError(
        "RetryPolicy needs 0 <= initial_backoff <= max_backoff");
  }
  if (!(retry.backoff_multiplier >= 1.0)) {
    return absl::InvalidArgumentError(
        "RetryPolicy::backoff_multiplier must be >= 1");
  }
  if (!(retry.jitter >= 0.0 && retry.jitter <= 1.0)) {
    return absl::InvalidArgumentError("RetryPolicy::jitter must lie in [0, 1]");
  }
  if (options.call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "ClientOptions::call_timeout must be positive");
  }
  if (options.max_message_bytes < 1024 ||
      options.max_message_bytes > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ClientOptions::max_message_bytes must lie in [1024, ", INT_MAX, "]"));
  }
  if (options.part_bytes < 1) {
    return absl::InvalidArgumentError("ClientOptions::part_bytes must be >= 1");
  }
  if (options.parts_in_flight < 1) {
    return absl::InvalidArgumentError(
        "ClientOptions::parts_in_flight must be >= 1");
  }
  if (options.channels_per_shard < 1) {
    return absl::InvalidArgumentError(
        "ClientOptions::channels_per_shard must be >= 1");
  }
  return absl::OkStatus();
}

std::string RandomWorkerId() {
  absl::BitGen gen;
  return absl::StrCat(
      "worker-", absl::Hex(absl::Uniform<uint64_t>(gen), absl::kZeroPad16));
}

absl::Status CheckDType(v1::DType dtype) {
  if (v1::DType_IsValid(dtype)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype ", static_cast<int>(dtype),
                   "; use FLOAT32, BFLOAT16 or FLOAT16"));
}

// INVALID_ARGUMENT for an empty or repeated variable name.
template <typename Named>
absl::Status CheckNames(std::span<const Named> items) {
  absl::flat_hash_set<std::string_view> seen;
  for (const Named& item : items) {
    if (item.variable.empty()) {
      return absl::InvalidArgumentError("variable name is empty");
    }
    if (!seen.insert(item.variable).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("variable ", std::string(item.variable),
                       " appears twice in one call"));
    }
  }
  return absl::OkStatus();
}

// INVALID_ARGUMENT when `item.versions` is neither empty nor one per block.
template <typename Named>
absl::Status CheckVersions(const PartitionPlan& plan, const Named& item) {
  if (item.versions.empty() ||
      item.versions.size() == plan.NumBlocks(item.values.size())) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("versions of ", std::string(item.variable), " hold ",
                   item.versions.size(), " entries but it has ",
                   plan.NumBlocks(item.values.size()), " blocks"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const ClientOptions& options) {
  PS_RETURN_IF_ERROR(ValidateOptions(options));
  auto impl = std::make_unique<ClientCore>(options);
  PS_ASSIGN_OR_RETURN(impl->shards, client_internal::OpenShards(options));
  impl->worker_id =
      options.worker_id.empty() ? RandomWorkerId() : options.worker_id;

  std::vector<v1::ClusterInfo> infos(impl->shards.size());
  auto [done, future] = MakePromise();
  auto* fanout = new Fanout(impl.get(), impl->shards.size(), std::move(done));
  for (size_t s = 0; s < impl->shards.size(); ++s) {
    ShardCall<v1::GetClusterInfoRequest, v1::ClusterInfo>::Start(
        impl.get(), s, v1::GetClusterInfoRequest(), &CallGetClusterInfo,
        [fanout, s, &infos](const grpc::Status& status,
                            const v1::GetClusterInfoRequest&,
                            v1::ClusterInfo& info) {
          if (status.ok()) infos[s] = std::move(info);
          fanout->Finish(s, FromGrpcStatus(status));
        });
  }
  const absl::Status reached = future.get();
  impl->WaitIdle();
  PS_RETURN_IF_ERROR(reached);

  PS_ASSIGN_OR_RETURN(std::vector<size_t> order,
                      CheckCluster(options.addresses, infos));
  std::vector<std::unique_ptr<Shard>> ordered;
  for (uint32_t index = 0; index < order.size(); ++index) {
    ordered.push_back(std::move(impl->shards[order[index]]));
    ordered.back()->index = index;
    impl->addresses.push_back(ordered.back()->address);
  }
  impl->shards = std::move(ordered);
  impl->cluster_info = infos[order[0]];
  impl->plan.emplace(impl->cluster_info.num_shards(),
                     impl->cluster_info.block_size());
  // Seqs count from 1 in each session: the session's epoch, not the seq,
  // tells a restarted worker from a retry.
  constexpr uint64_t first_seq = 1;
  for (size_t s = 0; s < impl->shards.size(); ++s) {
    impl->lanes.push_back(
        std::make_unique<PushLane>(first_seq, options.parts_in_flight));
  }
  PS_RETURN_IF_ERROR(client_internal::OpenSession(impl.get()));
  spdlog::debug(
      "worker {} connected to {} shards, block_size {}, {}, session epoch {}",
      impl->worker_id, impl->shards.size(), impl->cluster_info.block_size(),
      impl->cluster_info.consistency(), impl->epoch);
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

namespace {

// Whether the cluster counts members (sync and ssp).
bool HasMembers(const v1::ClusterInfo& info) {
  return info.lease_timeout_s() > 0;
}

}  // namespace

Client::Client(std::unique_ptr<ClientCore> core) : core_(std::move(core)) {
  const v1::ClusterInfo& info = core_->cluster_info;
  if (HasMembers(info) && core_->options.keep_lease) {
    const absl::Duration interval = std::max(
        absl::Seconds(info.lease_timeout_s()) / 3, absl::Milliseconds(50));
    lease_ =
        std::make_unique<client_internal::LeaseKeeper>(core_.get(), interval);
  }
}

Client::~Client() {
  core_->WaitIdle();
  if (lease_ != nullptr) lease_->Stop();
  if (HasMembers(core_->cluster_info) && !left_.exchange(true)) {
    const absl::Status status = client_internal::LeaveAll(
        core_.get(), std::min(core_->options.call_timeout, absl::Seconds(5)));
    if (!status.ok()) {
      spdlog::warn("worker {} could not leave every shard: {}",
                   core_->worker_id, status.ToString());
    }
  }
}

absl::Status Client::Leave() {
  core_->WaitIdle();
  if (lease_ != nullptr) lease_->Stop();
  if (!HasMembers(core_->cluster_info)) return absl::OkStatus();
  left_ = true;
  return client_internal::LeaveAll(core_.get(), core_->options.call_timeout);
}

absl::Status Client::Heartbeat() {
  if (!HasMembers(core_->cluster_info)) return absl::OkStatus();
  return client_internal::HeartbeatAll(core_.get(),
                                       core_->options.call_timeout);
}

const std::string& Client::worker_id() const { return core_->worker_id; }

uint64_t Client::session_epoch() const { return core_->epoch; }

uint64_t Client::sync_step() const { return core_->sync_step; }

const v1::ClusterInfo& Client::cluster_info() const {
  return core_->cluster_info;
}

const PartitionPlan& Client::plan() const { return *core_->plan; }

const std::vector<std::string>& Client::shard_addresses() const {
  return core_->addresses;
}

absl::StatusOr<bool> Client::CreateVariable(
    std::string_view name, const std::vector<uint64_t>& shape,
    std::span<const float> initial_values,
    const std::optional<v1::OptimizerConfig>& optimizer) {
  if (name.empty()) {
    return absl::InvalidArgumentError("variable name is empty");
  }
  const std::string variable(name);
  PS_ASSIGN_OR_RETURN(uint64_t size, client_internal::NumValues(shape));
  PS_ASSIGN_OR_RETURN(
      std::vector<std::vector<v1::CreateVariableRequest>> requests,
      client_internal::SplitCreate(*core_->plan, variable, shape,
                                   initial_values, optimizer,
                                   core_->options.max_message_bytes));
  // Round r sends the r-th request of every shard that has one, all shards
  // at once. The later rounds carry initial values that did not fit in the
  // first request, and go only to the shards where this call created the
  // variable: elsewhere the first creator's values win.
  std::vector<char> created(requests.size(), 0);
  for (size_t round = 0;; ++round) {
    std::vector<size_t> shards;
    for (size_t s = 0; s < requests.size(); ++s) {
      if (round < requests[s].size() && (round == 0 || created[s])) {
        shards.push_back(s);
      }
    }
    if (shards.empty()) break;
    auto [done, future] = MakePromise();
    auto* fanout = new Fanout(core_.get(), shards.size(), std::move(done));
    for (size_t s : shards) {
      ShardCall<v1::CreateVariableRequest, v1::CreateVariableResponse>::Start(
          core_.get(), s, std::move(requests[s][round]), &CallCreateVariable,
          [fanout, s, round, &created](const grpc::Status& status,
                                       const v1::CreateVariableRequest&,
                                       v1::CreateVariableResponse& response) {
            if (round == 0 && status.ok() && response.created()) {
              created[s] = 1;
            }
            fanout->Finish(s, FromGrpcStatus(status));
          });
    }
    PS_RETURN_IF_ERROR(future.get());
  }
  core_->RememberSize(variable, size);
  return std::find(created.begin(), created.end(), 1) != created.end();
}

absl::StatusOr<bool> Client::CreateTable(std::string_view name, uint32_t dim,
                                         const TableOptions& options) {
  if (name.empty()) return absl::InvalidArgumentError("table name is empty");
  if (dim == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "table '", std::string(name), "' needs a dim of at least 1"));
  }
  v1::CreateTableRequest request;
  request.set_name(std::string(name));
  request.set_dim(dim);
  *request.mutable_init() = options.init;
  *request.mutable_policy() = options.policy;
  if (options.optimizer.has_value()) {
    *request.mutable_optimizer() = *options.optimizer;
  }
  const size_t shards = core_->shards.size();
  std::atomic<bool> created{false};
  auto [done, future] = MakePromise();
  auto* fanout = new Fanout(core_.get(), shards, std::move(done));
  for (size_t s = 0; s < shards; ++s) {
    ShardCall<v1::CreateTableRequest, v1::CreateTableResponse>::Start(
        core_.get(), s, request, &client_internal::CallCreateTable,
        [fanout, s, &created](const grpc::Status& status,
                              const v1::CreateTableRequest&,
                              v1::CreateTableResponse& response) {
          if (status.ok() && response.created()) created = true;
          fanout->Finish(s, FromGrpcStatus(status));
        });
  }
  PS_RETURN_IF_ERROR(future.get());
  return created.load();
}

namespace {

// The dim of a rows call: `values` holds ids.size() rows.
absl::StatusOr<uint32_t> RowDim(std::string_view table, size_t ids,
                                size_t values, std::string_view what) {
  if (ids == 0 || values % ids != 0 || values / ids == 0 ||
      values / ids > UINT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("the ", std::string(what), " for table '",
                     std::string(table), "' holds ", values,
                     " values, not a whole row for each of ", ids, " ids"));
  }
  return static_cast<uint32_t>(values / ids);
}

// Checks the tables of a push and makes their items: INVALID_ARGUMENT for
// an empty or repeated table name, gradients that are not whole rows, or
// rows_after of another size than the gradients (or given to a push).
absl::StatusOr<std::vector<RowPushItem>> RowItems(
    std::span<const RowGradients> rows, bool answered) {
  std::vector<RowPushItem> items;
  absl::flat_hash_set<std::string_view> seen;
  for (const RowGradients& r : rows) {
    const std::string table(r.table);
    if (table.empty()) return absl::InvalidArgumentError("table name is empty");
    if (!seen.insert(r.table).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("table '", table, "' appears twice in one call"));
    }
    uint32_t dim = 1;
    if (!r.ids.empty() || !r.grads.empty()) {
      PS_ASSIGN_OR_RETURN(
          dim, RowDim(r.table, r.ids.size(), r.grads.size(), "gradient"));
    }
    if (!r.rows_after.empty() && !answered) {
      return absl::InvalidArgumentError(
          absl::StrCat("a push answers no rows; use PushPull to read table '",
                       table, "' after it"));
    }
    if (!r.rows_after.empty() && r.rows_after.size() != r.grads.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the output for table '", table, "' holds ", r.rows_after.size(),
          " values; the gradient holds ", r.grads.size()));
    }
    items.push_back(RowPushItem{table, dim, r.ids, r.grads, r.rows_after});
  }
  return items;
}

}  // namespace

absl::Status Client::PullRows(std::string_view table,
                              std::span<const uint64_t> ids,
                              std::span<float> rows,
                              const PullOptions& options) {
  if (ids.empty()) return absl::OkStatus();
  PS_ASSIGN_OR_RETURN(const uint32_t dim,
                      RowDim(table, ids.size(), rows.size(), "output"));
  auto [done, future] = MakePromise();
  core_->StartPullRows(std::string(table), dim, ids, rows, options,
                       std::move(done));
  return future.get();
}

absl::Status Client::PushRows(std::string_view table,
                              std::span<const uint64_t> ids,
                              std::span<const float> grads,
                              const PushOptions& options) {
  const RowGradients item{table, ids, grads};
  return Push({}, std::span<const RowGradients>(&item, 1), options);
}

absl::Status Client::PushPullRows(std::string_view table,
                                  std::span<const uint64_t> ids,
                                  std::span<const float> grads,
                                  std::span<float> rows,
                                  const PushOptions& options) {
  if (ids.empty()) return PushRows(table, ids, grads, options);
  if (rows.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the output for table '", std::string(table),
                     "' holds no values; the gradient holds ", grads.size()));
  }
  const RowGradients item{table, ids, grads, rows};
  return PushPull({}, std::span<const RowGradients>(&item, 1), options);
}

absl::Status Client::Push(std::string_view name,
                          std::span<const float> gradient,
                          const PushOptions& options) {
  const NamedGradient item{name, gradient};
  return PushAsync(std::span<const NamedGradient>(&item, 1), options).get();
}

absl::Status Client::Pull(std::string_view name, std::span<float> values,
                          const PullOptions& options) {
  const NamedValues item{name, values};
  return PullAsync(std::span<const NamedValues>(&item, 1), options).get();
}

absl::Status Client::PushPull(std::string_view name,
                              std::span<const float> gradient,
                              std::span<float> values,
                              const PushOptions& options) {
  const NamedUpdate item{name, gradient, values};
  return PushPullAsync(std::span<const NamedUpdate>(&item, 1), options).get();
}

absl::Status Client::Push(std::span<const NamedGradient> gradients,
                          const PushOptions& options) {
  return PushAsync(gradients, options).get();
}

absl::Status Client::Pull(std::span<const NamedValues> values,
                          const PullOptions& options) {
  return PullAsync(values, options).get();
}

absl::Status Client::PushPull(std::span<const NamedUpdate> updates,
                              const PushOptions& options) {
  return PushPullAsync(updates, options).get();
}

absl::Status Client::Push(std::span<const NamedGradient> gradients,
                          std::span<const RowGradients> rows,
                          const PushOptions& options) {
  auto [done, future] = MakePromise();
  PushAsync(gradients, rows, options, std::move(done));
  return future.get();
}

absl::Status Client::PushPull(std::span<const NamedUpdate> updates,
                              std::span<const RowGradients> rows,
                              const PushOptions& options) {
  return PushPullAsync(updates, rows, options).get();
}

void Client::PushAsync(std::span<const NamedGradient> gradients,
                       const PushOptions& options, DoneCallback done) {
  PushAsync(gradients, {}, options, std::move(done));
}

void Client::PushAsync(std::span<const NamedGradient> gradients,
                       std::span<const RowGradients> rows,
                       const PushOptions& options, DoneCallback done) {
  absl::Status valid = CheckNames(gradients);
  if (valid.ok()) valid = CheckDType(options.dtype);
  std::vector<PushItem> items;
  for (const NamedGradient& g : gradients) {
    if (!valid.ok()) break;
    valid = core_->CheckSize(g.variable, g.gradient.size(), "gradient");
    items.push_back(PushItem{std::string(g.variable), g.gradient});
  }
  absl::StatusOr<std::vector<RowPushItem>> row_items =
      RowItems(rows, /*answered=*/false);
  if (valid.ok()) valid = row_items.status();
  if (!valid.ok()) {
    done(std::move(valid));
    return;
  }
  core_->StartPush(std::move(items), *std::move(row_items), nullptr, options,
                   std::move(done));
}

void Client::PullAsync(std::span<const NamedValues> values,
                       const PullOptions& options, DoneCallback done) {
  absl::Status valid = CheckNames(values);
  if (valid.ok()) valid = CheckDType(options.dtype);
  std::vector<PullItem> items;
  auto outputs = std::make_shared<std::vector<std::span<float>>>();
  auto versions = std::make_shared<std::vector<std::span<uint64_t>>>();
  for (const NamedValues& v : values) {
    if (!valid.ok()) break;
    valid = core_->CheckSize(v.variable, v.values.size(), "output");
    if (valid.ok()) valid = CheckVersions(*core_->plan, v);
    items.push_back(PullItem{std::string(v.variable), v.values.size()});
    outputs->push_back(v.values);
    versions->push_back(v.versions);
  }
  if (!valid.ok()) {
    done(std::move(valid));
    return;
  }
  core_->StartPull(std::move(items), std::move(outputs), options,
                   std::move(done), std::move(versions));
}

void Client::PushPullAsync(std::span<const NamedUpdate> updates,
                           const PushOptions& options, DoneCallback done) {
  PushPullAsync(updates, {}, options, std::move(done));
}

void Client::PushPullAsync(std::span<const NamedUpdate> updates,
                           std::span<const RowGradients> rows,
                           const PushOptions& options, DoneCallback done) {
  absl::Status valid = CheckNames(updates);
  if (valid.ok()) valid = CheckDType(options.dtype);
  if (valid.ok()) valid = CheckDType(options.pull_dtype);
  std::vector<PushItem> items;
  auto outputs = std::make_shared<std::vector<std::span<float>>>();
  auto versions = std::make_shared<std::vector<std::span<uint64_t>>>();
  for (const NamedUpdate& u : updates) {
    if (!valid.ok()) break;
    if (u.gradient.size() != u.values.size()) {
      valid = absl::InvalidArgumentError(absl::StrCat(
          "the gradient of ", std::string(u.variable), " has ",
          u.gradient.size(), " values but its output has ", u.values.size()));
      break;
    }
    valid = core_->CheckSize(u.variable, u.gradient.size(), "gradient");
    if (valid.ok()) valid = CheckVersions(*core_->plan, u);
    items.push_back(PushItem{std::string(u.variable), u.gradient});
    outputs->push_back(u.values);
    versions->push_back(u.versions);
  }
  absl::StatusOr<std::vector<RowPushItem>> row_items =
      RowItems(rows, /*answered=*/true);
  if (valid.ok()) valid = row_items.status();
  if (!valid.ok()) {
    done(std::move(valid));
    return;
  }
  core_->StartPush(std::move(items), *std::move(row_items), std::move(outputs),
                   options, std::move(done), std::move(versions));
}

std::future<absl::Status> Client::PushAsync(
    std::span<const NamedGradient> gradients, const PushOptions& options) {
  auto [done, future] = MakePromise();
  PushAsync(gradients, options, std::move(done));
  return std::move(future);
}

std::future<absl::Status> Client::PullAsync(std::span<const NamedValues> values,
                                            const PullOptions& options) {
  auto [done, future] = MakePromise();
  PullAsync(values, options, std::move(done));
  return std::move(future);
}

std::future<absl::Status> Client::PushPullAsync(
    std::span<const NamedUpdate> updates, const PushOptions& options) {
  auto [done, future] = MakePromise();
  PushPullAsync(updates, options, std::move(done));
  return std::move(future);
}

std::future<absl::Status> Client::PushPullAsync(
    std::span<const NamedUpdate> updates, std::span<const RowGradients> rows,
    const PushOptions& options) {
  auto [done, future] = MakePromise();
  PushPullAsync(updates, rows, options, std::move(done));
  return std::move(future);
}

std::future<absl::Status> Client::PushAsync(std::string_view name,
                                            std::span<const float> gradient,
                                            const PushOptions& options) {
  const NamedGradient item{name, gradient};
  return PushAsync(std::span<const NamedGradient>(&item, 1), options);
}

std::future<absl::Status> Client::PullAsync(std::string_view name,
                                            std::span<float> values,
                                            const PullOptions& options) {
  const NamedValues item{name, values};
  return PullAsync(std::span<const NamedValues>(&item, 1), options);
}

std::future<absl::Status> Client::PushPullAsync(std::string_view name,
                                                std::span<const float> gradient,
                                                std::span<float> values,
                                                const PushOptions& options) {
  const NamedUpdate item{name, gradient, values};
  return PushPullAsync(std::span<const NamedUpdate>(&item, 1), options);
}

}  // namespace ps

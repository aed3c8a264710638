#include "client/internal/core.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "client/internal/fanout.h"
#include "client/internal/shard_call.h"
#include "common/status.h"

namespace ps::client_internal {
namespace {

std::span<const std::span<uint64_t>> VersionsOf(const Versions& versions) {
  if (versions == nullptr) return {};
  return *versions;
}

}  // namespace

ClientCore::DoneCallback ClientCore::AdvanceOnSuccess(uint64_t step,
                                                      DoneCallback done) {
  if (!sync()) return done;
  return [this, step, done = std::move(done)](absl::Status status) mutable {
    if (status.ok()) {
      uint64_t seen = next_step.load();
      while (seen < step + 1 &&
             !next_step.compare_exchange_weak(seen, step + 1)) {
      }
    }
    done(std::move(status));
  };
}

void ClientCore::CallStarted() {
  absl::MutexLock lock(&mu_);
  ++in_flight_;
}

void ClientCore::CallEnded() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

void ClientCore::WaitIdle() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* in_flight) { return *in_flight == 0; }, &in_flight_));
}

void ClientCore::RememberSize(const std::string& name, uint64_t size) {
  absl::MutexLock lock(&sizes_mu_);
  sizes_[name] = size;
}

absl::Status ClientCore::CheckSize(std::string_view name, uint64_t size,
                                   std::string_view what) {
  absl::ReaderMutexLock lock(&sizes_mu_);
  auto it = sizes_.find(absl::string_view(name.data(), name.size()));
  if (it == sizes_.end() || it->second == size) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "variable ", it->first, " has ", it->second, " values but the ",
      absl::string_view(what.data(), what.size()), " has ", size));
}

void ClientCore::StartPush(std::vector<PushItem> items, Outputs outputs,
                           const PushOptions& push_options, DoneCallback done,
                           Versions versions) {
  const bool answered = outputs != nullptr;
  const uint64_t step = StepOf(push_options);
  done = AdvanceOnSuccess(step, std::move(done));
  v1::PushRequest header;
  header.set_worker_id(worker_id);
  header.set_epoch(epoch);
  header.set_step(step);
  if (push_options.loss.has_value()) header.set_loss(*push_options.loss);
  if (answered) header.set_pull_dtype(push_options.pull_dtype);
  absl::StatusOr<ShardParts<v1::PushRequest>> parts = SplitPush(
      *plan, items, header, push_options.dtype, answered, split_limits());
  Fanout* fanout = StartFanout(this, parts, done);
  if (fanout == nullptr) return;
  const v1::DType pull_dtype = push_options.pull_dtype;
  for (size_t s = 0; s < parts->size(); ++s) {
    std::vector<PushLane::Send> sends;
    for (Part<v1::PushRequest>& part : (*parts)[s]) {
      sends.push_back([this, fanout, s, part = std::move(part), outputs,
                       versions, pull_dtype](uint64_t seq) mutable {
        part.request.set_seq(seq);
        EncodedPush request = EncodePush(std::move(part.request));
        if (outputs == nullptr) {
          ShardCall<EncodedPush, grpc::ByteBuffer>::Start(
              this, s, std::move(request), &CallPush,
              [this, fanout, s](const grpc::Status& status, const EncodedPush&,
                                grpc::ByteBuffer&) {
                lanes[s]->Release();
                fanout->Finish(s, FromGrpcStatus(status));
              });
          return;
        }
        ShardCall<EncodedPush, ReceivedSlices>::Start(
            this, s, std::move(request), &CallPushPull,
            [this, fanout, s, items = std::move(part.items), outputs, versions,
             pull_dtype](const grpc::Status& status, const EncodedPush& request,
                         ReceivedSlices& response) {
              absl::Status result = FromGrpcStatus(status);
              if (result.ok()) {
                result = DecodeAnswer(request.head.gradients(), items,
                                      pull_dtype, response.message.values(),
                                      response.data, *outputs,
                                      VersionsOf(versions), plan->block_size());
              }
              lanes[s]->Release();
              fanout->Finish(s, std::move(result));
            });
      });
    }
    if (!sends.empty()) lanes[s]->Enqueue(std::move(sends));
  }
}

void ClientCore::StartPull(std::vector<PullItem> items, Outputs outputs,
                           const PullOptions& pull_options, DoneCallback done,
                           Versions versions) {
  absl::StatusOr<ShardParts<v1::PullRequest>> parts =
      SplitPull(*plan, items, pull_options.dtype, split_limits());
  Fanout* fanout = StartFanout(this, parts, done);
  if (fanout == nullptr) return;
  const v1::DType dtype = pull_options.dtype;
  for (size_t s = 0; s < parts->size(); ++s) {
    for (Part<v1::PullRequest>& part : (*parts)[s]) {
      if (pull_options.step.has_value()) {
        part.request.set_worker_id(worker_id);
        part.request.set_step(*pull_options.step);
      }
      ShardCall<EncodedPull, ReceivedSlices>::Start(
          this, s, EncodePull(std::move(part.request)), &CallPull,
          [fanout, s, items = std::move(part.items), outputs, versions, dtype,
           block_size = plan->block_size()](const grpc::Status& status,
                                            const EncodedPull& request,
                                            ReceivedSlices& response) {
            absl::Status result = FromGrpcStatus(status);
            if (result.ok()) {
              result = DecodeAnswer(request.head.slices(), items, dtype,
                                    response.message.values(), response.data,
                                    *outputs, VersionsOf(versions), block_size);
            }
            fanout->Finish(s, std::move(result));
          });
    }
  }
}

namespace {

// Where a rows call's answers go, shared by its requests (which write
// disjoint rows of `out`).
struct RowsCall {
  CoalescedIds ids;
  std::vector<std::vector<size_t>> callers;
  std::span<float> out;
};

}  // namespace

void ClientCore::StartPushRows(const std::string& table, uint32_t dim,
                               std::span<const uint64_t> ids,
                               std::span<const float> grads,
                               std::span<float> rows_after,
                               const PushOptions& push_options,
                               DoneCallback done) {
  const bool answered = !rows_after.empty();
  auto call = std::make_shared<RowsCall>();
  call->ids = Coalesce(ids);
  if (answered) {
    call->callers = CallersOf(call->ids);
    call->out = rows_after;
  }
  const std::vector<float> sums = SumRows(call->ids, grads, dim);
  const uint64_t step = StepOf(push_options);
  done = AdvanceOnSuccess(step, std::move(done));
  v1::PushRequest header;
  header.set_worker_id(worker_id);
  header.set_epoch(epoch);
  header.set_step(step);
  if (push_options.loss.has_value()) header.set_loss(*push_options.loss);
  if (answered) header.set_pull_dtype(push_options.pull_dtype);
  // Every shard gets a push, perhaps of no rows: each shard's table step
  // then counts every push of the table, as torch's optimizer step counts
  // every step() (SparseAdam's bias correction uses it), and in sync mode
  // each step counts every worker.
  absl::StatusOr<ShardRowParts<v1::PushRequest>> parts = SplitPushRows(
      plan->num_shards(), table, dim, call->ids, sums, header,
      push_options.dtype, answered, /*every_shard=*/true, split_limits());
  if (!parts.ok()) {
    done(parts.status());
    return;
  }
  size_t count = 0;
  for (const auto& list : *parts) count += list.size();
  if (count == 0) {
    done(absl::OkStatus());
    return;
  }
  auto* fanout = new Fanout(this, count, std::move(done));
  const v1::DType pull_dtype = push_options.pull_dtype;
  for (size_t s = 0; s < parts->size(); ++s) {
    std::vector<PushLane::Send> sends;
    for (RowPart<v1::PushRequest>& part : (*parts)[s]) {
      sends.push_back([this, fanout, s, part = std::move(part), call, dim,
                       answered, pull_dtype](uint64_t seq) mutable {
        part.request.set_seq(seq);
        EncodedPush request = EncodePush(std::move(part.request));
        if (!answered) {
          ShardCall<EncodedPush, grpc::ByteBuffer>::Start(
              this, s, std::move(request), &CallPush,
              [this, fanout, s](const grpc::Status& status, const EncodedPush&,
                                grpc::ByteBuffer&) {
                lanes[s]->Release();
                fanout->Finish(s, FromGrpcStatus(status));
              });
          return;
        }
        ShardCall<EncodedPush, ReceivedSlices>::Start(
            this, s, std::move(request), &CallPushPull,
            [this, fanout, s, rows = std::move(part.rows), call, dim,
             pull_dtype](const grpc::Status& status, const EncodedPush& request,
                         ReceivedSlices& response) {
              absl::Status result = FromGrpcStatus(status);
              if (result.ok()) {
                result = DecodeRows(request.head.rows(0), rows, dim, pull_dtype,
                                    response.message.rows(), call->callers,
                                    call->out);
              }
              lanes[s]->Release();
              fanout->Finish(s, std::move(result));
            });
      });
    }
    if (!sends.empty()) lanes[s]->Enqueue(std::move(sends));
  }
}

void ClientCore::StartPullRows(const std::string& table, uint32_t dim,
                               std::span<const uint64_t> ids,
                               std::span<float> rows,
                               const PullOptions& pull_options,
                               DoneCallback done) {
  auto call = std::make_shared<RowsCall>();
  call->ids = Coalesce(ids);
  call->callers = CallersOf(call->ids);
  call->out = rows;
  absl::StatusOr<ShardRowParts<v1::PullRequest>> parts =
      SplitPullRows(plan->num_shards(), table, dim, call->ids,
                    pull_options.dtype, split_limits());
  if (!parts.ok()) {
    done(parts.status());
    return;
  }
  size_t count = 0;
  for (const auto& list : *parts) count += list.size();
  if (count == 0) {
    done(absl::OkStatus());
    return;
  }
  auto* fanout = new Fanout(this, count, std::move(done));
  const v1::DType dtype = pull_options.dtype;
  for (size_t s = 0; s < parts->size(); ++s) {
    for (RowPart<v1::PullRequest>& part : (*parts)[s]) {
      ShardCall<EncodedPull, ReceivedSlices>::Start(
          this, s, EncodePull(std::move(part.request)), &CallPull,
          [fanout, s, rows = std::move(part.rows), call, dim, dtype](
              const grpc::Status& status, const EncodedPull& request,
              ReceivedSlices& response) {
            absl::Status result = FromGrpcStatus(status);
            if (result.ok()) {
              result =
                  DecodeRows(request.head.rows(0), rows, dim, dtype,
                             response.message.rows(), call->callers, call->out);
            }
            fanout->Finish(s, std::move(result));
          });
    }
  }
}

}  // namespace ps::client_internal

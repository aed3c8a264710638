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

namespace {

// One table of a push, shared by the call's requests (which write disjoint
// rows of `out`).
struct RowsCall {
  uint32_t dim = 0;
  CoalescedIds ids;
  std::vector<std::vector<size_t>> callers;
  std::span<float> out;  // empty: the rows after the push are not wanted
};

// The rows of one RowSlice of a request: the table (index into the call's
// tables) and the unique-id index of each id.
struct SliceRows {
  size_t table = 0;
  std::vector<size_t> rows;
};

// A request of a push: its dense slices' call items, and its row slices'.
struct PushPart {
  v1::PushRequest request;
  std::vector<size_t> items;
  std::vector<SliceRows> rows;  // one per request.rows(), in order
};

// Decodes a PushPull answer's rows into the calls that want them.
absl::Status DecodePushedRows(const v1::PushRequest& request,
                              const std::vector<SliceRows>& rows,
                              const std::vector<RowsCall>& calls,
                              v1::DType dtype, const v1::PullResponse& answer) {
  if (answer.rows_size() != request.rows_size()) {
    return absl::InternalError(
        absl::StrCat("the shard answered ", answer.rows_size(),
                     " row slices for the ", request.rows_size(), " pushed"));
  }
  for (size_t k = 0; k < rows.size(); ++k) {
    const RowsCall& call = calls[rows[k].table];
    if (call.out.empty()) continue;
    PS_RETURN_IF_ERROR(DecodeRows(request.rows(k), rows[k].rows, call.dim,
                                  dtype, answer.rows(k), call.callers,
                                  call.out));
  }
  return absl::OkStatus();
}

}  // namespace

void ClientCore::StartPush(std::vector<PushItem> items,
                           std::vector<RowPushItem> rows, Outputs outputs,
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
  const SplitLimits limits = split_limits();
  absl::StatusOr<ShardParts<v1::PushRequest>> dense =
      SplitPush(*plan, items, header, push_options.dtype, answered, limits);
  if (!dense.ok()) {
    done(dense.status());
    return;
  }
  std::vector<std::vector<PushPart>> parts(dense->size());
  for (size_t s = 0; s < dense->size(); ++s) {
    for (Part<v1::PushRequest>& part : (*dense)[s]) {
      parts[s].push_back({std::move(part.request), std::move(part.items), {}});
    }
  }
  // Each table's rows join the shard's last request when both fit in
  // part_bytes together, and go in a request of their own otherwise.
  auto calls = std::make_shared<std::vector<RowsCall>>(rows.size());
  for (size_t t = 0; t < rows.size(); ++t) {
    const RowPushItem& table = rows[t];
    RowsCall& call = (*calls)[t];
    call.dim = table.dim;
    call.ids = Coalesce(table.ids);
    if (!table.rows_after.empty()) {
      call.callers = CallersOf(call.ids);
      call.out = table.rows_after;
    }
    const std::vector<float> sums = SumRows(call.ids, table.grads, table.dim);
    absl::StatusOr<ShardRowParts<v1::PushRequest>> row_parts = SplitPushRows(
        plan->num_shards(), table.table, table.dim, call.ids, sums, header,
        push_options.dtype, answered, /*every_shard=*/true, limits);
    if (!row_parts.ok()) {
      done(row_parts.status());
      return;
    }
    for (size_t s = 0; s < row_parts->size(); ++s) {
      for (RowPart<v1::PushRequest>& row_part : (*row_parts)[s]) {
        v1::RowSlice& slice = *row_part.request.mutable_rows(0);
        // A push-pull that does not want this table's rows after it (a
        // remote embedding's backward) is not sent them.
        slice.set_unanswered(answered && table.rows_after.empty());
        if (!parts[s].empty() &&
            parts[s].back().request.ByteSizeLong() + slice.ByteSizeLong() <=
                limits.part_bytes) {
          PushPart& last = parts[s].back();
          *last.request.add_rows() = std::move(slice);
          last.rows.push_back({t, std::move(row_part.rows)});
        } else {
          parts[s].push_back({std::move(row_part.request),
                              {},
                              {{t, std::move(row_part.rows)}}});
        }
      }
    }
  }
  size_t count = 0;
  for (const auto& list : parts) count += list.size();
  if (count == 0) {
    done(absl::OkStatus());
    return;
  }
  auto* fanout = new Fanout(this, count, std::move(done));
  const v1::DType pull_dtype = push_options.pull_dtype;
  for (size_t s = 0; s < parts.size(); ++s) {
    std::vector<PushLane::Send> sends;
    for (PushPart& part : parts[s]) {
      sends.push_back([this, fanout, s, part = std::move(part), outputs,
                       versions, calls, pull_dtype](uint64_t seq) mutable {
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
            [this, fanout, s, items = std::move(part.items),
             rows = std::move(part.rows), outputs, versions, calls,
             pull_dtype](const grpc::Status& status, const EncodedPush& request,
                         ReceivedSlices& response) {
              absl::Status result = FromGrpcStatus(status);
              if (result.ok()) {
                result = DecodeAnswer(request.head.gradients(), items,
                                      pull_dtype, response.message.values(),
                                      response.data, *outputs,
                                      VersionsOf(versions), plan->block_size());
              }
              if (result.ok()) {
                result = DecodePushedRows(request.head, rows, *calls,
                                          pull_dtype, response.message);
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

void ClientCore::StartPullRows(const std::string& table, uint32_t dim,
                               std::span<const uint64_t> ids,
                               std::span<float> rows,
                               const PullOptions& pull_options,
                               DoneCallback done) {
  auto call = std::make_shared<RowsCall>();
  call->dim = dim;
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
            if (result.ok() && response.message.rows_size() != 1) {
              result = absl::InternalError(absl::StrCat(
                  "the shard answered ", response.message.rows_size(),
                  " row slices for the 1 asked"));
            }
            if (result.ok()) {
              result = DecodeRows(request.head.rows(0), rows, dim, dtype,
                                  response.message.rows(0), call->callers,
                                  call->out);
            }
            fanout->Finish(s, std::move(result));
          });
    }
  }
}

}  // namespace ps::client_internal

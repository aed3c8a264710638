#include "client/fake_shard.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/wire.h"

namespace ps::testing {

FakeShard::FakeShard(v1::ClusterInfo info)
    : info_(std::move(info)), plan_(info_.num_shards(), info_.block_size()) {}

grpc::Status FakeShard::GetClusterInfo(grpc::ServerContext*,
                                       const v1::GetClusterInfoRequest*,
                                       v1::ClusterInfo* response) {
  *response = info_;
  return grpc::Status::OK;
}

grpc::Status FakeShard::CreateVariable(grpc::ServerContext* context,
                                       const v1::CreateVariableRequest* request,
                                       v1::CreateVariableResponse* response) {
  absl::MutexLock lock(&mu);
  creates.push_back(*request);
  const std::vector<uint64_t> shape(request->shape().begin(),
                                    request->shape().end());
  auto it = shapes_.find(request->name());
  if (it != shapes_.end()) {
    if (it->second != shape) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "another shape");
    }
    response->set_created(false);
    return grpc::Status::OK;
  }
  uint64_t size = 1;
  for (uint64_t dim : shape) size *= dim;
  std::vector<float> values(size);
  for (const v1::Slice& slice : request->initial_values()) {
    CheckOwned(slice, /*whole_block=*/true);
    if (slice.offset() + slice.length() > size) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "out of range");
    }
    absl::Status decoded = DecodeValues(
        slice.dtype(), slice.data(),
        std::span<float>(values).subspan(slice.offset(), slice.length()));
    if (!decoded.ok()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          std::string(decoded.message()));
    }
  }
  shapes_[request->name()] = shape;
  values_[request->name()] = std::move(values);
  response->set_created(true);
  (void)context;
  return grpc::Status::OK;
}

void FakeShard::CheckOwned(const v1::Slice& slice, bool whole_block) {
  const uint64_t k = plan_.BlockOf(slice.offset());
  const std::string name = absl::StrCat(slice.variable(), "[", slice.offset(),
                                        ", +", slice.length(), ")");
  if (plan_.ShardOf(slice.variable(), k) != info_.shard_index()) {
    violations.push_back(absl::StrCat(name, " is not mine"));
  }
  const uint64_t block_end = (k + 1) * plan_.block_size();
  if (slice.length() == 0 || slice.offset() + slice.length() > block_end) {
    violations.push_back(absl::StrCat(name, " leaves its block"));
  }
  if (whole_block) {
    auto it = values_.find(slice.variable());
    const uint64_t size = it == values_.end() ? 0 : it->second.size();
    const uint64_t want = it == values_.end()
                              ? plan_.block_size()
                              : plan_.BlockRange(size, k).length;
    if (slice.offset() % plan_.block_size() != 0 ||
        (it != values_.end() && slice.length() != want)) {
      violations.push_back(absl::StrCat(name, " is not a whole block"));
    }
  }
}

grpc::Status FakeShard::OpenSession(grpc::ServerContext*,
                                    const v1::OpenSessionRequest* request,
                                    v1::OpenSessionResponse* response) {
  absl::MutexLock lock(&mu);
  opens.push_back(*request);
  uint64_t& epoch = epochs_[request->worker_id()];
  if (request->epoch() == 0) {
    ++epoch;
  } else if (request->epoch() < epoch) {
    return grpc::Status(grpc::StatusCode::ABORTED, "a newer session");
  } else {
    epoch = request->epoch();
  }
  response->set_epoch(epoch);
  return grpc::Status::OK;
}

grpc::Status FakeShard::ApplyPush(grpc::ServerContext* context,
                                  const v1::PushRequest& request) {
  pushes.push_back(request);
  for (const auto& [key, value] : context->client_metadata()) {
    if (key == "authorization") {
      authorizations.emplace_back(value.data(), value.size());
    }
  }
  if (error.has_value()) return *error;
  if (unavailable_pushes > 0) {
    --unavailable_pushes;
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "try again");
  }
  SeqWindow& seqs = applied_seqs_[{request.worker_id(), request.epoch()}];
  if (seqs.Seen(request.seq())) {
    return grpc::Status::OK;  // a repeat: acknowledged, not applied
  }
  for (const v1::Slice& slice : request.gradients()) {
    CheckOwned(slice, /*whole_block=*/true);
    uint64_t& last = block_seqs_[{request.worker_id(), request.epoch(),
                                  slice.variable(), slice.offset()}];
    if (request.seq() < last) {
      violations.push_back(absl::StrCat(slice.variable(), "[", slice.offset(),
                                        "] got seq ", request.seq(), " after ",
                                        last));
    }
    last = request.seq();
    auto it = values_.find(slice.variable());
    if (it == values_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, slice.variable());
    }
    if (slice.offset() + slice.length() > it->second.size()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "out of range");
    }
    std::vector<float> gradient(slice.length());
    absl::Status decoded =
        DecodeValues(slice.dtype(), slice.data(), std::span<float>(gradient));
    if (!decoded.ok()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          std::string(decoded.message()));
    }
    for (uint64_t i = 0; i < slice.length(); ++i) {
      it->second[slice.offset() + i] -= gradient[i];
    }
  }
  seqs.Mark(request.seq());
  ++applied;
  return grpc::Status::OK;
}

grpc::Status FakeShard::Answer(
    const google::protobuf::RepeatedPtrField<v1::Slice>& slices,
    v1::DType dtype, v1::PullResponse* response) {
  for (const v1::Slice& asked : slices) {
    auto it = values_.find(asked.variable());
    if (it == values_.end()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, asked.variable());
    }
    if (asked.offset() + asked.length() > it->second.size()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "out of range");
    }
    v1::Slice* slice = response->add_values();
    slice->set_variable(asked.variable());
    slice->set_offset(asked.offset());
    uint64_t length = asked.length();
    if (short_answers && response->values_size() == 1) --length;
    slice->set_length(length);
    slice->set_dtype(dtype);
    EncodeValues(
        dtype,
        std::span<const float>(it->second).subspan(asked.offset(), length),
        slice->mutable_data());
  }
  return grpc::Status::OK;
}

grpc::Status FakeShard::Push(grpc::ServerContext* context,
                             const v1::PushRequest* request,
                             v1::PushResponse*) {
  absl::Duration delay;
  grpc::Status status;
  {
    absl::MutexLock lock(&mu);
    max_pushes_in_flight = std::max(max_pushes_in_flight, ++pushes_in_flight);
    status = ApplyPush(context, *request);
    if (status.ok() && slow_pushes > 0) {
      --slow_pushes;
      delay = slow_push_delay;
    }
  }
  absl::SleepFor(delay);
  absl::MutexLock lock(&mu);
  --pushes_in_flight;
  return status;
}

grpc::Status FakeShard::Pull(grpc::ServerContext*,
                             const v1::PullRequest* request,
                             v1::PullResponse* response) {
  absl::MutexLock lock(&mu);
  pulls.push_back(*request);
  if (error.has_value()) return *error;
  for (const v1::Slice& slice : request->slices()) {
    CheckOwned(slice, /*whole_block=*/false);
  }
  return Answer(request->slices(), request->dtype(), response);
}

grpc::Status FakeShard::PushPull(grpc::ServerContext* context,
                                 const v1::PushRequest* request,
                                 v1::PullResponse* response) {
  absl::MutexLock lock(&mu);
  grpc::Status status = ApplyPush(context, *request);
  if (!status.ok()) return status;
  return Answer(request->gradients(), request->pull_dtype(), response);
}

std::vector<float> FakeShard::Values(const std::string& variable) {
  absl::MutexLock lock(&mu);
  return values_[variable];
}

std::unique_ptr<RunningFakeShard> StartFakeShard(
    uint32_t shard_index, uint32_t num_shards, uint64_t block_size,
    const std::string& consistency) {
  v1::ClusterInfo info;
  info.set_shard_index(shard_index);
  info.set_num_shards(num_shards);
  info.set_block_size(block_size);
  info.set_consistency(consistency);
  auto running = std::make_unique<RunningFakeShard>();
  running->service = std::make_unique<FakeShard>(info);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  builder.RegisterService(running->service.get());
  running->server = builder.BuildAndStart();
  if (running->server == nullptr || port == 0) return nullptr;
  running->address = absl::StrCat("127.0.0.1:", port);
  return running;
}

}  // namespace ps::testing

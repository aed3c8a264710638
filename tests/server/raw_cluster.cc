#include "tests/server/raw_cluster.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/cluster_check.h"
#include "common/status.h"

namespace ps::testutil {

std::unique_ptr<grpc::ClientContext> MakeContext() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  return context;
}

absl::StatusOr<std::unique_ptr<RawCluster>> RawCluster::Connect(
    const std::vector<std::string>& addresses) {
  PS_RETURN_IF_ERROR(CheckServerAddresses(addresses));
  // Any block size will do to ask.
  RawCluster asking(addresses, 1);
  std::vector<v1::ClusterInfo> infos(addresses.size());
  for (uint32_t i = 0; i < addresses.size(); ++i) {
    grpc::Status status = asking.stub(i).GetClusterInfo(
        MakeContext().get(), v1::GetClusterInfoRequest(), &infos[i]);
    if (!status.ok()) {
      return absl::Status(
          FromGrpcStatus(status).code(),
          absl::StrCat(addresses[i], ": ", status.error_message()));
    }
  }
  PS_ASSIGN_OR_RETURN(std::vector<size_t> order,
                      CheckCluster(addresses, infos));
  std::vector<std::string> ordered;
  for (size_t i : order) ordered.push_back(addresses[i]);
  return std::make_unique<RawCluster>(ordered, infos[order[0]].block_size());
}

RawCluster::RawCluster(const std::vector<std::string>& addresses,
                       uint64_t block_size)
    : plan_(static_cast<uint32_t>(addresses.size()), block_size) {
  for (const std::string& address : addresses) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    channels_.push_back(grpc::CreateCustomChannel(
        address, grpc::InsecureChannelCredentials(), args));
    stubs_.push_back(v1::ParameterService::NewStub(channels_.back()));
  }
}

uint32_t RawCluster::OwnerOf(const std::string& variable,
                             uint64_t offset) const {
  return plan_.ShardOf(variable, plan_.BlockOf(offset));
}

grpc::Status RawCluster::Create(const std::string& name,
                                const std::vector<uint64_t>& shape,
                                const std::vector<float>& initial,
                                std::vector<bool>* created) {
  if (created != nullptr) created->assign(num_shards(), false);
  grpc::Status first_error;
  for (uint32_t shard = 0; shard < num_shards(); ++shard) {
    v1::CreateVariableRequest request = CreateRequest(name, shape);
    for (uint64_t k = 0; k < plan_.NumBlocks(initial.size()); ++k) {
      if (plan_.ShardOf(name, k) != shard) continue;
      const FlatRange range = plan_.BlockRange(initial.size(), k);
      *request.add_initial_values() = MakeSlice(
          name, range.offset,
          std::vector<float>(initial.begin() + range.offset,
                             initial.begin() + range.offset + range.length));
    }
    v1::CreateVariableResponse response;
    grpc::Status status =
        stubs_[shard]->CreateVariable(MakeContext().get(), request, &response);
    if (!status.ok() && first_error.ok()) first_error = status;
    if (created != nullptr) (*created)[shard] = response.created();
  }
  return first_error;
}

grpc::Status RawCluster::PullAll(const std::string& name, uint64_t size,
                                 Snapshot* out, v1::DType dtype) {
  const uint64_t blocks = plan_.NumBlocks(size);
  out->values.assign(size, 0.0f);
  out->versions.assign(blocks, 0);
  for (uint32_t shard = 0; shard < num_shards(); ++shard) {
    v1::PullRequest request;
    request.set_dtype(dtype);
    for (uint64_t k = 0; k < blocks; ++k) {
      if (plan_.ShardOf(name, k) != shard) continue;
      const FlatRange range = plan_.BlockRange(size, k);
      *request.add_slices() = RangeSlice(name, range.offset, range.length);
    }
    if (request.slices_size() == 0) continue;
    v1::PullResponse response;
    grpc::Status status =
        stubs_[shard]->Pull(MakeContext().get(), request, &response);
    if (!status.ok()) return status;
    if (response.values_size() != request.slices_size()) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          "pull answered a different number of slices");
    }
    for (const v1::Slice& slice : response.values()) {
      EXPECT_EQ(slice.variable(), name);
      EXPECT_EQ(slice.dtype(), dtype);
      const std::vector<float> values = Decode(slice);
      if (slice.offset() + values.size() > size) {
        return grpc::Status(grpc::StatusCode::INTERNAL,
                            "pull answered a range outside the variable");
      }
      std::copy(values.begin(), values.end(),
                out->values.begin() + slice.offset());
      out->versions[plan_.BlockOf(slice.offset())] = slice.version();
    }
  }
  return grpc::Status::OK;
}

Snapshot RawCluster::MustPullAll(const std::string& name, uint64_t size) {
  Snapshot snapshot;
  grpc::Status status = PullAll(name, size, &snapshot);
  EXPECT_TRUE(status.ok()) << "pull of '" << name
                           << "': " << status.error_message();
  return snapshot;
}

grpc::Status RawCluster::Push(const std::string& name, const PushArgs& args,
                              const std::vector<float>& gradient,
                              Snapshot* answer, int only_shard) {
  const uint64_t blocks = plan_.NumBlocks(gradient.size());
  if (answer != nullptr) {
    answer->values.assign(gradient.size(), 0.0f);
    answer->versions.assign(blocks, 0);
  }
  for (uint32_t shard = 0; shard < num_shards(); ++shard) {
    if (only_shard >= 0 && shard != static_cast<uint32_t>(only_shard)) {
      continue;
    }
    v1::PushRequest request;
    request.set_worker_id(args.worker_id);
    request.set_seq(args.seq);
    request.set_epoch(1);  // a session the shard takes from the push
    request.set_step(args.step);
    request.set_pull_dtype(args.pull_dtype);
    for (uint64_t k = 0; k < blocks; ++k) {
      if (plan_.ShardOf(name, k) != shard) continue;
      const FlatRange range = plan_.BlockRange(gradient.size(), k);
      *request.add_gradients() = MakeSlice(
          name, range.offset,
          std::vector<float>(gradient.begin() + range.offset,
                             gradient.begin() + range.offset + range.length));
    }
    if (request.gradients_size() == 0) continue;
    if (answer == nullptr) {
      v1::PushResponse response;
      grpc::Status status =
          stubs_[shard]->Push(MakeContext().get(), request, &response);
      if (!status.ok()) return status;
      continue;
    }
    v1::PullResponse response;
    grpc::Status status =
        stubs_[shard]->PushPull(MakeContext().get(), request, &response);
    if (!status.ok()) return status;
    if (response.values_size() != request.gradients_size()) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          "PushPull answered a different number of slices");
    }
    for (int i = 0; i < response.values_size(); ++i) {
      const v1::Slice& slice = response.values(i);
      EXPECT_EQ(slice.variable(), name);
      EXPECT_EQ(slice.offset(), request.gradients(i).offset());
      EXPECT_EQ(slice.length(), request.gradients(i).length());
      EXPECT_EQ(slice.dtype(), args.pull_dtype);
      const std::vector<float> values = Decode(slice);
      if (slice.offset() + values.size() > gradient.size()) {
        return grpc::Status(grpc::StatusCode::INTERNAL,
                            "PushPull answered a range outside the variable");
      }
      std::copy(values.begin(), values.end(),
                answer->values.begin() + slice.offset());
      answer->versions[plan_.BlockOf(slice.offset())] = slice.version();
    }
  }
  return grpc::Status::OK;
}

std::vector<NamedCall> FinishedCalls() {
  return {
      {"nothing", [](RawCluster&) {}},
      {"GetClusterInfo",
       [](RawCluster& raw) {
         v1::ClusterInfo info;
         EXPECT_TRUE(raw.stub(0)
                         .GetClusterInfo(MakeContext().get(),
                                         v1::GetClusterInfoRequest(), &info)
                         .ok());
       }},
      {"CreateVariable",
       [](RawCluster& raw) {
         EXPECT_TRUE(raw.Create("w", {4}, Iota(4)).ok());
       }},
      {"Pull",
       [](RawCluster& raw) {
         ASSERT_TRUE(raw.Create("w", {4}, Iota(4)).ok());
         raw.MustPullAll("w", 4);
       }},
      {"Push",
       [](RawCluster& raw) {
         ASSERT_TRUE(raw.Create("w", {4}, Iota(4)).ok());
         EXPECT_TRUE(raw.Push("w", {}, {1, 1, 1, 1}).ok());
       }},
      {"PushPull",
       [](RawCluster& raw) {
         ASSERT_TRUE(raw.Create("w", {4}, Iota(4)).ok());
         Snapshot answer;
         EXPECT_TRUE(raw.Push("w", {}, {1, 1, 1, 1}, &answer).ok());
       }},
  };
}

}  // namespace ps::testutil

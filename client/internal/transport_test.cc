#include "client/internal/transport.h"

#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/fake_shard.h"
#include "common/wire.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps::client_internal {
namespace {

using ::ps::testing::RunningFakeShard;
using ::ps::testing::StartFakeShard;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Runs one call of `method` to completion.
template <typename Method, typename Request, typename Response>
grpc::Status RunCall(Method method, ShardStub* stub,
                     const ClientOptions& options, const Request& request,
                     Response* response) {
  grpc::ClientContext context;
  PrepareContext(options, &context);
  absl::Notification done;
  grpc::Status result;
  method(stub, &context, &request, response, [&](grpc::Status status) {
    result = std::move(status);
    done.Notify();
  });
  done.WaitForNotification();
  return result;
}

std::string Floats(const std::vector<float>& values) {
  std::string bytes;
  EncodeValues(v1::FLOAT32, values, &bytes);
  return bytes;
}

TEST(OpenShardsTest, OneShardPerAddressInOrderWithItsChannels) {
  ClientOptions options;
  options.addresses = {"127.0.0.1:1", "127.0.0.1:2"};
  options.channels_per_shard = 3;
  absl::StatusOr<std::vector<std::unique_ptr<Shard>>> shards =
      OpenShards(options);
  ASSERT_TRUE(shards.ok()) << shards.status();
  ASSERT_EQ(shards->size(), 2u);
  Shard& first = *(*shards)[0];
  EXPECT_EQ(first.address, "127.0.0.1:1");
  EXPECT_EQ((*shards)[1]->address, "127.0.0.1:2");
  EXPECT_EQ(first.stubs.size(), 3u);
  // The channels take turns.
  std::set<ShardStub*> used;
  for (int i = 0; i < 6; ++i) used.insert(first.stub());
  EXPECT_EQ(used.size(), 3u);
}

TEST(OpenShardsTest, AnUnreadableCaFileIsRefused) {
  ClientOptions options;
  options.addresses = {"127.0.0.1:1"};
  options.tls_ca_file = "/nonexistent/ca.pem";
  absl::StatusOr<std::vector<std::unique_ptr<Shard>>> shards =
      OpenShards(options);
  EXPECT_EQ(shards.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(shards.status().message(),
              HasSubstr("cannot read TLS CA file /nonexistent/ca.pem"));
}

TEST(ShardTest, NameSaysTheIndexOnceKnown) {
  Shard shard;
  shard.address = "host:7000";
  EXPECT_EQ(shard.Name(), "shard at host:7000");
  shard.index = 2;
  EXPECT_EQ(shard.Name(), "shard 2 (host:7000)");
}

TEST(PrepareContextTest, SetsTheDeadlineOfOneAttempt) {
  ClientOptions options;
  options.call_timeout = absl::Seconds(30);
  grpc::ClientContext context;
  const auto before = std::chrono::system_clock::now();
  PrepareContext(options, &context);
  EXPECT_GE(context.deadline(), before + std::chrono::seconds(29));
  EXPECT_LE(context.deadline(),
            std::chrono::system_clock::now() + std::chrono::seconds(30));
}

TEST(EncodeTest, APushGoesWithItsGradientsData) {
  v1::PushRequest request;
  request.set_worker_id("w");
  request.set_epoch(3);
  request.set_seq(9);
  for (int i = 0; i < 2; ++i) {
    v1::Slice* slice = request.add_gradients();
    slice->set_variable(absl::StrCat("v", i));
    slice->set_offset(4 * i);
    slice->set_length(2);
    slice->set_data(Floats({1.0f + i, -2.0f}));
  }
  const v1::PushRequest expected = request;
  const EncodedPush encoded = EncodePush(std::move(request));
  EXPECT_EQ(encoded.head.worker_id(), "w");
  EXPECT_EQ(encoded.head.gradients_size(), 2);
  grpc::Slice bytes;
  ASSERT_TRUE(encoded.bytes.DumpToSingleSlice(&bytes).ok());
  v1::PushRequest sent;
  ASSERT_TRUE(sent.ParseFromArray(bytes.begin(), bytes.size()));
  EXPECT_EQ(sent.SerializeAsString(), expected.SerializeAsString());
}

TEST(EncodeTest, APullIsSerializedAsProtobufWould) {
  v1::PullRequest request;
  request.set_dtype(v1::BFLOAT16);
  v1::Slice* slice = request.add_slices();
  slice->set_variable("w");
  slice->set_offset(8);
  slice->set_length(4);
  const EncodedPull encoded = EncodePull(request);
  EXPECT_EQ(encoded.head.SerializeAsString(), request.SerializeAsString());
  grpc::Slice bytes;
  ASSERT_TRUE(encoded.bytes.DumpToSingleSlice(&bytes).ok());
  EXPECT_EQ(
      std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size()),
      request.SerializeAsString());
}

class CallTest : public ::testing::Test {
 protected:
  void SetUp() override {
    running_ = StartFakeShard(0, 1, 4);
    ASSERT_NE(running_, nullptr);
    options_.addresses = {running_->address};
    options_.token = "s3cret";
    absl::StatusOr<std::vector<std::unique_ptr<Shard>>> shards =
        OpenShards(options_);
    ASSERT_TRUE(shards.ok()) << shards.status();
    shard_ = std::move((*shards)[0]);
  }

  std::unique_ptr<RunningFakeShard> running_;
  ClientOptions options_;
  std::unique_ptr<Shard> shard_;
};

TEST_F(CallTest, EveryMethodReachesTheShard) {
  v1::ClusterInfo info;
  ASSERT_TRUE(RunCall(&CallGetClusterInfo, shard_->stub(), options_,
                      v1::GetClusterInfoRequest(), &info)
                  .ok());
  EXPECT_EQ(info.num_shards(), 1u);
  EXPECT_EQ(info.block_size(), 4u);

  v1::OpenSessionRequest open;
  open.set_worker_id("w");
  v1::OpenSessionResponse session;
  ASSERT_TRUE(
      RunCall(&CallOpenSession, shard_->stub(), options_, open, &session).ok());
  EXPECT_EQ(session.epoch(), 1u);

  v1::CreateVariableRequest create;
  create.set_name("x");
  create.add_shape(4);
  v1::CreateVariableResponse created;
  ASSERT_TRUE(
      RunCall(&CallCreateVariable, shard_->stub(), options_, create, &created)
          .ok());
  EXPECT_TRUE(created.created());

  // One block of gradient, then its values back (SGD with lr = 1).
  v1::PushRequest push;
  push.set_worker_id("w");
  push.set_epoch(session.epoch());
  push.set_seq(1);
  v1::Slice* gradient = push.add_gradients();
  gradient->set_variable("x");
  gradient->set_length(4);
  gradient->set_data(Floats({1, 2, 3, 4}));
  grpc::ByteBuffer pushed;
  ASSERT_TRUE(
      RunCall(&CallPush, shard_->stub(), options_, EncodePush(push), &pushed)
          .ok());
  push.set_seq(2);
  push.mutable_gradients(0)->set_data(Floats({1, 1, 1, 1}));
  ReceivedSlices answer;
  ASSERT_TRUE(RunCall(&CallPushPull, shard_->stub(), options_, EncodePush(push),
                      &answer)
                  .ok());
  ASSERT_EQ(answer.message.values_size(), 1);
  ASSERT_EQ(answer.data.size(), 1u);

  v1::PullRequest pull;
  v1::Slice* slice = pull.add_slices();
  slice->set_variable("x");
  slice->set_length(4);
  answer.Clear();
  ASSERT_TRUE(
      RunCall(&CallPull, shard_->stub(), options_, EncodePull(pull), &answer)
          .ok());
  ASSERT_EQ(answer.message.values_size(), 1);
  EXPECT_EQ(answer.message.values(0).variable(), "x");
  EXPECT_EQ(answer.message.values(0).length(), 4u);
  EXPECT_THAT(running_->service->Values("x"), ElementsAre(-2, -3, -4, -5));

  absl::MutexLock lock(&running_->service->mu);
  EXPECT_EQ(running_->service->applied, 2);
  EXPECT_THAT(running_->service->authorizations,
              ElementsAre("Bearer s3cret", "Bearer s3cret"));
}

TEST_F(CallTest, AShardErrorIsTheCallsStatus) {
  {
    absl::MutexLock lock(&running_->service->mu);
    running_->service->error =
        grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "not mine");
  }
  v1::PullRequest pull;
  pull.add_slices()->set_variable("x");
  ReceivedSlices answer;
  const grpc::Status status =
      RunCall(&CallPull, shard_->stub(), options_, EncodePull(pull), &answer);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(status.error_message(), "not mine");
}

}  // namespace
}  // namespace ps::client_internal

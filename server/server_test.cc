#include "server/server.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "proto/ps/v1/ps.grpc.pb.h"
#include "tests/server/fault_env.h"

namespace ps {
namespace {

namespace fs = std::filesystem;
using ::ps::testutil::FaultEnv;
using ::testing::HasSubstr;

class ServerCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           absl::StrCat(
               "server_test_",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    options_.block_size = 4;
    options_.checkpoint_dir = dir_.string();
    options_.env = &env_;
  }
  void TearDown() override { fs::remove_all(dir_); }

  void Start() {
    auto server = ParameterServer::Start(options_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(server_->address(),
                                   grpc::InsecureChannelCredentials());
    admin_ = v1::AdminService::NewStub(channel_);
    auto parameters = v1::ParameterService::NewStub(channel_);
    grpc::ClientContext context;
    v1::CreateVariableRequest create;
    create.set_name("w");
    create.add_shape(10);
    v1::CreateVariableResponse created;
    ASSERT_TRUE(parameters->CreateVariable(&context, create, &created).ok());
  }

  grpc::Status Checkpoint() {
    grpc::ClientContext context;
    v1::CheckpointResponse response;
    return admin_->Checkpoint(&context, v1::CheckpointRequest(), &response);
  }

  grpc::health::v1::HealthCheckResponse::ServingStatus Health() {
    auto health = grpc::health::v1::Health::NewStub(channel_);
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckResponse response;
    EXPECT_TRUE(
        health
            ->Check(&context, grpc::health::v1::HealthCheckRequest(), &response)
            .ok());
    return response.status();
  }

  v1::Stats Stats() {
    grpc::ClientContext context;
    v1::Stats stats;
    EXPECT_TRUE(admin_->GetStats(&context, v1::GetStatsRequest(), &stats).ok());
    return stats;
  }

  fs::path dir_;
  FaultEnv env_;
  ServerOptions options_;
  std::unique_ptr<ParameterServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
};

TEST_F(ServerCheckpointTest, TheSyncCutTimeoutIsBounded) {
  for (int seconds : {0, -5, 541}) {
    options_.sync_cut_timeout_s = seconds;
    auto refused = ParameterServer::Start(options_);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(refused.status().message()),
                HasSubstr(absl::StrCat("--sync_cut_timeout_s=", seconds)));
  }
  // In range: a sync shard with it makes its checkpoints (a cut).
  options_.consistency = Consistency::kSync;
  options_.num_workers = 1;
  options_.sync_cut_timeout_s = 1;
  Start();
  EXPECT_TRUE(Checkpoint().ok());
}

TEST_F(ServerCheckpointTest, AFolderThatCannotBeWrittenStopsTheStart) {
  env_.FailAll(FaultEnv::Op::kCreate, {EACCES});
  auto server = ParameterServer::Start(options_);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(server.status().message(),
              HasSubstr(absl::StrCat("checkpoint folder ", dir_.string())));
}

TEST_F(ServerCheckpointTest, HealthSaysNotServingWhileCheckpointsFail) {
  ASSERT_NO_FATAL_FAILURE(Start());
  EXPECT_EQ(Health(), grpc::health::v1::HealthCheckResponse::SERVING);
  ASSERT_TRUE(Checkpoint().ok());

  env_.FailAll(FaultEnv::Op::kSync, {EIO});
  const grpc::Status failed = Checkpoint();
  EXPECT_EQ(failed.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(failed.error_message(), HasSubstr("injected failure"));
  EXPECT_EQ(Health(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Stats().checkpoint_failures(), 1u);

  env_.Heal();
  ASSERT_TRUE(Checkpoint().ok());
  EXPECT_EQ(Health(), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(Stats().checkpoints(), 2u);
}

TEST_F(ServerCheckpointTest, AFailedFinalCheckpointIsAnErrorOfShutdown) {
  ASSERT_NO_FATAL_FAILURE(Start());
  env_.FailAll(FaultEnv::Op::kAppend, {ENOSPC});
  const absl::Status stopped = server_->Shutdown();
  EXPECT_EQ(stopped.code(), absl::StatusCode::kResourceExhausted) << stopped;
  EXPECT_THAT(stopped.message(),
              HasSubstr("final checkpoint failed, so the pushes since the "
                        "last complete one are lost"));
  server_->Wait();
  EXPECT_TRUE(server_->Shutdown().ok());  // said once
}

TEST_F(ServerCheckpointTest, AGoodFinalCheckpointStopsCleanly) {
  ASSERT_NO_FATAL_FAILURE(Start());
  EXPECT_TRUE(server_->Shutdown().ok());
  server_->Wait();
  EXPECT_TRUE(
      fs::exists(dir_ / "ckpt-00000000000000000001-shard-0-of-1" / "MANIFEST"));
  EXPECT_TRUE(fs::exists(dir_ / "ckpt-00000000000000000001.cluster"));
}

}  // namespace
}  // namespace ps

// Tokens and TLS: who may call what, and with which code a refusal comes.
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <future>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/optimizer_config.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "tests/admin/admin_test_util.h"

namespace ps::testing {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr char kWorkerToken[] = "worker-secret-1";
constexpr char kAdminToken[] = "admin-secret-1";

class TokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions options;
    options.block_size = 8;
    options.worker_tokens_file =
        dir_.WriteFile("workers", std::string("# worker tokens\n") +
                                      kWorkerToken + " trainer-a\n");
    options.admin_tokens_file =
        dir_.WriteFile("admins", std::string(kAdminToken) + " alice\n");
    shards_ = StartShards(1, options);
    ASSERT_EQ(shards_.size(), 1u);
    channel_ = MakeChannel(shards_[0]->address());
    parameters_ = v1::ParameterService::NewStub(channel_);
    admin_ = v1::AdminService::NewStub(channel_);
  }

  grpc::StatusCode ClusterInfo(const std::string& token) {
    v1::ClusterInfo info;
    return parameters_
        ->GetClusterInfo(MakeContext(token).get(), v1::GetClusterInfoRequest(),
                         &info)
        .error_code();
  }
  grpc::StatusCode Push(const std::string& token) {
    v1::PushRequest request;
    request.set_worker_id("w");
    request.set_seq(++seq_);
    request.set_epoch(1);  // a session the shard takes from the push
    v1::PushResponse response;
    return parameters_->Push(MakeContext(token).get(), request, &response)
        .error_code();
  }
  grpc::StatusCode GetOptimizer(const std::string& token) {
    v1::OptimizerConfig config;
    return admin_
        ->GetOptimizer(MakeContext(token).get(), v1::GetOptimizerRequest(),
                       &config)
        .error_code();
  }
  grpc::StatusCode SetOptimizer(const std::string& token) {
    v1::SetOptimizerRequest request;
    *request.mutable_config() = Config("sgd {}");
    v1::SetOptimizerResponse response;
    return admin_->SetOptimizer(MakeContext(token).get(), request, &response)
        .error_code();
  }
  grpc::StatusCode Stats(const std::string& token) {
    v1::Stats stats;
    return admin_
        ->GetStats(MakeContext(token).get(), v1::GetStatsRequest(), &stats)
        .error_code();
  }

  TempDir dir_;
  std::vector<std::unique_ptr<ParameterServer>> shards_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ParameterService::Stub> parameters_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
  uint64_t seq_ = 0;
};

TEST_F(TokenTest, NoTokenIsUnauthenticated) {
  EXPECT_EQ(ClusterInfo(""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Push(""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(GetOptimizer(""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(SetOptimizer(""), grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(TokenTest, UnknownTokenIsUnauthenticated) {
  for (const std::string token :
       {"not-a-token", "worker-secret-", "admin-secret-12", "trainer-a"}) {
    EXPECT_EQ(ClusterInfo(token), grpc::StatusCode::UNAUTHENTICATED) << token;
    EXPECT_EQ(GetOptimizer(token), grpc::StatusCode::UNAUTHENTICATED) << token;
  }
  // Not a bearer token at all.
  grpc::ClientContext context;
  context.AddMetadata("authorization", std::string("Basic ") + kAdminToken);
  v1::ClusterInfo info;
  EXPECT_EQ(
      parameters_->GetClusterInfo(&context, v1::GetClusterInfoRequest(), &info)
          .error_code(),
      grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(TokenTest, WorkerTokenMayTrainButNotAdminister) {
  EXPECT_EQ(ClusterInfo(kWorkerToken), grpc::StatusCode::OK);
  // An empty push is accepted: nothing to apply.
  EXPECT_EQ(Push(kWorkerToken), grpc::StatusCode::OK);
  EXPECT_EQ(GetOptimizer(kWorkerToken), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(SetOptimizer(kWorkerToken), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Stats(kWorkerToken), grpc::StatusCode::PERMISSION_DENIED);
  // The refused change changed nothing.
  v1::OptimizerConfig config;
  ASSERT_TRUE(admin_
                  ->GetOptimizer(MakeContext(kAdminToken).get(),
                                 v1::GetOptimizerRequest(), &config)
                  .ok());
  EXPECT_TRUE(config.has_adam());
  EXPECT_EQ(config.config_version(), 1u);
}

TEST_F(TokenTest, AdminTokenMayUseBothServices) {
  EXPECT_EQ(ClusterInfo(kAdminToken), grpc::StatusCode::OK);
  EXPECT_EQ(Push(kAdminToken), grpc::StatusCode::OK);
  EXPECT_EQ(GetOptimizer(kAdminToken), grpc::StatusCode::OK);
  EXPECT_EQ(SetOptimizer(kAdminToken), grpc::StatusCode::OK);
  EXPECT_EQ(Stats(kAdminToken), grpc::StatusCode::OK);
  // The refusals above were counted by code.
  EXPECT_EQ(Stats(""), grpc::StatusCode::UNAUTHENTICATED);
  v1::Stats stats;
  ASSERT_TRUE(admin_
                  ->GetStats(MakeContext(kAdminToken).get(),
                             v1::GetStatsRequest(), &stats)
                  .ok());
  EXPECT_GE(stats.refusals().at("UNAUTHENTICATED"), 1u);
}

// Calls `method` ("/package.Service/Method") with raw request bytes.
grpc::Status RawCall(const std::shared_ptr<grpc::Channel>& channel,
                     const std::string& method, const std::string& bytes,
                     const std::string& token) {
  grpc::GenericStub stub(channel);
  auto context = MakeContext(token);
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(context.get(), method, grpc::StubOptions(), &request,
                 &response,
                 [&](grpc::Status status) { done.set_value(status); });
  return done.get_future().get();
}

// Every method of every service of the contract, from its descriptors: a
// method (or service) added later is covered without editing this list.
std::vector<std::pair<std::string, bool>> EveryMethod() {
  std::vector<std::pair<std::string, bool>> methods;  // (path, admin only)
  const google::protobuf::FileDescriptor* file =
      v1::PushRequest::descriptor()->file();
  for (int s = 0; s < file->service_count(); ++s) {
    const google::protobuf::ServiceDescriptor* service = file->service(s);
    for (int i = 0; i < service->method_count(); ++i) {
      methods.emplace_back(absl::StrCat("/", service->full_name(), "/",
                                        service->method(i)->name()),
                           service->name() == "AdminService");
    }
  }
  return methods;
}

TEST_F(TokenTest, EveryMethodRefusesCallersWithoutTheRightToken) {
  const auto methods = EveryMethod();
  ASSERT_GE(methods.size(), 10u);
  for (const auto& [method, admin_only] : methods) {
    // The empty message is a valid request of every method.
    EXPECT_EQ(RawCall(channel_, method, "", "").error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << method;
    EXPECT_EQ(RawCall(channel_, method, "", "not-a-token").error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << method;
    if (admin_only) {
      EXPECT_EQ(RawCall(channel_, method, "", kWorkerToken).error_code(),
                grpc::StatusCode::PERMISSION_DENIED)
          << method;
    }
  }
}

TEST_F(TokenTest, EveryMethodAnswersUnreadableRequestsWithInvalidArgument) {
  // Field 1, length-delimited, with a length that never ends; then bytes
  // that claim more than there is.
  const std::string garbage[] = {std::string("\x0a\xff\xff\xff\xff\xff\xff"
                                             "\xff\xff\xff\xff\x01"),
                                 std::string("\x0a\x7f\x01\x02")};
  for (const auto& [method, admin_only] : EveryMethod()) {
    for (const std::string& bytes : garbage) {
      const grpc::Status status = RawCall(channel_, method, bytes, kAdminToken);
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
          << method << ": " << status.error_message();
      EXPECT_THAT(status.error_message(), ::testing::HasSubstr("cannot parse"))
          << method;
    }
  }
  // Nothing was changed, and the shard still serves.
  EXPECT_EQ(ClusterInfo(kWorkerToken), grpc::StatusCode::OK);
}

// A token may name the worker ids it pushes as: another id is refused for
// sessions and pushes alike, so a worker cannot fence or silence another.
TEST(TokenWorkersTest, ATokenPushesOnlyAsItsWorkers) {
  TempDir dir;
  ServerOptions options;
  options.block_size = 8;
  options.worker_tokens_file = dir.WriteFile(
      "workers", "bound-secret trainer b workers=trainer-*,eval\n");
  auto shards = StartShards(1, options);
  ASSERT_EQ(shards.size(), 1u);
  auto stub = v1::ParameterService::NewStub(MakeChannel(shards[0]->address()));
  uint64_t epoch = 0;
  auto open = [&](const std::string& worker) {
    v1::OpenSessionRequest request;
    request.set_worker_id(worker);
    v1::OpenSessionResponse response;
    grpc::Status status = stub->OpenSession(MakeContext("bound-secret").get(),
                                            request, &response);
    epoch = response.epoch();
    return status;
  };
  EXPECT_TRUE(open("trainer-7").ok());
  const uint64_t trainer_epoch = epoch;
  EXPECT_TRUE(open("eval").ok());
  const grpc::Status other = open("evaluator");
  EXPECT_EQ(other.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(other.error_message(),
              ::testing::HasSubstr("may push as workers trainer-*, eval"));
  v1::PushRequest push;
  push.set_worker_id("someone-else");
  push.set_epoch(1);
  push.set_seq(1);
  v1::PushResponse pushed;
  EXPECT_EQ(
      stub->Push(MakeContext("bound-secret").get(), push, &pushed).error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  push.set_worker_id("trainer-7");
  push.set_epoch(trainer_epoch);
  EXPECT_TRUE(
      stub->Push(MakeContext("bound-secret").get(), push, &pushed).ok());
}

TEST_F(TokenTest, HealthCheckNeedsNoToken) {
  auto health = Health::NewStub(channel_);
  HealthCheckResponse response;
  HealthCheckRequest request;
  ASSERT_TRUE(health->Check(MakeContext().get(), request, &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
}

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    certificate_ = MakeCertificate(dir_, "shard");
    ServerOptions options;
    options.tls_cert_file = certificate_.cert_file;
    options.tls_key_file = certificate_.key_file;
    shards_ = StartShards(1, options);
    ASSERT_EQ(shards_.size(), 1u);
  }

  grpc::Status ClusterInfo(std::shared_ptr<grpc::Channel> channel) {
    auto stub = v1::ParameterService::NewStub(channel);
    v1::ClusterInfo info;
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::seconds(5));
    return stub->GetClusterInfo(context.get(), v1::GetClusterInfoRequest(),
                                &info);
  }

  TempDir dir_;
  Certificate certificate_;
  std::vector<std::unique_ptr<ParameterServer>> shards_;
};

TEST_F(TlsTest, ClientTrustingTheCaConnects) {
  grpc::Status status =
      ClusterInfo(MakeChannel(shards_[0]->address(), certificate_.pem));
  EXPECT_TRUE(status.ok()) << status.error_message();
  // By name, too.
  status = ClusterInfo(MakeChannel(
      "localhost:" + std::to_string(shards_[0]->port()), certificate_.pem));
  EXPECT_TRUE(status.ok()) << status.error_message();
  // The health service rides the same TLS port.
  auto health =
      Health::NewStub(MakeChannel(shards_[0]->address(), certificate_.pem));
  HealthCheckResponse response;
  ASSERT_TRUE(
      health->Check(MakeContext().get(), HealthCheckRequest(), &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
}

TEST_F(TlsTest, PlaintextClientFails) {
  const grpc::Status status = ClusterInfo(MakeChannel(shards_[0]->address()));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << status.error_message();
}

TEST_F(TlsTest, ClientTrustingAnotherCaFails) {
  const Certificate other = MakeCertificate(dir_, "other");
  const grpc::Status status =
      ClusterInfo(MakeChannel(shards_[0]->address(), other.pem));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << status.error_message();
}

TEST(TlsOptionsTest, CertificateWithoutKeyIsRefused) {
  TempDir dir;
  ServerOptions options;
  options.tls_cert_file = dir.WriteFile("only.crt", "not used");
  auto server = ParameterServer::Start(options);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ps::testing

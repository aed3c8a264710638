// ps_server under a memory limit (ulimit -v), attacked the ways that once
// killed it: one small Pull asking for a huge answer, a client that never
// reads its answers, and a variable whose blocks' bookkeeping outweighs its
// values. Each time the shard refuses what it cannot hold, with a message,
// and goes on serving.
//
// Labelled "limits" in ctest (ctest -L limits runs them alone).
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/child_process.h"
#include "common/wire.h"
#include "proto/ps/v1/ps.grpc.pb.h"

namespace ps {
namespace {

using ::testing::HasSubstr;

constexpr char kBinary[] = PS_SERVER_BINARY;
constexpr auto kStartTimeout = std::chrono::seconds(20);
// The address space the shard may map: well below what each attack would
// take without its bound.
constexpr uint64_t kAddressSpaceMiB = 2048;

// A ps_server child under `ulimit -v`, and a channel to it.
class LimitedShard {
 public:
  explicit LimitedShard(const std::vector<std::string>& flags) {
    std::vector<std::string> args = {
        "-c",
        absl::StrCat("ulimit -v ", kAddressSpaceMiB * 1024,
                     " && exec \"$0\" \"$@\""),
        kBinary};
    args.insert(args.end(), flags.begin(), flags.end());
    child_ = ChildProcess::Start("/bin/sh", args, StderrTo::Pipe());
    if (child_ == nullptr) return;
    std::optional<std::string> line = child_->ReadLine(kStartTimeout);
    if (!line.has_value() || line->rfind("listening on ", 0) != 0) return;
    address_ = line->substr(std::string("listening on ").size());
  }

  ~LimitedShard() {
    if (child_ != nullptr) child_->Kill();
  }

  bool ok() const { return !address_.empty(); }
  const std::string& address() const { return address_; }
  bool running() {
    return child_ != nullptr &&
           !child_->WaitForExit(std::chrono::milliseconds(0)).has_value();
  }
  std::string Stderr() {
    child_->Kill();
    return child_->ReadAllStderr(std::chrono::seconds(5));
  }

  std::shared_ptr<grpc::Channel> Channel(grpc::ChannelArguments args = {}) {
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    return grpc::CreateCustomChannel(address_,
                                     grpc::InsecureChannelCredentials(), args);
  }

 private:
  std::unique_ptr<ChildProcess> child_;
  std::string address_;
};

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(60));
  return context;
}

grpc::Status Create(v1::ParameterService::Stub& stub, const std::string& name,
                    uint64_t size) {
  v1::CreateVariableRequest request;
  request.set_name(name);
  request.add_shape(size);
  v1::CreateVariableResponse response;
  return stub.CreateVariable(Context().get(), request, &response);
}

// A pull of every block of a variable of `size` values (blocks of
// `block_size`).
v1::PullRequest WholePull(const std::string& name, uint64_t size,
                          uint64_t block_size) {
  v1::PullRequest request;
  for (uint64_t offset = 0; offset < size; offset += block_size) {
    v1::Slice* slice = request.add_slices();
    slice->set_variable(name);
    slice->set_offset(offset);
    slice->set_length(std::min(block_size, size - offset));
  }
  return request;
}

// Class 3: naming one block thousands of times in an 18 KB request once
// built a multi-GiB answer before any size check.
TEST(LimitsTest, OneSmallPullCannotBuildAHugeAnswer) {
  LimitedShard shard(
      {"--block_size=262144", "--max_message_mb=32", "--optimizer=sgd {}"});
  ASSERT_TRUE(shard.ok());
  auto stub = v1::ParameterService::NewStub(shard.Channel());
  ASSERT_TRUE(Create(*stub, "w", 262144).ok());
  v1::PullRequest repeated;
  for (int i = 0; i < 2000; ++i) {
    v1::Slice* slice = repeated.add_slices();
    slice->set_variable("w");
    slice->set_offset(0);
    slice->set_length(262144);
  }
  ASSERT_LT(repeated.ByteSizeLong(), 20000u);
  v1::PullResponse response;
  const grpc::Status status = stub->Pull(Context().get(), repeated, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("more than once"));
  // Distinct ranges whose answer would exceed the largest message: refused
  // before it is built.
  ASSERT_TRUE(Create(*stub, "big", 16 << 20).ok());  // 64 MiB of values
  const grpc::Status big = stub->Pull(
      Context().get(), WholePull("big", 16 << 20, 262144), &response);
  EXPECT_EQ(big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(big.error_message(), HasSubstr("max_message_mb"));
  EXPECT_TRUE(shard.running());
  EXPECT_TRUE(
      stub->Pull(Context().get(), WholePull("w", 262144, 262144), &response)
          .ok());
}

// Class 5: a client that starts pulls and never reads their answers. Its
// connection may hold only so much; then its new calls are refused, while
// another client is served.
TEST(LimitsTest, AClientThatNeverReadsItsAnswersHoldsABoundedShare) {
  LimitedShard shard({"--block_size=262144"});
  ASSERT_TRUE(shard.ok());
  auto stub = v1::ParameterService::NewStub(shard.Channel());
  constexpr uint64_t kSize = 8 << 20;  // 32 MiB an answer
  ASSERT_TRUE(Create(*stub, "w", kSize).ok());
  const std::string request = WholePull("w", kSize, 262144).SerializeAsString();

  // The reader that never reads: answers it does not ask gRPC for stay in
  // the shard (HTTP/2 flow control stops them at a few KiB each).
  grpc::ChannelArguments slow_args;
  slow_args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  slow_args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  slow_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  grpc::GenericStub slow(shard.Channel(slow_args));
  grpc::CompletionQueue queue;
  struct Unread {
    grpc::ClientContext context;
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> call;
    grpc::ByteBuffer answer;
    grpc::Status status;
  };
  std::vector<std::unique_ptr<Unread>> unread;
  grpc::Slice bytes(request);
  const grpc::ByteBuffer buffer(&bytes, 1);
  for (int i = 0; i < 100; ++i) {  // 3.2 GiB of answers
    auto call = std::make_unique<Unread>();
    call->call = slow.PrepareUnaryCall(
        &call->context, "/ps.v1.ParameterService/Pull", buffer, &queue);
    call->call->StartCall();
    unread.push_back(std::move(call));
  }
  // Let the shard build and queue what it will.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  ASSERT_TRUE(shard.running()) << shard.Stderr();

  // Another client is served meanwhile.
  v1::PullResponse response;
  const grpc::Status other =
      stub->Pull(Context().get(), WholePull("w", kSize, 262144), &response);
  EXPECT_TRUE(other.ok()) << other.error_message();

  // Now read what the slow client got: some answers, and refusals for the
  // calls past its connection's share.
  int refused = 0;
  for (auto& call : unread) {
    call->call->Finish(&call->answer, &call->status, call.get());
  }
  for (size_t i = 0; i < unread.size(); ++i) {
    void* tag;
    bool ok;
    ASSERT_TRUE(queue.Next(&tag, &ok));
    const auto* call = static_cast<Unread*>(tag);
    if (call->status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++refused;
      EXPECT_THAT(call->status.error_message(),
                  HasSubstr("--max_connection_mb"));
    } else {
      EXPECT_TRUE(call->status.ok()) << call->status.error_message();
    }
  }
  EXPECT_GT(refused, 50);
  queue.Shutdown();
  EXPECT_TRUE(shard.running());
}

// Class 6: with --block_size=4 a variable's blocks cost far more than its
// values. The limit once counted only the values, accepted the variable and
// the shard was killed building it; now the bookkeeping is counted too.
TEST(LimitsTest, BlockBookkeepingCountsAgainstTheMemoryLimit) {
  LimitedShard shard({"--block_size=4"});
  ASSERT_TRUE(shard.ok());
  auto stub = v1::ParameterService::NewStub(shard.Channel());
  // 20 M values: 80 MiB of values, 5 M blocks of bookkeeping (about 2 GiB).
  const grpc::Status status = Create(*stub, "w", 20 << 20);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("bookkeeping"));
  EXPECT_TRUE(shard.running());
  EXPECT_TRUE(Create(*stub, "small", 1 << 16).ok());
}

}  // namespace
}  // namespace ps

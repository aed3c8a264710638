#include "client/client.h"

#include <algorithm>
#include <numeric>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/fake_shard.h"
#include "common/wire.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps {
namespace {

using ::ps::testing::FakeShard;
using ::ps::testing::RunningFakeShard;
using ::ps::testing::StartFakeShard;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class ClientTest : public ::testing::Test {
 protected:
  void StartCluster(uint32_t num_shards, uint64_t block_size) {
    for (uint32_t s = 0; s < num_shards; ++s) {
      shards_.push_back(StartFakeShard(s, num_shards, block_size));
      ASSERT_NE(shards_.back(), nullptr);
    }
  }

  ClientOptions Options() const {
    ClientOptions options;
    for (const auto& shard : shards_) {
      options.addresses.push_back(shard->address);
    }
    options.retry.initial_backoff = absl::Milliseconds(5);
    options.retry.max_backoff = absl::Milliseconds(20);
    options.call_timeout = absl::Seconds(10);
    return options;
  }

  std::unique_ptr<Client> Connect(const ClientOptions& options) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }

  FakeShard& shard(size_t s) { return *shards_[s]->service; }

  // Every gradient slice each shard received, with no ownership violation.
  void ExpectNoViolations() {
    for (auto& running : shards_) {
      absl::MutexLock lock(&running->service->mu);
      EXPECT_THAT(running->service->violations, IsEmpty()) << running->address;
    }
  }

  std::vector<std::unique_ptr<RunningFakeShard>> shards_;
};

std::vector<float> Iota(size_t n, float start = 1.0f) {
  std::vector<float> values(n);
  std::iota(values.begin(), values.end(), start);
  return values;
}

TEST_F(ClientTest, ConnectOrdersShardsByIndex) {
  StartCluster(3, 4);
  ClientOptions options = Options();
  std::reverse(options.addresses.begin(), options.addresses.end());
  auto client = Connect(options);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->shard_addresses(),
            (std::vector<std::string>{shards_[0]->address, shards_[1]->address,
                                      shards_[2]->address}));
  EXPECT_EQ(client->plan().num_shards(), 3u);
  EXPECT_EQ(client->plan().block_size(), 4u);
  EXPECT_FALSE(client->worker_id().empty());
}

TEST_F(ClientTest, ConnectRefusesShardsThatDisagree) {
  shards_.push_back(StartFakeShard(0, 2, 4));
  shards_.push_back(StartFakeShard(1, 2, 8));
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(Options());
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(client.status().message(), HasSubstr("block_size"));
  EXPECT_THAT(client.status().message(), HasSubstr(shards_[0]->address));
  EXPECT_THAT(client.status().message(), HasSubstr(shards_[1]->address));
}

TEST_F(ClientTest, ConnectRefusesConsistencyMismatch) {
  shards_.push_back(StartFakeShard(0, 2, 4, "async"));
  shards_.push_back(StartFakeShard(1, 2, 4, "sync"));
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(Options());
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(client.status().message(), HasSubstr("consistency"));
}

TEST_F(ClientTest, ConnectRefusesRepeatedShardIndex) {
  shards_.push_back(StartFakeShard(0, 2, 4));
  shards_.push_back(StartFakeShard(0, 2, 4));
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(Options());
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(client.status().message(), HasSubstr("shard_index 0"));
  EXPECT_THAT(client.status().message(), HasSubstr(shards_[0]->address));
  EXPECT_THAT(client.status().message(), HasSubstr(shards_[1]->address));
  EXPECT_THAT(client.status().message(),
              HasSubstr("no address serves shard_index 1"));
}

TEST_F(ClientTest, ConnectRefusesMissingShards) {
  shards_.push_back(StartFakeShard(0, 3, 4));
  shards_.push_back(StartFakeShard(1, 3, 4));
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(Options());
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(client.status().message(), HasSubstr("num_shards = 3"));
}

TEST_F(ClientTest, ConnectNamesAnUnreachableShard) {
  StartCluster(1, 4);
  ClientOptions options = Options();
  // A port that was free a moment ago: bind and release it.
  auto gone = StartFakeShard(1, 2, 4);
  ASSERT_NE(gone, nullptr);
  const std::string gone_address = gone->address;
  gone->server->Shutdown();
  gone.reset();
  options.addresses.push_back(gone_address);
  options.retry.max_attempts = 2;
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(client.status().message(), HasSubstr(gone_address));
}

TEST_F(ClientTest, ConnectRefusesBadOptions) {
  ClientOptions options;
  EXPECT_EQ(Client::Connect(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.addresses = {"127.0.0.1:1"};
  options.retry.jitter = 2;
  EXPECT_EQ(Client::Connect(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Addresses that are not HOST:PORT, or one listed twice: refused before
  // anything is sent (a port above 65535 would wrap to another port).
  options = Options();
  options.retry.max_attempts = 1;
  for (const auto& [addresses, message] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"127.0.0.1:70000"}, "above 65535"},
           {{"127.0.0.1:0"}, "port 0"},
           {{"127.0.0.1"}, "no port"},
           {{"127.0.0.1:1", "127.0.0.1:1"}, "listed twice"}}) {
    options.addresses = addresses;
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    ASSERT_FALSE(client.ok());
    EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(client.status().message(),
                HasSubstr("ClientOptions::addresses: "));
    EXPECT_THAT(client.status().message(), HasSubstr(message));
  }
}

TEST_F(ClientTest, CreateSendsEachShardOnlyItsBlocks) {
  StartCluster(3, 4);
  auto client = Connect(Options());
  ASSERT_NE(client, nullptr);
  const std::vector<float> initial = Iota(10);
  absl::StatusOr<bool> created = client->CreateVariable("w", {2, 5}, initial);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_TRUE(*created);

  const PartitionPlan& plan = client->plan();
  for (uint32_t s = 0; s < 3; ++s) {
    absl::MutexLock lock(&shard(s).mu);
    ASSERT_EQ(shard(s).creates.size(), 1u);
    const v1::CreateVariableRequest& request = shard(s).creates[0];
    EXPECT_EQ(request.name(), "w");
    EXPECT_THAT(request.shape(), ::testing::ElementsAre(2, 5));
    std::vector<uint64_t> blocks;
    for (const v1::Slice& slice : request.initial_values()) {
      blocks.push_back(plan.BlockOf(slice.offset()));
    }
    std::vector<uint64_t> want;
    for (uint64_t k = 0; k < plan.NumBlocks(10); ++k) {
      if (plan.ShardOf("w", k) == s) want.push_back(k);
    }
    EXPECT_EQ(blocks, want) << "shard " << s;
  }
  ExpectNoViolations();

  // Each shard holds the initial values of its blocks.
  std::vector<float> values(10);
  ASSERT_TRUE(client->Pull("w", values).ok());
  EXPECT_EQ(values, initial);

  created = client->CreateVariable("w", {2, 5});
  ASSERT_TRUE(created.ok());
  EXPECT_FALSE(*created);
  EXPECT_EQ(client->CreateVariable("w", {5, 2}).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(ClientTest, PushRoutesWholeBlocksToTheirOwners) {
  StartCluster(3, 4);
  auto client = Connect(Options());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {10}, Iota(10)).ok());
  const std::vector<float> gradient = Iota(10, 0.5f);
  PushOptions push_options;
  push_options.step = 7;
  push_options.loss = 1.5;
  ASSERT_TRUE(client->Push("w", gradient, push_options).ok());
  ExpectNoViolations();

  const PartitionPlan& plan = client->plan();
  for (uint32_t s = 0; s < 3; ++s) {
    absl::MutexLock lock(&shard(s).mu);
    const bool owns_some = plan.ShardOf("w", 0) == s ||
                           plan.ShardOf("w", 1) == s ||
                           plan.ShardOf("w", 2) == s;
    ASSERT_EQ(shard(s).pushes.size(), owns_some ? 1u : 0u);
    if (!owns_some) continue;
    const v1::PushRequest& push = shard(s).pushes[0];
    EXPECT_EQ(push.worker_id(), client->worker_id());
    EXPECT_EQ(push.step(), 7u);
    EXPECT_TRUE(push.has_loss());
    EXPECT_EQ(push.loss(), 1.5);
    for (const v1::Slice& slice : push.gradients()) {
      EXPECT_EQ(slice.dtype(), v1::FLOAT32);
      EXPECT_EQ(slice.data().size(), slice.length() * 4);
    }
  }
  std::vector<float> values(10);
  ASSERT_TRUE(client->Pull("w", values).ok());
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(values[i], (i + 1.0f) - (i + 0.5f)) << i;
  }
}

// For the part tests: 2 shards, blocks of 64 values (256 bytes as float32),
// a variable of 40 blocks, parts of 1 KiB, 3 in flight.
constexpr size_t kPartsVariableSize = 64 * 40;

ClientOptions PartsOptions(ClientOptions options) {
  options.part_bytes = 1024;
  options.parts_in_flight = 3;
  return options;
}

// Issues `pushes` pushes of ones to "big" at once, waits for all, and
// checks that the values moved by exactly that many (SGD, lr = 1).
void PushConcurrentlyAndCheck(Client& client, int pushes) {
  const std::vector<float> gradient(kPartsVariableSize, 1.0f);
  std::vector<std::future<absl::Status>> done;
  for (int i = 0; i < pushes; ++i) {
    done.push_back(client.PushAsync("big", gradient));
  }
  for (auto& push : done) ASSERT_TRUE(push.get().ok());
  std::vector<float> values(kPartsVariableSize);
  ASSERT_TRUE(client.Pull("big", values).ok());
  EXPECT_EQ(values, std::vector<float>(kPartsVariableSize, -1.0f * pushes));
}

// A push larger than part_bytes goes out as several requests at once, up to
// parts_in_flight per shard, each with its own seq.
TEST_F(ClientTest, PushSplitsIntoPartsSentTogether) {
  StartCluster(2, 64);
  auto client = Connect(PartsOptions(Options()));
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("big", {kPartsVariableSize}).ok());
  // The first parts stay in the shard long enough to be seen together.
  for (uint32_t s = 0; s < 2; ++s) {
    absl::MutexLock lock(&shard(s).mu);
    shard(s).slow_pushes = 3;
    shard(s).slow_push_delay = absl::Milliseconds(100);
  }
  constexpr int kPushes = 3;
  PushConcurrentlyAndCheck(*client, kPushes);
  ExpectNoViolations();

  size_t slices = 0;
  for (uint32_t s = 0; s < 2; ++s) {
    absl::MutexLock lock(&shard(s).mu);
    const std::vector<v1::PushRequest>& got = shard(s).pushes;
    EXPECT_GT(got.size(), static_cast<size_t>(kPushes));
    absl::flat_hash_set<uint64_t> seqs;
    for (const v1::PushRequest& push : got) {
      EXPECT_LE(push.ByteSizeLong(), 1024u);
      EXPECT_TRUE(seqs.insert(push.seq()).second) << "seq sent twice";
      slices += push.gradients_size();
    }
    EXPECT_EQ(shard(s).applied, static_cast<int>(got.size()));
    EXPECT_EQ(shard(s).max_pushes_in_flight, 3);
  }
  EXPECT_EQ(slices, 40u * kPushes);
}

// A part refused and retried after a long backoff is applied before any
// later push touches its blocks: each block sees a worker's pushes in order.
TEST_F(ClientTest, LaterPushesWaitForARetriedPart) {
  StartCluster(2, 64);
  ClientOptions options = PartsOptions(Options());
  options.retry.initial_backoff = absl::Milliseconds(300);
  options.retry.max_backoff = absl::Milliseconds(300);
  auto client = Connect(options);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("big", {kPartsVariableSize}).ok());
  for (uint32_t s = 0; s < 2; ++s) {
    absl::MutexLock lock(&shard(s).mu);
    shard(s).unavailable_pushes = 1;
  }
  PushConcurrentlyAndCheck(*client, 3);
  ExpectNoViolations();  // the fake shard checks each block's seqs
}

TEST_F(ClientTest, PushRefusesABlockLargerThanAMessage) {
  StartCluster(1, 1024);  // 4 KiB per block
  ClientOptions options = Options();
  options.max_message_bytes = 2048;
  auto client = Connect(options);
  ASSERT_NE(client, nullptr);
  std::vector<float> gradient(1024);
  absl::Status status = client->Push("w", gradient);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("max_message_bytes"));
  absl::MutexLock lock(&shard(0).mu);
  EXPECT_EQ(shard(0).pushes.size(), 0u);
}

TEST_F(ClientTest, PullCutsLargeBlocksIntoRangesInsideTheBlock) {
  StartCluster(2, 1024);  // 4 KiB per block
  ClientOptions options = Options();
  options.max_message_bytes = 1024;
  auto client = Connect(options);
  ASSERT_NE(client, nullptr);
  const size_t size = 2500;
  const std::vector<float> initial = Iota(size);
  ASSERT_TRUE(client->CreateVariable("w", {size}, {}, std::nullopt).ok());
  // Set the values through a push from zero: values = -gradient.
  std::vector<float> gradient(size);
  for (size_t i = 0; i < size; ++i) gradient[i] = -initial[i];
  ClientOptions big = Options();
  auto pusher = Connect(big);
  ASSERT_NE(pusher, nullptr);
  ASSERT_TRUE(pusher->Push("w", gradient).ok());

  std::vector<float> values(size);
  ASSERT_TRUE(client->Pull("w", values).ok());
  EXPECT_EQ(values, initial);
  ExpectNoViolations();
  for (uint32_t s = 0; s < 2; ++s) {
    absl::MutexLock lock(&shard(s).mu);
    EXPECT_GT(shard(s).pulls.size(), 1u);
    for (const v1::PullRequest& pull : shard(s).pulls) {
      uint64_t answer_bytes = 0;
      for (const v1::Slice& slice : pull.slices()) {
        answer_bytes += slice.length() * 4;
      }
      EXPECT_LE(answer_bytes, 1024u);
    }
  }
}

TEST_F(ClientTest, MultiVariableCallsSendOneRequestPerShard) {
  StartCluster(2, 4);
  auto client = Connect(Options());
  ASSERT_NE(client, nullptr);
  const std::vector<std::string> names = {"a", "b", "c"};
  for (const std::string& name : names) {
    ASSERT_TRUE(client->CreateVariable(name, {8}).ok());
  }
  std::vector<std::vector<float>> gradients = {Iota(8, 1), Iota(8, 10),
                                               Iota(8, 100)};
  std::vector<NamedGradient> push;
  for (size_t i = 0; i < names.size(); ++i) {
    push.push_back({names[i], gradients[i]});
  }
  PushOptions step3;
  step3.step = 3;
  ASSERT_TRUE(client->Push(push, step3).ok());
  for (uint32_t s = 0; s < 2; ++s) {
    absl::MutexLock lock(&shard(s).mu);
    ASSERT_EQ(shard(s).pushes.size(), 1u);
    EXPECT_EQ(shard(s).pushes[0].gradients_size(), 3);  // one block of each
  }

  std::vector<std::vector<float>> values(3, std::vector<float>(8));
  std::vector<NamedValues> pull;
  for (size_t i = 0; i < names.size(); ++i) {
    pull.push_back({names[i], values[i]});
  }
  ASSERT_TRUE(client->Pull(pull).ok());
  for (size_t i = 0; i < names.size(); ++i) {
    for (size_t j = 0; j < 8; ++j) EXPECT_EQ(values[i][j], -gradients[i][j]);
  }
  for (uint32_t s = 0; s < 2; ++s) {
    absl::MutexLock lock(&shard(s).mu);
    EXPECT_EQ(shard(s).pulls.size(), 1u);
  }

  std::vector<NamedUpdate> updates;
  std::vector<std::vector<float>> after(3, std::vector<float>(8));
  for (size_t i = 0; i < names.size(); ++i) {
    updates.push_back({names[i], gradients[i], after[i]});
  }
  ASSERT_TRUE(client->PushPull(updates).ok());
  for (size_t i = 0; i < names.size(); ++i) {
    for (size_t j = 0; j < 8; ++j) {
      EXPECT_EQ(after[i][j], -2 * gradients[i][j]);
    }
  }

  const std::vector<NamedGradient> twice = {{"a", gradients[0]},
                                            {"a", gradients[0]}};
  EXPECT_EQ(client->Push(twice).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientTest, RetriesUnavailableWithTheSameWorkerAndSeq) {
  StartCluster(1, 4);
  auto client = Connect(Options());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {4}).ok());
  {
    absl::MutexLock lock(&shard(0).mu);
    shard(0).unavailable_pushes = 2;
  }
  ASSERT_TRUE(client->Push("w", std::vector<float>{1, 2, 3, 4}).ok());
  {
    absl::MutexLock lock(&shard(0).mu);
    ASSERT_EQ(shard(0).pushes.size(), 3u);
    for (const v1::PushRequest& push : shard(0).pushes) {
      EXPECT_EQ(push.worker_id(), client->worker_id());
      EXPECT_EQ(push.seq(), shard(0).pushes[0].seq());
    }
    EXPECT_EQ(shard(0).applied, 1);
  }
  // The next push takes a new, larger seq.
  ASSERT_TRUE(client->Push("w", std::vector<float>{1, 1, 1, 1}).ok());
  absl::MutexLock lock(&shard(0).mu);
  ASSERT_EQ(shard(0).pushes.size(), 4u);
  EXPECT_GT(shard(0).pushes[3].seq(), shard(0).pushes[0].seq());
}

TEST_F(ClientTest, RetriesDeadlineExceededAndTheServerAppliesOnce) {
  StartCluster(1, 4);
  ClientOptions options = Options();
  options.call_timeout = absl::Milliseconds(300);
  auto client = Connect(options);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {4}).ok());
  {
    absl::MutexLock lock(&shard(0).mu);
    shard(0).slow_pushes = 1;
    shard(0).slow_push_delay = absl::Milliseconds(600);
  }
  ASSERT_TRUE(client->Push("w", std::vector<float>{1, 2, 3, 4}).ok());
  {
    absl::MutexLock lock(&shard(0).mu);
    ASSERT_GE(shard(0).pushes.size(), 2u);
    EXPECT_EQ(shard(0).pushes[1].seq(), shard(0).pushes[0].seq());
    EXPECT_EQ(shard(0).applied, 1);
  }
  EXPECT_EQ(shard(0).Values("w"), (std::vector<float>{-1, -2, -3, -4}));
}

TEST_F(ClientTest, GivesUpAfterMaxAttempts) {
  StartCluster(2, 4);
  ClientOptions options = Options();
  options.retry.max_attempts = 3;
  auto client = Connect(options);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {8}).ok());
  {
    absl::MutexLock lock(&shard(1).mu);
    shard(1).unavailable_pushes = 100;
  }
  absl::Status status = client->Push("w", std::vector<float>(8, 1.0f));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(),
              HasSubstr(absl::StrCat("shard 1 (", shards_[1]->address, ")")));
  absl::MutexLock lock(&shard(1).mu);
  EXPECT_EQ(shard(1).pushes.size(), 3u);
}

TEST_F(ClientTest, ErrorsNameTheShardThatFailed) {
  StartCluster(3, 4);
  auto client = Connect(Options());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {12}).ok());
  {
    absl::MutexLock lock(&shard(2).mu);
    shard(2).error =
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "NaN in gradient");
  }
  absl::Status status = client->Push("w", std::vector<float>(12, 1.0f));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr(absl::StrCat("shard 2 (", shards_[2]->address, ")")));
  EXPECT_THAT(status.message(), HasSubstr("NaN in gradient"));
  EXPECT_THAT(status.message(), ::testing::Not(HasSubstr("shard 0")));

  std::vector<float> values(12);
  status = client->Pull("w", values);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("shard 2"));
}

TEST_F(ClientTest, RefusesAnAnswerThatDoesNotMatchTheRequest) {
  StartCluster(2, 4);
  auto client = Connect(Options());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {8}).ok());
  {
    absl::MutexLock lock(&shard(0).mu);
    shard(0).short_answers = true;
  }
  std::vector<float> values(8);
  absl::Status status = client->Pull("w", values);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(status.message(), HasSubstr("shard 0"));
}

// A shard whose Pull and PushPull answers are bytes that no PullResponse
// parses to (a field whose length runs past the end).
class GarbageAnswers final
    : public v1::ParameterService::WithRawCallbackMethod_Pull<
          v1::ParameterService::WithRawCallbackMethod_PushPull<
              v1::ParameterService::CallbackService>> {
 public:
  grpc::ServerUnaryReactor* GetClusterInfo(grpc::CallbackServerContext* context,
                                           const v1::GetClusterInfoRequest*,
                                           v1::ClusterInfo* response) override {
    response->set_num_shards(1);
    response->set_block_size(4);
    response->set_consistency("async");
    return Finish(context);
  }
  grpc::ServerUnaryReactor* OpenSession(
      grpc::CallbackServerContext* context, const v1::OpenSessionRequest*,
      v1::OpenSessionResponse* response) override {
    response->set_epoch(1);
    return Finish(context);
  }
  grpc::ServerUnaryReactor* Pull(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer*,
                                 grpc::ByteBuffer* response) override {
    return Answer(context, response);
  }
  grpc::ServerUnaryReactor* PushPull(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer*,
                                     grpc::ByteBuffer* response) override {
    return Answer(context, response);
  }

 private:
  static grpc::ServerUnaryReactor* Finish(
      grpc::CallbackServerContext* context) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
  static grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                          grpc::ByteBuffer* response) {
    // Field 1 of 100 bytes, of which 3 came: a truncated message.
    grpc::Slice bytes(
        std::string("\x0a\x64"
                    "abc",
                    5));
    *response = grpc::ByteBuffer(&bytes, 1);
    return Finish(context);
  }
};

TEST(ClientRawAnswerTest, AnAnswerThatDoesNotParseIsInternal) {
  GarbageAnswers service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ClientOptions options;
  options.addresses = {absl::StrCat("127.0.0.1:", port)};
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<float> values(8);
  const std::vector<float> gradient(8, 1.0f);
  for (const absl::Status& status :
       {(*client)->Pull("w", values),
        (*client)->PushPull("w", gradient, values)}) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
    EXPECT_THAT(status.message(), HasSubstr("not a ps.v1.PullResponse"));
  }
  client->reset();
  server->Shutdown();
}

TEST_F(ClientTest, EncodesBfloat16AndFloat16BothWays) {
  StartCluster(2, 4);
  auto client = Connect(Options());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {8}).ok());
  // Exact in both half formats.
  const std::vector<float> gradient = {0.5f, -1.25f, 3, 0.75f, -2, 8, 0, 1.5f};
  PushOptions bf16;
  bf16.dtype = v1::BFLOAT16;
  ASSERT_TRUE(client->Push("w", gradient, bf16).ok());
  for (uint32_t s = 0; s < 2; ++s) {
    absl::MutexLock lock(&shard(s).mu);
    ASSERT_EQ(shard(s).pushes.size(), 1u);
    for (const v1::Slice& slice : shard(s).pushes[0].gradients()) {
      EXPECT_EQ(slice.dtype(), v1::BFLOAT16);
      EXPECT_EQ(slice.data().size(), slice.length() * 2);
    }
  }
  for (v1::DType dtype : {v1::BFLOAT16, v1::FLOAT16}) {
    std::vector<float> values(8);
    ASSERT_TRUE(client->Pull("w", values, {.dtype = dtype}).ok());
    for (size_t i = 0; i < 8; ++i) EXPECT_EQ(values[i], -gradient[i]);
  }
  {
    absl::MutexLock lock(&shard(0).mu);
    const v1::PullRequest& last = shard(0).pulls.back();
    EXPECT_EQ(last.dtype(), v1::FLOAT16);
  }

  // A value that float16 rounds: 1/3 comes back as the nearest half.
  std::vector<float> after(8);
  const std::vector<float> third(8, 1.0f / 3);
  PushOptions fp16;
  fp16.dtype = v1::FLOAT16;
  fp16.pull_dtype = v1::FLOAT16;
  ASSERT_TRUE(client->PushPull("w", third, after, fp16).ok());
  std::string encoded;
  std::vector<float> expected(8);
  std::vector<float> exact(8);
  for (size_t i = 0; i < 8; ++i) {
    std::vector<float> g(1, 1.0f / 3), half(1);
    EncodeValues(v1::FLOAT16, g, &encoded);
    ASSERT_TRUE(DecodeValues(v1::FLOAT16, encoded, half).ok());
    exact[i] = -gradient[i] - half[0];
  }
  std::string round;
  EncodeValues(v1::FLOAT16, exact, &round);
  ASSERT_TRUE(DecodeValues(v1::FLOAT16, round, expected).ok());
  EXPECT_EQ(after, expected);
}

TEST_F(ClientTest, SendsTheBearerToken) {
  StartCluster(1, 4);
  ClientOptions options = Options();
  options.token = "s3cret";
  auto client = Connect(options);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {4}).ok());
  ASSERT_TRUE(client->Push("w", std::vector<float>(4)).ok());
  absl::MutexLock lock(&shard(0).mu);
  EXPECT_THAT(shard(0).authorizations, ::testing::ElementsAre("Bearer s3cret"));
}

TEST_F(ClientTest, RefusesSizesThatDoNotMatchACreatedVariable) {
  StartCluster(1, 4);
  auto client = Connect(Options());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {10}).ok());
  std::vector<float> values(9);
  EXPECT_EQ(client->Push("w", values).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Pull("w", values).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> other(10);
  EXPECT_EQ(client->PushPull("w", other, values).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->CreateVariable("w", {3}, Iota(4)).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::MutexLock lock(&shard(0).mu);
  EXPECT_EQ(shard(0).pushes.size(), 0u);
  EXPECT_EQ(shard(0).pulls.size(), 0u);
}

TEST_F(ClientTest, AsyncFormsCallBackAndFulfilFutures) {
  StartCluster(2, 4);
  auto client = Connect(Options());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->CreateVariable("w", {8}).ok());
  const std::vector<float> gradient(8, 1.0f);
  std::future<absl::Status> pushed = client->PushAsync("w", gradient);
  ASSERT_TRUE(pushed.get().ok());

  std::vector<float> values(8);
  const NamedValues pull[] = {{"w", values}};
  absl::Notification done;
  absl::Status result = absl::UnknownError("not called");
  client->PullAsync(pull, {}, [&](absl::Status status) {
    result = std::move(status);
    done.Notify();
  });
  done.WaitForNotification();
  ASSERT_TRUE(result.ok()) << result;
  EXPECT_EQ(values, std::vector<float>(8, -1.0f));

  // A call refused before sending calls back on the calling thread.
  const NamedGradient bad[] = {{"", gradient}};
  bool called = false;
  client->PushAsync(bad, {}, [&](absl::Status status) {
    called = true;
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  });
  EXPECT_TRUE(called);
}

TEST_F(ClientTest, ConcurrentPushesFromOneClientAreEachAppliedOnce) {
  StartCluster(3, 4);
  ClientOptions options = Options();
  options.channels_per_shard = 2;
  auto client = Connect(options);
  ASSERT_NE(client, nullptr);
  const size_t size = 30;
  ASSERT_TRUE(client->CreateVariable("w", {size}).ok());
  constexpr int kThreads = 4;
  constexpr int kPushes = 25;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::vector<float> gradient(size, static_cast<float>(t + 1));
      std::vector<std::future<absl::Status>> futures;
      for (int i = 0; i < kPushes; ++i) {
        futures.push_back(client->PushAsync("w", gradient));
      }
      for (auto& f : futures) EXPECT_TRUE(f.get().ok());
    });
  }
  for (auto& thread : threads) thread.join();
  std::vector<float> values(size);
  ASSERT_TRUE(client->Pull("w", values).ok());
  // Each thread t pushed (t + 1) kPushes times: sum = kPushes * (1+2+3+4).
  EXPECT_EQ(values, std::vector<float>(size, -kPushes * 10.0f));
  for (uint32_t s = 0; s < 3; ++s) {
    absl::MutexLock lock(&shard(s).mu);
    uint64_t previous = 0;
    for (const v1::PushRequest& push : shard(s).pushes) {
      EXPECT_GT(push.seq(), previous);
      previous = push.seq();
    }
  }
}

}  // namespace
}  // namespace ps

#include "client/internal/transport.h"

#include <algorithm>
#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/file_util.h"
#include "common/grpc_args.h"
#include "common/status.h"

namespace ps::client_internal {
namespace {

// The methods of ParameterService in ps.proto, as gRPC names them.
constexpr char kPushMethod[] = "/ps.v1.ParameterService/Push";
constexpr char kPullMethod[] = "/ps.v1.ParameterService/Pull";
constexpr char kPushPullMethod[] = "/ps.v1.ParameterService/PushPull";

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeCredentials(
    const ClientOptions& options) {
  if (options.tls_ca_file.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  PS_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                      ReadSmallFile(options.tls_ca_file, "TLS CA file"));
  return grpc::SslCredentials(ssl);
}

grpc::ChannelArguments MakeChannelArguments(const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  // Without it the channels of one shard would share one connection.
  if (options.channels_per_shard > 1) {
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  }
  // Reconnect to a restarted shard at the pace of the retry policy. gRPC's
  // own reconnect backoff (1 s, growing to 120 s) would otherwise fail every
  // retry fast until long after the shard is back.
  const int64_t initial_ms = std::max<int64_t>(
      1, absl::ToInt64Milliseconds(options.retry.initial_backoff));
  const int64_t max_ms = std::max<int64_t>(
      initial_ms, absl::ToInt64Milliseconds(options.retry.max_backoff));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              static_cast<int>(std::min<int64_t>(initial_ms, INT_MAX)));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              static_cast<int>(std::min<int64_t>(max_ms, INT_MAX)));
  ApplyGrpcArgs(options.channel_args, args);
  return args;
}

// Runs `method` with the request's bytes and reads its answer, a
// PullResponse, into *response (INTERNAL when it does not parse).
template <typename Message>
void CallForSlices(ShardStub* stub, grpc::ClientContext* context,
                   const char* method, const Encoded<Message>* request,
                   ReceivedSlices* response, CallDone done) {
  auto answer = std::make_shared<grpc::ByteBuffer>();
  stub->raw->UnaryCall(
      context, method, grpc::StubOptions(), &request->bytes, answer.get(),
      [answer, response, done = std::move(done)](grpc::Status status) {
        if (status.ok() && !ReadPullResponse(*answer, response)) {
          status =
              grpc::Status(grpc::StatusCode::INTERNAL,
                           "the shard's answer is not a ps.v1.PullResponse");
        }
        done(std::move(status));
      });
}

}  // namespace

std::string Shard::Name() const {
  return index.has_value() ? absl::StrCat("shard ", *index, " (", address, ")")
                           : absl::StrCat("shard at ", address);
}

bool Shard::MarkDown(absl::Time now) {
  absl::MutexLock lock(&down_mu_);
  if (down_.load(std::memory_order_relaxed)) return false;
  down_since_ = now;
  down_.store(true, std::memory_order_relaxed);
  return true;
}

std::optional<absl::Duration> Shard::MarkUp(absl::Time now) {
  if (!down_.load(std::memory_order_relaxed)) return std::nullopt;
  absl::MutexLock lock(&down_mu_);
  if (!down_.load(std::memory_order_relaxed)) return std::nullopt;
  down_.store(false, std::memory_order_relaxed);
  return now - down_since_;
}

absl::Duration Shard::DownFor(absl::Time now) {
  absl::MutexLock lock(&down_mu_);
  if (!down_.load(std::memory_order_relaxed)) return absl::ZeroDuration();
  return now - down_since_;
}

absl::StatusOr<std::vector<std::unique_ptr<Shard>>> OpenShards(
    const ClientOptions& options) {
  PS_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                      MakeCredentials(options));
  const grpc::ChannelArguments args = MakeChannelArguments(options);
  std::vector<std::unique_ptr<Shard>> shards;
  for (const std::string& address : options.addresses) {
    auto shard = std::make_unique<Shard>();
    shard->address = address;
    for (int c = 0; c < options.channels_per_shard; ++c) {
      std::shared_ptr<grpc::Channel> channel =
          grpc::CreateCustomChannel(address, credentials, args);
      shard->stubs.push_back({v1::ParameterService::NewStub(channel),
                              std::make_unique<grpc::GenericStub>(channel)});
    }
    shards.push_back(std::move(shard));
  }
  return shards;
}

void PrepareContext(const ClientOptions& options,
                    grpc::ClientContext* context) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + options.call_timeout));
  if (!options.token.empty()) {
    context->AddMetadata("authorization",
                         absl::StrCat("Bearer ", options.token));
  }
}

EncodedPush EncodePush(v1::PushRequest request) {
  EncodedPush encoded;
  encoded.head = std::move(request);
  ToByteBuffer(encoded.head, &encoded.bytes);
  return encoded;
}

EncodedPull EncodePull(v1::PullRequest request) {
  EncodedPull encoded;
  encoded.head = std::move(request);
  grpc::Slice bytes(encoded.head.SerializeAsString());
  encoded.bytes = grpc::ByteBuffer(&bytes, 1);
  return encoded;
}

void CallGetClusterInfo(ShardStub* stub, grpc::ClientContext* context,
                        const v1::GetClusterInfoRequest* request,
                        v1::ClusterInfo* response, CallDone done) {
  stub->typed->async()->GetClusterInfo(context, request, response,
                                       std::move(done));
}

void CallOpenSession(ShardStub* stub, grpc::ClientContext* context,
                     const v1::OpenSessionRequest* request,
                     v1::OpenSessionResponse* response, CallDone done) {
  stub->typed->async()->OpenSession(context, request, response,
                                    std::move(done));
}

void CallCreateVariable(ShardStub* stub, grpc::ClientContext* context,
                        const v1::CreateVariableRequest* request,
                        v1::CreateVariableResponse* response, CallDone done) {
  stub->typed->async()->CreateVariable(context, request, response,
                                       std::move(done));
}

void CallDeleteVariable(ShardStub* stub, grpc::ClientContext* context,
                        const v1::DeleteVariableRequest* request,
                        v1::DeleteVariableResponse* response, CallDone done) {
  stub->typed->async()->DeleteVariable(context, request, response,
                                       std::move(done));
}

void CallReadState(ShardStub* stub, grpc::ClientContext* context,
                   const v1::ReadStateRequest* request,
                   v1::ReadStateResponse* response, CallDone done) {
  stub->typed->async()->ReadState(context, request, response, std::move(done));
}

void CallWriteState(ShardStub* stub, grpc::ClientContext* context,
                    const v1::WriteStateRequest* request,
                    v1::WriteStateResponse* response, CallDone done) {
  stub->typed->async()->WriteState(context, request, response, std::move(done));
}

void CallCreateTable(ShardStub* stub, grpc::ClientContext* context,
                     const v1::CreateTableRequest* request,
                     v1::CreateTableResponse* response, CallDone done) {
  stub->typed->async()->CreateTable(context, request, response,
                                    std::move(done));
}

void CallPush(ShardStub* stub, grpc::ClientContext* context,
              const EncodedPush* request, grpc::ByteBuffer* response,
              CallDone done) {
  stub->raw->UnaryCall(context, kPushMethod, grpc::StubOptions(),
                       &request->bytes, response, std::move(done));
}

void CallPull(ShardStub* stub, grpc::ClientContext* context,
              const EncodedPull* request, ReceivedSlices* response,
              CallDone done) {
  CallForSlices(stub, context, kPullMethod, request, response, std::move(done));
}

void CallPushPull(ShardStub* stub, grpc::ClientContext* context,
                  const EncodedPush* request, ReceivedSlices* response,
                  CallDone done) {
  CallForSlices(stub, context, kPushPullMethod, request, response,
                std::move(done));
}

}  // namespace ps::client_internal

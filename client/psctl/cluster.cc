#include "client/psctl/cluster.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "client/cluster_check.h"

namespace ps::psctl {

ShardSet::ShardSet(const ConnectOptions& options) : options_(options) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls_root_certs.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs;
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  // Answers (stats of many variables) may be large.
  args.SetMaxReceiveMessageSize(-1);
  for (size_t i = 0; i < options.servers.size(); ++i) {
    Shard shard;
    shard.index = static_cast<int>(i);
    shard.address = options.servers[i];
    auto channel = grpc::CreateCustomChannel(shard.address, credentials, args);
    shard.parameters = v1::ParameterService::NewStub(channel);
    shard.admin = v1::AdminService::NewStub(channel);
    shard.health = grpc::health::v1::Health::NewStub(channel);
    shards_.push_back(std::move(shard));
  }
}

void ShardSet::ReadLayout() {
  std::vector<ClusterInfoAnswer> answers =
      ForEach<ClusterInfoAnswer>([this](const Shard& shard) {
        ClusterInfoAnswer answer;
        auto context = NewContext();
        answer.status = shard.parameters->GetClusterInfo(
            context.get(), v1::GetClusterInfoRequest(), &answer.info);
        return answer;
      });
  std::vector<std::string> addresses;
  std::vector<std::optional<v1::ClusterInfo>> infos;
  for (size_t i = 0; i < shards_.size(); ++i) {
    addresses.push_back(shards_[i].address);
    if (answers[i].status.ok()) {
      infos.push_back(answers[i].info);
    } else {
      infos.emplace_back();
    }
  }
  layout_read_ = true;
  absl::StatusOr<std::vector<size_t>> order = PlaceShards(addresses, infos);
  if (!order.ok()) {
    layout_problem_ = order.status();
    cluster_infos_ = std::move(answers);
    return;
  }
  layout_problem_ = absl::OkStatus();
  std::vector<Shard> ordered;
  cluster_infos_.clear();
  for (size_t index = 0; index < order->size(); ++index) {
    ordered.push_back(std::move(shards_[(*order)[index]]));
    ordered.back().index = static_cast<int>(index);
    cluster_infos_.push_back(std::move(answers[(*order)[index]]));
  }
  shards_ = std::move(ordered);
}

std::vector<int> ShardSet::Unverified() const {
  std::vector<int> silent;
  for (size_t i = 0; i < cluster_infos_.size(); ++i) {
    if (!cluster_infos_[i].status.ok()) silent.push_back(static_cast<int>(i));
  }
  return silent;
}

std::unique_ptr<grpc::ClientContext> ShardSet::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + options_.timeout);
  if (!options_.token.empty()) {
    context->AddMetadata("authorization", "Bearer " + options_.token);
  }
  return context;
}

std::string CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return absl::StrCat("CODE_", static_cast<int>(code));
  }
}

std::string DescribeStatus(const grpc::Status& status) {
  if (status.ok()) return "OK";
  return absl::StrCat(CodeName(status.error_code()), ": ",
                      status.error_message());
}

}  // namespace ps::psctl

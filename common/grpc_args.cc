#include "common/grpc_args.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ps {

absl::StatusOr<std::vector<GrpcArg>> ParseGrpcArgs(
    const std::vector<std::string>& items) {
  std::vector<GrpcArg> args;
  for (const std::string& item : items) {
    const size_t equals = item.find('=');
    int value = 0;
    if (equals == std::string::npos ||
        !absl::StartsWith(item.substr(0, equals), "grpc.") ||
        !absl::SimpleAtoi(item.substr(equals + 1), &value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "gRPC argument '", item,
          "' is not name=integer with a name starting grpc. (for example "
          "grpc.http2.max_frame_size=1048576)"));
    }
    args.emplace_back(item.substr(0, equals), value);
  }
  return args;
}

void ApplyGrpcArgs(const std::vector<GrpcArg>& args,
                   grpc::ChannelArguments& channel) {
  for (const auto& [name, value] : args) channel.SetInt(name, value);
}

void ApplyGrpcArgs(const std::vector<GrpcArg>& args,
                   grpc::ServerBuilder& builder) {
  for (const auto& [name, value] : args) {
    builder.AddChannelArgument(name, value);
  }
}

}  // namespace ps

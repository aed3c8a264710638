// gRPC channel arguments given by name on a command line or in options
// ("grpc.http2.max_frame_size=1048576"): for tuning the transport of the
// shard (ps_server --grpc_arg) and of the client (ClientOptions), and for
// studying it (bench/ps_load --grpc_arg).
#ifndef PS_COMMON_GRPC_ARGS_H_
#define PS_COMMON_GRPC_ARGS_H_

#include <grpcpp/server_builder.h>
#include <grpcpp/support/channel_arguments.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace ps {

// One integer channel argument: its gRPC name and value.
using GrpcArg = std::pair<std::string, int>;

// Parses "name=value" items. INVALID_ARGUMENT, naming the item, for one
// whose name does not start with "grpc." or whose value is not an integer
// that fits an int.
absl::StatusOr<std::vector<GrpcArg>> ParseGrpcArgs(
    const std::vector<std::string>& items);

// Sets each of `args` after what was set before (gRPC takes the last value
// a name is given, so they override it). A ServerBuilder applies its own
// message-size limits last: those stay as its Set*MessageSize calls made
// them (ps_server's --max_message_mb). gRPC clamps values out of range.
void ApplyGrpcArgs(const std::vector<GrpcArg>& args,
                   grpc::ChannelArguments& channel);
void ApplyGrpcArgs(const std::vector<GrpcArg>& args,
                   grpc::ServerBuilder& builder);

}  // namespace ps

#endif  // PS_COMMON_GRPC_ARGS_H_

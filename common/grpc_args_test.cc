#include "common/grpc_args.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ps {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

TEST(GrpcArgsTest, ParsesNamesAndIntegers) {
  absl::StatusOr<std::vector<GrpcArg>> args = ParseGrpcArgs(
      {"grpc.http2.max_frame_size=1048576", "grpc.http2.bdp_probe=0",
       "grpc.experimental.tcp_min_read_chunk_size=-1"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(
      *args,
      ElementsAre(Pair("grpc.http2.max_frame_size", 1048576),
                  Pair("grpc.http2.bdp_probe", 0),
                  Pair("grpc.experimental.tcp_min_read_chunk_size", -1)));
}

TEST(GrpcArgsTest, RefusesWhatIsNotAnIntegerGrpcArgument) {
  for (const char* bad : {"grpc.http2.bdp_probe", "http2.bdp_probe=0",
                          "grpc.x=one", "grpc.x=4294967296", "=3", "grpc.x="}) {
    absl::StatusOr<std::vector<GrpcArg>> args = ParseGrpcArgs({bad});
    ASSERT_FALSE(args.ok()) << bad;
    EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(args.status().message(), HasSubstr(bad));
  }
}

TEST(GrpcArgsTest, AppliedArgumentsComeAfterEarlierOnes) {
  grpc::ChannelArguments channel;
  channel.SetInt("grpc.http2.bdp_probe", 1);
  ApplyGrpcArgs({{"grpc.http2.bdp_probe", 0}, {"grpc.x", 7}}, channel);
  grpc_channel_args c = channel.c_channel_args();
  std::vector<std::pair<std::string, int>> set;
  for (size_t i = 0; i < c.num_args; ++i) {
    if (c.args[i].type != GRPC_ARG_INTEGER) continue;  // the user agent
    set.emplace_back(c.args[i].key, c.args[i].value.integer);
  }
  // gRPC takes the last value a name is given.
  EXPECT_THAT(set,
              ElementsAre(Pair("grpc.http2.bdp_probe", 1),
                          Pair("grpc.http2.bdp_probe", 0), Pair("grpc.x", 7)));
}

}  // namespace
}  // namespace ps

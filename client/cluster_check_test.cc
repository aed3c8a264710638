#include "client/cluster_check.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ps {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

v1::ClusterInfo Info(uint32_t index, uint32_t num_shards,
                     uint64_t block_size = 4) {
  v1::ClusterInfo info;
  info.set_shard_index(index);
  info.set_num_shards(num_shards);
  info.set_block_size(block_size);
  info.set_consistency("async");
  return info;
}

v1::ClusterInfo Sync(uint32_t index, uint32_t num_shards, uint32_t workers,
                     uint32_t quorum) {
  v1::ClusterInfo info = Info(index, num_shards);
  info.set_consistency("sync");
  info.set_num_workers(workers);
  info.set_quorum(quorum);
  return info;
}

TEST(ParseServerAddressTest, TakesHostsAndPortsInRange) {
  for (const auto& [text, host, port] :
       std::vector<std::tuple<std::string, std::string, int>>{
           {"127.0.0.1:7000", "127.0.0.1", 7000},
           {"localhost:1", "localhost", 1},
           {"shard-0.ps.default.svc.cluster.local:50051",
            "shard-0.ps.default.svc.cluster.local", 50051},
           {"ps_shard:65535", "ps_shard", 65535},
           {"[::1]:8080", "[::1]", 8080},
           {"[fe80::1%eth0]:80", "[fe80::1%eth0]", 80},
           {"host:007", "host", 7}}) {
    absl::StatusOr<ServerAddress> address = ParseServerAddress(text);
    ASSERT_TRUE(address.ok()) << text << ": " << address.status();
    EXPECT_EQ(address->host, host);
    EXPECT_EQ(address->port, port);
  }
  EXPECT_EQ(ParseServerAddress("host:007")->ToString(), "host:7");
}

TEST(ParseServerAddressTest, RefusesWhatIsNotHostColonPort) {
  for (const auto& [text, why] :
       std::vector<std::pair<std::string, std::string>>{
           {"", "empty"},
           {":7000", "no host"},
           {"host", "no port"},
           {"host:", "no port"},
           {"host:http", "not a number"},
           {"host:-1", "not a number"},
           {"host:+80", "not a number"},
           {"host: 80", "not a number"},
           {"host:0", "port 0"},
           {"host:000", "port 0"},
           {"host:65536", "above 65535"},
           {"host:70000", "above 65535"},
           {"host:99999999999999999999999", "above 65535"},
           {"::1:7000", "in brackets"},
           {"a:b:7000", "more than one ':'"},
           {"[::1]", "no port"},
           {"[::1]7000", "followed by ':PORT'"},
           {"[::1:7000", "no ']'"},
           {"[]:7000", "no host"},
           {"[not ipv6]:7000", "not an IPv6 address"},
           {"my host:7000", "no host name has"},
           {"dns:///host:7000", "'/'"},
           {"unix:/tmp/socket", "'/'"}}) {
    absl::StatusOr<ServerAddress> address = ParseServerAddress(text);
    ASSERT_FALSE(address.ok()) << text;
    EXPECT_EQ(address.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(address.status().message(), HasSubstr(why)) << text;
    EXPECT_THAT(address.status().message(), HasSubstr("'" + text + "'"));
  }
}

TEST(CheckServerAddressesTest, RefusesNoneBadOnesAndRepeats) {
  EXPECT_TRUE(CheckServerAddresses({"a:1", "a:2", "b:1"}).ok());
  EXPECT_THAT(CheckServerAddresses({}).message(), HasSubstr("no shard"));
  EXPECT_THAT(CheckServerAddresses({"a:1", "a:70000"}).message(),
              HasSubstr("'a:70000'"));
  for (const std::vector<std::string>& list :
       std::vector<std::vector<std::string>>{{"a:1", "a:1"},
                                             {"a:1", "b:2", "a:1"},
                                             {"a:1", "A:1"},
                                             {"a:1", "a:01"}}) {
    const absl::Status status = CheckServerAddresses(list);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("listed twice"));
  }
  EXPECT_THAT(CheckServerAddresses({"a:1", "A:01"}).message(),
              HasSubstr("'A:01' is listed twice (first as 'a:1')"));
}

TEST(ParseServerListTest, SplitsTrimsAndChecks) {
  absl::StatusOr<std::vector<std::string>> list =
      ParseServerList(" a:1 , b:02,[::1]:3");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_THAT(*list, ElementsAre("a:1", "b:2", "[::1]:3"));
  for (const char* text : {"", ",", "a:1,", "a:1,,b:2", " , a:1"}) {
    EXPECT_THAT(ParseServerList(text).status().message(),
                HasSubstr("empty entry"))
        << text;
  }
  EXPECT_THAT(ParseServerList("a:1,b:2,a:1").status().message(),
              HasSubstr("listed twice"));
  EXPECT_THAT(ParseServerList("a:1,b:65536").status().message(),
              HasSubstr("above 65535"));
}

TEST(CheckClusterTest, OneClusterInShardOrder) {
  absl::StatusOr<std::vector<size_t>> order =
      CheckCluster({"a:1", "b:1", "c:1"}, {Info(0, 3), Info(1, 3), Info(2, 3)});
  ASSERT_TRUE(order.ok()) << order.status();
  EXPECT_THAT(*order, ElementsAre(0, 1, 2));
}

TEST(CheckClusterTest, AnyOrderIsPutInShardOrder) {
  absl::StatusOr<std::vector<size_t>> order =
      CheckCluster({"c:1", "a:1", "b:1"}, {Info(2, 3), Info(0, 3), Info(1, 3)});
  ASSERT_TRUE(order.ok()) << order.status();
  // Shard 0 is the second address, shard 1 the third, shard 2 the first.
  EXPECT_THAT(*order, ElementsAre(1, 2, 0));
  order = CheckCluster({"b:1", "a:1"}, {Info(1, 2), Info(0, 2)});
  ASSERT_TRUE(order.ok());
  EXPECT_THAT(*order, ElementsAre(1, 0));
}

TEST(CheckClusterTest, RefusesASubset) {
  const absl::Status status =
      CheckCluster({"a:1", "b:1"}, {Info(0, 3), Info(1, 3)}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("not one cluster"));
  EXPECT_THAT(status.message(),
              HasSubstr("2 addresses given (a:1, b:1) but the shards report "
                        "num_shards = 3"));
  EXPECT_THAT(CheckCluster({"b:1"}, {Info(1, 2)}).status().message(),
              HasSubstr("1 address given (b:1)"));
}

TEST(CheckClusterTest, RefusesAShardTwice) {
  // The same shard under two names, and shard 1 missing.
  const absl::Status status =
      CheckCluster({"localhost:1", "127.0.0.1:1"}, {Info(0, 2), Info(0, 2)})
          .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(),
              HasSubstr("shard_index 0 is served by localhost:1 and "
                        "127.0.0.1:1"));
  EXPECT_THAT(status.message(), HasSubstr("no address serves shard_index 1"));
}

TEST(CheckClusterTest, RefusesShardsOfTwoClusters) {
  struct Case {
    std::string field;
    v1::ClusterInfo second;
  };
  v1::ClusterInfo other_consistency = Info(1, 2);
  other_consistency.set_consistency("sync");
  for (const Case& c : std::vector<Case>{{"num_shards", Info(1, 3)},
                                         {"block_size", Info(1, 2, 8)},
                                         {"consistency", other_consistency}}) {
    const absl::Status status =
        CheckCluster({"a:1", "b:1"}, {Info(0, 2), c.second}).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << c.field;
    EXPECT_THAT(status.message(), HasSubstr("disagree on " + c.field));
    EXPECT_THAT(status.message(), HasSubstr("a:1 says"));
    EXPECT_THAT(status.message(), HasSubstr("b:1 says"));
  }
  EXPECT_THAT(CheckCluster({"a:1", "b:1"}, {Sync(0, 2, 2, 2), Sync(1, 2, 3, 2)})
                  .status()
                  .message(),
              HasSubstr("disagree on num_workers: a:1 says 2, b:1 says 3"));
  EXPECT_THAT(CheckCluster({"a:1", "b:1"}, {Sync(0, 2, 2, 2), Sync(1, 2, 2, 1)})
                  .status()
                  .message(),
              HasSubstr("disagree on quorum"));
  EXPECT_TRUE(
      CheckCluster({"a:1", "b:1"}, {Sync(0, 2, 2, 1), Sync(1, 2, 2, 1)}).ok());
}

TEST(CheckClusterTest, RefusesImpossibleAnswers) {
  EXPECT_THAT(CheckCluster({"a:1"}, {Info(0, 0)}).status().message(),
              HasSubstr("num_shards = 0"));
  EXPECT_THAT(CheckCluster({"a:1"}, {Info(0, 1, 0)}).status().message(),
              HasSubstr("block_size = 0"));
  EXPECT_THAT(
      CheckCluster({"a:1", "b:1"}, {Info(0, 2), Info(5, 2)}).status().message(),
      HasSubstr("b:1 reports shard_index 5 of num_shards = 2"));
}

TEST(PlaceShardsTest, ServersThatDidNotAnswerTakeTheFreePlaces) {
  absl::StatusOr<std::vector<size_t>> order = PlaceShards(
      {"a:1", "b:1", "c:1"}, {std::nullopt, Info(0, 3), Info(2, 3)});
  ASSERT_TRUE(order.ok()) << order.status();
  EXPECT_THAT(*order, ElementsAre(1, 0, 2));
  order = PlaceShards({"a:1", "b:1", "c:1"},
                      {std::nullopt, Info(1, 3), std::nullopt});
  ASSERT_TRUE(order.ok());
  EXPECT_THAT(*order, ElementsAre(0, 1, 2));
  // Nobody answered: the list's order.
  order = PlaceShards({"b:1", "a:1"}, {std::nullopt, std::nullopt});
  ASSERT_TRUE(order.ok());
  EXPECT_THAT(*order, ElementsAre(0, 1));
}

TEST(PlaceShardsTest, TheAnswersThereAreAreChecked) {
  EXPECT_THAT(PlaceShards({"a:1", "b:1"}, {Info(0, 3), std::nullopt})
                  .status()
                  .message(),
              HasSubstr("num_shards = 3"));
  EXPECT_THAT(
      PlaceShards({"a:1", "b:1", "c:1"}, {Info(0, 3), std::nullopt, Info(0, 3)})
          .status()
          .message(),
      HasSubstr("shard_index 0 is served by a:1 and c:1"));
  EXPECT_THAT(PlaceShards({"a:1", "b:1", "c:1"},
                          {Info(0, 3), std::nullopt, Info(1, 3, 8)})
                  .status()
                  .message(),
              HasSubstr("disagree on block_size"));
}

}  // namespace
}  // namespace ps

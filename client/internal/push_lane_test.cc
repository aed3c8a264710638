#include "client/internal/push_lane.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ps::client_internal {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

// Records each request as "push.request@seq" when the lane sends it.
class Recorder {
 public:
  std::vector<PushLane::Send> Push(int push, int requests) {
    std::vector<PushLane::Send> sends;
    for (int r = 0; r < requests; ++r) {
      sends.push_back([this, push, r](uint64_t seq) {
        sent.push_back(std::to_string(push) + "." + std::to_string(r) + "@" +
                       std::to_string(seq));
      });
    }
    return sends;
  }
  // What was sent since the last call.
  std::vector<std::string> Take() { return std::exchange(sent, {}); }

  std::vector<std::string> sent;
};

TEST(PushLaneTest, NumbersRequestsFromTheFirstSeqAsTheyAreSent) {
  PushLane lane(/*first_seq=*/7, /*max_in_flight=*/4);
  Recorder recorder;
  lane.Enqueue(recorder.Push(0, 3));
  EXPECT_THAT(recorder.Take(), ElementsAre("0.0@7", "0.1@8", "0.2@9"));
}

TEST(PushLaneTest, AtMostMaxInFlightOfOnePushAtOnce) {
  PushLane lane(1, 2);
  Recorder recorder;
  lane.Enqueue(recorder.Push(0, 5));
  EXPECT_THAT(recorder.Take(), ElementsAre("0.0@1", "0.1@2"));
  lane.Release();
  EXPECT_THAT(recorder.Take(), ElementsAre("0.2@3"));
  lane.Release();
  lane.Release();
  EXPECT_THAT(recorder.Take(), ElementsAre("0.3@4", "0.4@5"));
}

TEST(PushLaneTest, TheNextPushWaitsUntilEveryRequestOfThePreviousEnded) {
  PushLane lane(1, 4);
  Recorder recorder;
  lane.Enqueue(recorder.Push(0, 2));
  lane.Enqueue(recorder.Push(1, 2));
  EXPECT_THAT(recorder.Take(), ElementsAre("0.0@1", "0.1@2"));
  lane.Release();
  // Room in flight, but push 0 is not finished.
  EXPECT_THAT(recorder.Take(), IsEmpty());
  lane.Release();
  EXPECT_THAT(recorder.Take(), ElementsAre("1.0@3", "1.1@4"));
}

TEST(PushLaneTest, PushesQueuedBehindAFullLaneGoInOrder) {
  PushLane lane(1, 1);
  Recorder recorder;
  lane.Enqueue(recorder.Push(0, 1));
  lane.Enqueue(recorder.Push(1, 1));
  lane.Enqueue(recorder.Push(2, 1));
  EXPECT_THAT(recorder.Take(), ElementsAre("0.0@1"));
  lane.Release();
  EXPECT_THAT(recorder.Take(), ElementsAre("1.0@2"));
  lane.Release();
  EXPECT_THAT(recorder.Take(), ElementsAre("2.0@3"));
  lane.Release();
  lane.Enqueue(recorder.Push(3, 1));
  EXPECT_THAT(recorder.Take(), ElementsAre("3.0@4"));
}

TEST(PushLaneTest, AnEmptyPushIsIgnored) {
  PushLane lane(1, 1);
  Recorder recorder;
  lane.Enqueue({});
  lane.Enqueue(recorder.Push(0, 1));
  EXPECT_THAT(recorder.Take(), ElementsAre("0.0@1"));
}

TEST(PushLaneTest, ASendMayReleaseTheLane) {
  PushLane lane(1, 1);
  std::vector<uint64_t> seqs;
  std::vector<PushLane::Send> push;
  for (int r = 0; r < 3; ++r) {
    // Ends at once, as a request refused before it is sent does.
    push.push_back([&](uint64_t seq) {
      seqs.push_back(seq);
      lane.Release();
    });
  }
  lane.Enqueue(std::move(push));
  EXPECT_THAT(seqs, ElementsAre(1, 2, 3));
}

}  // namespace
}  // namespace ps::client_internal

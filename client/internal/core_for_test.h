// Tests only: a ClientCore wired to running fake shards (client/fake_shard.h)
// as Client::Connect would wire it, without asking the shards anything, so
// that one part of the client can be tested on its own.
#ifndef PS_CLIENT_INTERNAL_CORE_FOR_TEST_H_
#define PS_CLIENT_INTERNAL_CORE_FOR_TEST_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "client/fake_shard.h"
#include "client/internal/core.h"
#include "client/internal/transport.h"
#include "gtest/gtest.h"

namespace ps::client_internal {

// A core with worker id "w" whose shard s is fakes[s] (index s, in order),
// with a lane each and the plan of the fakes' cluster (block_size values per
// block). `options.addresses` is replaced by the fakes' addresses. Fails the
// test and returns null when the channels cannot be made.
inline std::unique_ptr<ClientCore> CoreForTest(
    const std::vector<std::unique_ptr<::ps::testing::RunningFakeShard>>& fakes,
    uint64_t block_size, ClientOptions options = {}) {
  options.addresses.clear();
  for (const auto& fake : fakes) options.addresses.push_back(fake->address);
  auto core = std::make_unique<ClientCore>(options);
  absl::StatusOr<std::vector<std::unique_ptr<Shard>>> shards =
      OpenShards(options);
  EXPECT_TRUE(shards.ok()) << shards.status();
  if (!shards.ok()) return nullptr;
  core->shards = std::move(*shards);
  for (uint32_t s = 0; s < core->shards.size(); ++s) {
    core->shards[s]->index = s;
    core->addresses.push_back(core->shards[s]->address);
    core->lanes.push_back(
        std::make_unique<PushLane>(1, options.parts_in_flight));
  }
  core->worker_id = "w";
  core->plan.emplace(static_cast<uint32_t>(fakes.size()), block_size);
  return core;
}

// Starts `n` fake shards of one async cluster.
inline std::vector<std::unique_ptr<::ps::testing::RunningFakeShard>> StartFakes(
    uint32_t n, uint64_t block_size) {
  std::vector<std::unique_ptr<::ps::testing::RunningFakeShard>> fakes;
  for (uint32_t s = 0; s < n; ++s) {
    fakes.push_back(::ps::testing::StartFakeShard(s, n, block_size));
    EXPECT_NE(fakes.back(), nullptr);
  }
  return fakes;
}

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_CORE_FOR_TEST_H_

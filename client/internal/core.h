// Private to ps::Client (see client/internal/transport.h).
//
// ClientCore: everything a Client holds, shared with its calls in flight,
// and the start of a push or pull. The client's parts, from the wire up:
//
//   transport.h      channels and stubs per shard, request encoding, one
//                    unary call of each method
//   retry.h          which failures are retried, the waits between attempts
//   shard_call.h     one request to one shard, retried per the policy
//   push_lane.h      the order of one shard's pushes, and their seqs
//   request_split.h  a call on whole variables cut into per-shard requests;
//                    answers checked and decoded
//   fanout.h         the outcomes of one call's requests collected into one
//   session.h        the worker's session, opened on every shard
//   core.h           this: what they share; StartPush and StartPull
//   client.cc        ps::Client: Connect and the verbs (client/client.h)
//
// Thread safety: the public members are set by Client::Connect before any
// call starts and only read afterwards. The methods are thread-safe.
#ifndef PS_CLIENT_INTERNAL_CORE_H_
#define PS_CLIENT_INTERNAL_CORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/internal/push_lane.h"
#include "client/internal/request_split.h"
#include "client/internal/retry.h"
#include "client/internal/rows.h"
#include "client/internal/transport.h"
#include "common/partition.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps::client_internal {

// Where a call's answers go: one span per call item. Shared by the call's
// requests, which write disjoint parts of it.
using Outputs = std::shared_ptr<const std::vector<std::span<float>>>;
// Where a call's block versions go, one span per call item (empty: not
// wanted), indexed by block. Null: none wanted.
using Versions = std::shared_ptr<const std::vector<std::span<uint64_t>>>;

class ClientCore {
 public:
  using DoneCallback = Client::DoneCallback;

  explicit ClientCore(const ClientOptions& options)
      : options(options), backoff(options.retry) {}

  ClientCore(const ClientCore&) = delete;
  ClientCore& operator=(const ClientCore&) = delete;

  const ClientOptions options;
  std::string worker_id;
  v1::ClusterInfo cluster_info;
  std::optional<PartitionPlan> plan;
  std::vector<std::unique_ptr<Shard>> shards;  // by shard index once connected
  std::vector<std::string> addresses;          // by shard index
  // One per shard, by shard index; made once the shards are in order.
  std::vector<std::unique_ptr<PushLane>> lanes;
  Backoff backoff;
  // The worker's session: the epoch every exactly-once push carries, and
  // (sync) the step the shards collected when it opened.
  uint64_t epoch = 0;
  uint64_t sync_step = 0;
  // (shard, checkpoint) pairs whose roll-back this client has logged.
  std::set<std::pair<size_t, uint64_t>> rolled_back_warned;

  // Calls (Fanout) and shard calls (ShardCall) that have started and not
  // ended. WaitIdle returns when there are none.
  void CallStarted();
  void CallEnded();
  // REQUIRES: not called from a callback of a call of this core.
  void WaitIdle();

  // Remembers the size of a variable this client created or confirmed.
  void RememberSize(const std::string& name, uint64_t size);
  // INVALID_ARGUMENT when `name` is known to have another size than `size`.
  // `what` names the caller's span in the message ("gradient", "output").
  absl::Status CheckSize(std::string_view name, uint64_t size,
                         std::string_view what);

  // Starts a push of `items` and of `rows` (PushPull when `outputs` is not
  // null: the values after it go there, outputs[i] for items[i], and each
  // table's rows after it to its rows_after when that is not empty): split
  // into parts, queued on each shard's lane, and sent. Each shard gets one
  // request for the call where the limits allow: a table's rows travel in
  // the same request as the dense blocks, and every shard gets each table
  // (perhaps with no rows), so that a table's step counts every push, as
  // torch's optimizer step does. `done` runs once, with OK or with every
  // failed shard named (fanout.h); on this thread, before this returns,
  // when the split fails or there is nothing to send. PushPull writes the
  // answered blocks' versions into `versions` when it is given.
  // REQUIRES: Connect has finished; names and sizes were checked; rows have
  // rows_after only when `outputs` is not null.
  void StartPush(std::vector<PushItem> items, std::vector<RowPushItem> rows,
                 Outputs outputs, const PushOptions& options, DoneCallback done,
                 Versions versions = nullptr);
  // Starts a pull of `items` into `outputs` (outputs[i] for items[i]); all
  // of its requests are sent at once. `done` and `versions` as for
  // StartPush.
  void StartPull(std::vector<PullItem> items, Outputs outputs,
                 const PullOptions& options, DoneCallback done,
                 Versions versions = nullptr);

  // A pull of one table's rows into `rows` (ids.size() x dim).
  void StartPullRows(const std::string& table, uint32_t dim,
                     std::span<const uint64_t> ids, std::span<float> rows,
                     const PullOptions& options, DoneCallback done);

 private:
  SplitLimits split_limits() const {
    return {options.part_bytes, options.max_message_bytes};
  }

  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Mutex sizes_mu_;
  absl::flat_hash_map<std::string, uint64_t> sizes_ ABSL_GUARDED_BY(sizes_mu_);
};

}  // namespace ps::client_internal

#endif  // PS_CLIENT_INTERNAL_CORE_H_

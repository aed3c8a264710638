// The C++ client of the parameter server: the verbs a training worker needs
// (create, push, pull, push-pull) on named dense float32 tensors, against a
// cluster of S shards.
//
// A call on one tensor (or on a list of tensors) is cut into blocks by the
// partitioning rule of DESIGN.md, grouped into requests per shard of about
// ClientOptions::part_bytes each, sent to all shards in parallel, and
// finished when every shard has answered.
//
//   ps::ClientOptions options;
//   options.addresses = {"127.0.0.1:7000", "127.0.0.1:7001"};
//   PS_ASSIGN_OR_RETURN(std::unique_ptr<ps::Client> client,
//                       ps::Client::Connect(options));
//   PS_RETURN_IF_ERROR(client->CreateVariable("w", {784, 10}).status());
//   ps::PushOptions push;
//   push.step = t;
//   PS_RETURN_IF_ERROR(client->PushPull("w", gradient, weights, push));
#ifndef PS_CLIENT_CLIENT_H_
#define PS_CLIENT_CLIENT_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/partition.h"
#include "common/tune_malloc.h"  // ps::TuneMalloc: call it at start-up
#include "proto/ps/v1/ps.pb.h"

namespace ps {

namespace client_internal {
class ClientCore;
class LeaseKeeper;
}  // namespace client_internal

// How a call that failed with UNAVAILABLE or DEADLINE_EXCEEDED is retried.
// Every retry of a push reuses its (worker_id, seq), so the server applies it
// at most once; retrying is safe for every verb.
struct RetryPolicy {
  // How long a request keeps being retried, from its first attempt: a
  // retry whose wait would end after this is not made, and the request fails
  // with the last error. Rides out a shard restart that takes up to this
  // long; a call against a dead shard takes this long to fail.
  absl::Duration deadline = absl::Seconds(120);
  // Attempts per request, the first included (1 = never retry); 0 = no
  // limit but the deadline. A limit makes a call against a dead shard fail
  // sooner than the deadline.
  int max_attempts = 0;
  // Wait before the first retry. Shorter recovers sooner from a blip but
  // adds load on a shard that is struggling.
  absl::Duration initial_backoff = absl::Milliseconds(100);
  // The longest wait between two attempts. Bounds how long a recovered shard
  // may stay unused. initial_backoff and max_backoff also pace the channel's
  // reconnection attempts to a shard that went away.
  absl::Duration max_backoff = absl::Seconds(5);
  // Each wait is the previous one times this (>= 1). Higher backs off faster.
  double backoff_multiplier = 2.0;
  // Each wait is scaled by a uniform factor in [1 - jitter, 1 + jitter]
  // (0 <= jitter <= 1), so workers that failed together do not retry in
  // lockstep. 0 makes waits deterministic.
  double jitter = 0.2;
};

struct ClientOptions {
  // "host:port" of every shard, one per shard, in any order. Connect puts
  // them in shard-index order, and refuses (INVALID_ARGUMENT) an address
  // that is not HOST:PORT with a port in 1..65535, or one listed twice
  // (client/cluster_check.h).
  std::vector<std::string> addresses;

  // Sent as `authorization: Bearer <token>` with every call when non-empty.
  std::string token;

  // PEM file with the CA certificates that sign the shards' certificates.
  // Empty: plaintext channels (only for loopback or a trusted network).
  std::string tls_ca_file;
  // The name the shards' certificates are checked against, when it is not
  // the host in `addresses` (e.g. "localhost" for "127.0.0.1:7000").
  // Empty: the host. Only with tls_ca_file.
  std::string tls_server_name;

  // Deadline of each attempt of each request. Longer tolerates slow shards
  // (and, in sync mode, slow peers: a sync push waits for the step's
  // quorum); shorter detects a hung shard sooner.
  absl::Duration call_timeout = absl::Seconds(60);

  RetryPolicy retry;

  // Identifies this worker to the server (exactly-once and sync steps). Must
  // be unique among live workers; reusing it after a restart is safe: the
  // new process opens a newer session, which fences the old one. Empty: a
  // random one.
  std::string worker_id;

  // The largest request or answer this client sends or accepts. Must not
  // exceed the shards' --max_message_mb. One block of gradient (block_size
  // values in the push dtype) and one shard's initial values in
  // CreateVariable must fit in one message.
  size_t max_message_bytes = size_t{16} << 20;

  // Pushes and pulls are cut into parts of whole blocks of about this many
  // bytes per request and answer (a block larger than this goes alone), and
  // up to parts_in_flight parts of one call are in flight to each shard at
  // once: the shard applies one part while the next is on the wire, and
  // holds in memory only the parts in flight rather than the whole call.
  size_t part_bytes = size_t{2} << 20;
  int parts_in_flight = 4;

  // gRPC channels (TCP connections) per shard; calls are spread over them.
  // More can raise throughput of large pulls at the cost of sockets and
  // memory.
  int channels_per_shard = 1;

  // More gRPC channel arguments (common/grpc_args.h), set after the
  // client's own, for tuning the transport: for example
  // {"grpc.http2.max_frame_size", 1 << 20}. bench/README.md, "What gRPC
  // gives per byte", has what each measured.
  std::vector<std::pair<std::string, int>> channel_args;

  // Sync and ssp: keep this worker's lease on every shard with a heartbeat
  // every third of the shards' --lease_timeout_s (DESIGN.md,
  // "Consistency"), so that a worker that computes for a long time between
  // pushes is not dropped. Off: only pushes renew it.
  bool keep_lease = true;
};

// Options of a push or push-pull.
struct PushOptions {
  // The worker's iteration. Sync mode aggregates pushes per step; async
  // mode ignores it. Unset: the client's own step counter (sync_step()),
  // which carries a training loop through a roll-back of the cluster
  // without code in the loop (see Client::sync_step).
  std::optional<uint64_t> step;
  // The objective at the values the gradient was computed on (used by the
  // Eve rule and averaged in sync mode).
  std::optional<double> loss;
  // Encoding of the gradients on the wire. BFLOAT16 and FLOAT16 halve the
  // bytes sent at the cost of precision (rounded to nearest even).
  v1::DType dtype = v1::FLOAT32;
  // PushPull: encoding of the values in the answer.
  v1::DType pull_dtype = v1::FLOAT32;
};

// Options of a pull.
struct PullOptions {
  // Encoding of the values on the wire; see PushOptions::dtype.
  v1::DType dtype = v1::FLOAT32;
  // Ssp: the step this worker is about to compute; the pull waits until the
  // slowest member is at most the cluster's staleness behind it (or fails
  // with DEADLINE_EXCEEDED at call_timeout). Unset: read at once.
  std::optional<uint64_t> step;
};

// A sparse table's settings (DESIGN.md, "Sparse tables"): the initial rows,
// admission and eviction, and its own optimizer (unset: the server's
// default).
struct TableOptions {
  v1::RowInit init;
  v1::TablePolicy policy;
  std::optional<v1::OptimizerConfig> optimizer;
  // When the table exists (with this dim): ON_EXISTS_ERROR accepts it when
  // it was created with the same init, policy and optimizer, else
  // ALREADY_EXISTS naming what differs; ON_EXISTS_REUSE keeps it as it is;
  // ON_EXISTS_RESET replaces it (rows, slots, steps; another dim too).
  v1::OnExists on_exists = v1::ON_EXISTS_ERROR;
};

// One variable's gradient in a multi-variable push. Its values cover the
// whole variable (flat, row-major).
struct NamedGradient {
  std::string_view variable;
  std::span<const float> gradient;
};

// Where a multi-variable pull writes one variable's values (all of them)
// and, when `versions` is not empty, the version of each of its blocks
// (versions[k] for block k; one per block).
struct NamedValues {
  std::string_view variable;
  std::span<float> values;
  std::span<uint64_t> versions = {};
};

// One variable of a multi-variable push-pull: its gradient, and where the
// values after the push go. Both cover the whole variable. `versions` as
// for NamedValues.
struct NamedUpdate {
  std::string_view variable;
  std::span<const float> gradient;
  std::span<float> values;
  std::span<uint64_t> versions = {};
};

// A variable's values and optimizer state (Client::ReadState, WriteState).
struct VariableState {
  // The slots by kSlotNames' order; bit i of Block::held stands for
  // kSlotNames[i].
  static constexpr std::array<std::string_view, 4> kSlotNames = {
      "momentum", "square_avg", "grad_avg", "max_square_avg"};
  struct Block {
    uint64_t offset = 0;  // first value, flat
    uint64_t length = 0;
    uint64_t step = 0;  // the rule's t: updates applied to the block
    uint32_t held = 0;  // the slots the block holds (bits as above)
    double eve_d = 0;
    double eve_f_hat = 0;
    bool eve_started = false;
  };
  std::vector<float> values;  // flat, every value
  // Each slot any block holds, as many values as `values` (zeros in the
  // blocks that do not hold it).
  std::map<std::string, std::vector<float>, std::less<>> slots;
  std::vector<Block> blocks;  // every block, by offset
  // The variable's optimizer (shard 0's of its blocks), config_version set.
  v1::OptimizerConfig optimizer;
};

// One table's rows in a push or push-pull beside dense variables: gradients
// for `ids` (any order; repeats are summed first), ids.size() x dim values,
// and, for a push-pull, where the rows after it go (ids.size() x dim, the
// caller's order; empty: not wanted).
struct RowGradients {
  std::string_view table;
  std::span<const uint64_t> ids;
  std::span<const float> grads;
  std::span<float> rows_after = {};
};

// A connection to every shard of one cluster.
//
// Thread safety: every method may be called concurrently from any thread.
// Concurrent pushes (Push and PushPull) from one Client reach each shard in
// the order they were issued: the parts of one push (see part_bytes) go out
// together, each covering other blocks, and the next push to that shard
// starts when the previous one's parts have all been answered, so every
// block applies a worker's pushes in order. In sync mode
// issue all pushes of a step in one multi-variable call (or from one thread,
// in the same order on every worker), or workers may wait on each other.
// Pulls run fully in parallel.
//
// Async forms: a `done` callback runs exactly once, on a gRPC thread (or on
// the calling thread, before the call returns, when the call is refused
// before anything is sent). It must not block and must not call the
// blocking forms of this Client. Gradient spans and variable names are read
// before an async call returns; output spans are written until `done` runs
// (or the future is ready) and must stay valid and untouched until then.
class Client {
 public:
  using DoneCallback = absl::AnyInvocable<void(absl::Status)>;

  // Reads GetClusterInfo from every address (retrying per options.retry) and
  // checks that the shards form one cluster: the same num_shards, block_size,
  // consistency, num_workers and quorum, and shard indexes covering
  // 0..num_shards-1 once each. FAILED_PRECONDITION naming the addresses when
  // they do not; INVALID_ARGUMENT for bad options; the shard's error (naming
  // its address) when one cannot be reached.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const ClientOptions& options);

  // Waits for every call in flight (and its callback) to finish, then
  // leaves (Leave) unless that was done already: one attempt per shard of
  // at most a few seconds, so a dead shard does not hold it up.
  // REQUIRES: not called from a `done` callback of this Client.
  ~Client();

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const std::string& worker_id() const;
  // The epoch of this worker's session, opened on every shard by Connect
  // (DESIGN.md, "Worker sessions"): its pushes are applied exactly once,
  // and a later Client with the same worker_id fences this one (its pushes
  // then fail with FAILED_PRECONDITION, "fenced").
  uint64_t session_epoch() const;
  // Sync mode: the step this worker pushes next, which a push whose
  // PushOptions::step is unset carries. It starts at the step the shards
  // were collecting when the session opened (0 in a new cluster), moves to
  // s + 1 after a push of step s succeeds, and after a roll-back of the
  // cluster to a checkpoint it is the step the cluster resumes from. A
  // training loop that reads its data by sync_step() (and leaves
  // PushOptions::step unset) goes on through a roll-back unchanged.
  uint64_t sync_step() const;
  // Sync mode: the roll-backs of the cluster this client resumed after
  // (docs/checkpoints.md), and the step the latest one resumed from.
  //
  // When the shards go back to a checkpoint cut before step K (a shard was
  // restarted from it), the pushes of this worker's session are refused
  // from then on. A blocking Push, PushPull, PushRows or PushPullRows that
  // meets that refusal resumes: it waits for the client's calls in flight,
  // opens a new session, sets sync_step() to K, and returns OK without
  // applying its gradient (computed on values that were undone); a PushPull
  // answers with the values the cluster went back to. The async forms
  // return the refusal (FAILED_PRECONDITION, "rolled back to checkpoint
  // ..."); the next blocking push resumes.
  uint64_t rollbacks() const;
  uint64_t resume_step() const;
  // After a push refused with `status`: when it is a roll-back's refusal
  // of the session `epoch` (session_epoch() when the push was started),
  // opens a new session and sets sync_step() as a blocking push does (once
  // for every push that met it); returns true then. False: `status` is
  // something else. For the async forms, whose refusal comes back as is.
  absl::StatusOr<bool> ResumeAfterRollBack(const absl::Status& status,
                                           uint64_t epoch);
  // Sync and ssp: this worker is finished (like DDP's join()): the steps go
  // on without it. Waits for this client's calls in flight, stops the
  // heartbeats and tells every shard (one attempt each, within
  // call_timeout). Returns OK when every shard took it; otherwise the
  // shards that did not (they drop the worker when its lease runs out).
  // A later push joins the worker again. Async: OK, nothing to do.
  // REQUIRES: not called from a `done` callback of this Client.
  absl::Status Leave();
  // Sync and ssp: renews the lease on every shard now (the background
  // heartbeat does this while keep_lease is on).
  absl::Status Heartbeat();

  // The cluster's settings, as every shard reported them (shard_index 0).
  const v1::ClusterInfo& cluster_info() const;
  // Where each block lives.
  const PartitionPlan& plan() const;
  // The shards' addresses, indexed by shard index.
  const std::vector<std::string>& shard_addresses() const;

  // Creates `name` with `shape` on every shard, or confirms it exists with
  // that shape. Returns true when this call created it (on at least one
  // shard), false when it existed. `initial_values` (flat, row-major) holds
  // every value, or is empty for zeros. `optimizer` overrides the server
  // default for this variable.
  //
  // When it exists, `on_exists` says what happens (v1::OnExists):
  // ON_EXISTS_ERROR (the default) accepts it when it was created with the
  // same optimizer and initial values (workers of one job creating the
  // same variables), else ALREADY_EXISTS naming the variable and what
  // differs; ON_EXISTS_REUSE keeps the server's values, optimizer and
  // state; ON_EXISTS_RESET replaces them (values, optimizer, slots, steps;
  // another shape too) and returns true. ALREADY_EXISTS when it exists
  // with another shape (but for a reset).
  // REQUIRES: initial_values is empty or has the product of shape values.
  absl::StatusOr<bool> CreateVariable(
      std::string_view name, const std::vector<uint64_t>& shape,
      std::span<const float> initial_values = {},
      const std::optional<v1::OptimizerConfig>& optimizer = std::nullopt,
      v1::OnExists on_exists = v1::ON_EXISTS_ERROR);

  // Deletes the variable or sparse table `name` on every shard: its values
  // (rows), optimizer state and exactly-once records go; a later
  // CreateVariable (CreateTable) starts afresh, and pushes to it get
  // NOT_FOUND. Needs an admin token when the shards have tokens
  // (PERMISSION_DENIED with a worker's). NOT_FOUND when no shard had it.
  absl::Status DeleteVariable(std::string_view name);

  // ---- a variable's optimizer state (a torch optimizer's state_dict)

  // Reads every block of `name` with its optimizer state, from every shard
  // (pages of about part_bytes). NOT_FOUND for an unknown variable,
  // DATA_LOSS when the shards' blocks do not cover it once.
  absl::StatusOr<VariableState> ReadState(std::string_view name);
  // Sets `name`'s values and optimizer state from `state` (as ReadState
  // gives it, perhaps changed): each block's values, its held slots (the
  // others start afresh on the next update), step and Eve feedback. The
  // blocks' exactly-once records and sync step stay. Each shard checks all
  // of its blocks before it changes any. INVALID_ARGUMENT when the blocks
  // are not the variable's (see plan()), sizes differ, or a value is not
  // finite; what the shards refuse (a slot the variable's optimizer does
  // not hold) is returned as they say it.
  absl::Status WriteState(std::string_view name, const VariableState& state);

  // Sends a gradient of every value of `name`; the servers apply it with the
  // variable's optimizer.
  absl::Status Push(std::string_view name, std::span<const float> gradient,
                    const PushOptions& options = {});
  // Reads every value of `name` into `values`.
  absl::Status Pull(std::string_view name, std::span<float> values,
                    const PullOptions& options = {});
  // Push, then read the values after it (in sync mode: after the step).
  // REQUIRES: gradient.size() == values.size().
  absl::Status PushPull(std::string_view name, std::span<const float> gradient,
                        std::span<float> values,
                        const PushOptions& options = {});

  // The same on several variables in one call: one request per shard (more
  // when its share exceeds part_bytes). One step and loss for all.
  // REQUIRES: no variable appears twice.
  absl::Status Push(std::span<const NamedGradient> gradients,
                    const PushOptions& options = {});
  absl::Status Pull(std::span<const NamedValues> values,
                    const PullOptions& options = {});
  absl::Status PushPull(std::span<const NamedUpdate> updates,
                        const PushOptions& options = {});

  // Dense variables and table rows in one call: each shard gets one request
  // with its blocks and its rows (more only when they exceed part_bytes),
  // every shard gets every table (perhaps with no rows; see PushRows), and
  // all of it is one exactly-once push per request. One step and loss for
  // all. REQUIRES: no variable or table appears twice.
  absl::Status Push(std::span<const NamedGradient> gradients,
                    std::span<const RowGradients> rows,
                    const PushOptions& options = {});
  absl::Status PushPull(std::span<const NamedUpdate> updates,
                        std::span<const RowGradients> rows,
                        const PushOptions& options = {});

  // ---- sparse tables (DESIGN.md, "Sparse tables")

  // Creates the table on every shard (each holds the rows row_shard gives
  // it). Returns false when it existed with the same dim, init, policy and
  // optimizer (or was reused), true when this call created or reset it;
  // ALREADY_EXISTS when it exists with others (options.on_exists).
  absl::StatusOr<bool> CreateTable(std::string_view name, uint32_t dim,
                                   const TableOptions& options = {});
  // Reads the rows of `ids` (any order; repeats allowed) into `rows`
  // (ids.size() x dim, the caller's order). An id without a row reads its
  // initial row; nothing is created.
  absl::Status PullRows(std::string_view table, std::span<const uint64_t> ids,
                        std::span<float> rows, const PullOptions& options = {});
  // Pushes row gradients (`grads`: ids.size() x dim). Repeated ids are
  // summed first; each shard gets its rows in exactly-once pushes, sent in
  // parallel. Every shard gets a push, perhaps of no rows, so that the
  // table's step is the same on every shard (torch's step count) and, in
  // sync mode, each step counts every worker.
  absl::Status PushRows(std::string_view table, std::span<const uint64_t> ids,
                        std::span<const float> grads,
                        const PushOptions& options = {});
  // PushRows, then the rows after it into `rows` (ids.size() x dim).
  absl::Status PushPullRows(std::string_view table,
                            std::span<const uint64_t> ids,
                            std::span<const float> grads, std::span<float> rows,
                            const PushOptions& options = {});

  // Async forms, with a callback.
  void PushAsync(std::span<const NamedGradient> gradients,
                 const PushOptions& options, DoneCallback done);
  void PullAsync(std::span<const NamedValues> values,
                 const PullOptions& options, DoneCallback done);
  void PushPullAsync(std::span<const NamedUpdate> updates,
                     const PushOptions& options, DoneCallback done);
  void PushAsync(std::span<const NamedGradient> gradients,
                 std::span<const RowGradients> rows, const PushOptions& options,
                 DoneCallback done);
  void PushPullAsync(std::span<const NamedUpdate> updates,
                     std::span<const RowGradients> rows,
                     const PushOptions& options, DoneCallback done);

  // Async forms, with a handle.
  std::future<absl::Status> PushAsync(std::span<const NamedGradient> gradients,
                                      const PushOptions& options = {});
  std::future<absl::Status> PullAsync(std::span<const NamedValues> values,
                                      const PullOptions& options = {});
  std::future<absl::Status> PushPullAsync(std::span<const NamedUpdate> updates,
                                          const PushOptions& options = {});
  std::future<absl::Status> PushPullAsync(std::span<const NamedUpdate> updates,
                                          std::span<const RowGradients> rows,
                                          const PushOptions& options = {});
  std::future<absl::Status> PushAsync(std::string_view name,
                                      std::span<const float> gradient,
                                      const PushOptions& options = {});
  std::future<absl::Status> PullAsync(std::string_view name,
                                      std::span<float> values,
                                      const PullOptions& options = {});
  std::future<absl::Status> PushPullAsync(std::string_view name,
                                          std::span<const float> gradient,
                                          std::span<float> values,
                                          const PushOptions& options = {});

 private:
  explicit Client(std::unique_ptr<client_internal::ClientCore> core);

  std::unique_ptr<client_internal::ClientCore> core_;
  std::unique_ptr<client_internal::LeaseKeeper> lease_;
  std::atomic<bool> left_ = false;
};

}  // namespace ps

#endif  // PS_CLIENT_CLIENT_H_

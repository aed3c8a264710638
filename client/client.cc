#include "client/client.h"

#include <grpcpp/alarm.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <deque>
#include <functional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "client/cluster_check.h"
#include "client/request_split.h"
#include "common/file_util.h"
#include "common/slice_buffers.h"
#include "common/status.h"
#include "proto/ps/v1/ps.grpc.pb.h"
#include "spdlog/spdlog.h"

namespace ps {
namespace {

using client_internal::ClientCore;
using client_internal::DecodeAnswer;
using client_internal::Part;
using client_internal::PullItem;
using client_internal::PushItem;
using client_internal::ShardParts;
using Outputs = std::shared_ptr<const std::vector<std::span<float>>>;

bool Retryable(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

absl::Status ValidateOptions(const ClientOptions& options) {
  if (options.addresses.empty()) {
    return absl::InvalidArgumentError("ClientOptions::addresses is empty");
  }
  if (absl::Status addresses = CheckServerAddresses(options.addresses);
      !addresses.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ClientOptions::addresses: ", addresses.message()));
  }
  const RetryPolicy& retry = options.retry;
  if (retry.max_attempts < 1) {
    return absl::InvalidArgumentError("RetryPolicy::max_attempts must be >= 1");
  }
  if (retry.initial_backoff < absl::ZeroDuration() ||
      retry.max_backoff < retry.initial_backoff) {
    return absl::InvalidArgumentError(
        "RetryPolicy needs 0 <= initial_backoff <= max_backoff");
  }
  if (!(retry.backoff_multiplier >= 1.0)) {
    return absl::InvalidArgumentError(
        "RetryPolicy::backoff_multiplier must be >= 1");
  }
  if (!(retry.jitter >= 0.0 && retry.jitter <= 1.0)) {
    return absl::InvalidArgumentError("RetryPolicy::jitter must lie in [0, 1]");
  }
  if (options.call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "ClientOptions::call_timeout must be positive");
  }
  if (options.max_message_bytes < 1024 ||
      options.max_message_bytes > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ClientOptions::max_message_bytes must lie in [1024, ", INT_MAX, "]"));
  }
  if (options.part_bytes < 1) {
    return absl::InvalidArgumentError("ClientOptions::part_bytes must be >= 1");
  }
  if (options.parts_in_flight < 1) {
    return absl::InvalidArgumentError(
        "ClientOptions::parts_in_flight must be >= 1");
  }
  if (options.channels_per_shard < 1) {
    return absl::InvalidArgumentError(
        "ClientOptions::channels_per_shard must be >= 1");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeCredentials(
    const ClientOptions& options) {
  if (options.tls_ca_file.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  PS_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                      ReadSmallFile(options.tls_ca_file, "TLS CA file"));
  return grpc::SslCredentials(ssl);
}

// A callback that fulfils a promise, and the future it fulfils.
std::pair<Client::DoneCallback, std::future<absl::Status>> MakePromise() {
  std::promise<absl::Status> promise;
  std::future<absl::Status> future = promise.get_future();
  return {[promise = std::move(promise)](absl::Status status) mutable {
            promise.set_value(std::move(status));
          },
          std::move(future)};
}

std::string RandomWorkerId() {
  absl::BitGen gen;
  return absl::StrCat(
      "worker-", absl::Hex(absl::Uniform<uint64_t>(gen), absl::kZeroPad16));
}

// One channel to a shard, with a stub for each kind of call: the generated
// one, and a generic one for the calls whose messages are mostly slice data
// (Push, Pull, PushPull), which go as raw bytes: gradients are sent from the
// strings they were encoded into, and answers decoded from where they were
// received, without protobuf's serialization and parse copies (see
// common/slice_buffers.h).
struct ShardStub {
  std::unique_ptr<v1::ParameterService::Stub> typed;
  std::unique_ptr<grpc::GenericStub> raw;
};

// The methods of ParameterService in ps.proto, as gRPC names them.
constexpr char kPushMethod[] = "/ps.v1.ParameterService/Push";
constexpr char kPullMethod[] = "/ps.v1.ParameterService/Pull";
constexpr char kPushPullMethod[] = "/ps.v1.ParameterService/PushPull";

// A request as it goes on the wire: the message (a push's without its
// gradients' data) and its serialized bytes, made once and sent by every
// attempt.
template <typename Message>
struct Encoded {
  Message head;
  grpc::ByteBuffer bytes;
};
using EncodedPush = Encoded<v1::PushRequest>;
using EncodedPull = Encoded<v1::PullRequest>;

// The gradients' data go from the strings they were encoded into.
EncodedPush EncodePush(v1::PushRequest request) {
  EncodedPush encoded;
  encoded.head = std::move(request);
  ToByteBuffer(encoded.head, &encoded.bytes);
  return encoded;
}

// A pull request is small: serialized as protobuf would.
EncodedPull EncodePull(v1::PullRequest request) {
  EncodedPull encoded;
  encoded.head = std::move(request);
  grpc::Slice bytes(encoded.head.SerializeAsString());
  encoded.bytes = grpc::ByteBuffer(&bytes, 1);
  return encoded;
}

// Runs `method` with the request's bytes and reads its answer, a
// PullResponse, into *response (INTERNAL when it does not parse).
template <typename Message>
void CallForSlices(ShardStub* stub, grpc::ClientContext* context,
                   const char* method, const Encoded<Message>* request,
                   ReceivedSlices* response,
                   std::function<void(grpc::Status)> done) {
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

// The stub methods a ShardCall can run, by request and response type.
void CallGetClusterInfo(ShardStub* stub, grpc::ClientContext* context,
                        const v1::GetClusterInfoRequest* request,
                        v1::ClusterInfo* response,
                        std::function<void(grpc::Status)> done) {
  stub->typed->async()->GetClusterInfo(context, request, response,
                                       std::move(done));
}
void CallOpenSession(ShardStub* stub, grpc::ClientContext* context,
                     const v1::OpenSessionRequest* request,
                     v1::OpenSessionResponse* response,
                     std::function<void(grpc::Status)> done) {
  stub->typed->async()->OpenSession(context, request, response,
                                    std::move(done));
}
void CallCreateVariable(ShardStub* stub, grpc::ClientContext* context,
                        const v1::CreateVariableRequest* request,
                        v1::CreateVariableResponse* response,
                        std::function<void(grpc::Status)> done) {
  stub->typed->async()->CreateVariable(context, request, response,
                                       std::move(done));
}
// The answer (an empty PushResponse) is not read.
void CallPush(ShardStub* stub, grpc::ClientContext* context,
              const EncodedPush* request, grpc::ByteBuffer* response,
              std::function<void(grpc::Status)> done) {
  stub->raw->UnaryCall(context, kPushMethod, grpc::StubOptions(),
                       &request->bytes, response, std::move(done));
}
void CallPull(ShardStub* stub, grpc::ClientContext* context,
              const EncodedPull* request, ReceivedSlices* response,
              std::function<void(grpc::Status)> done) {
  CallForSlices(stub, context, kPullMethod, request, response, std::move(done));
}
void CallPushPull(ShardStub* stub, grpc::ClientContext* context,
                  const EncodedPush* request, ReceivedSlices* response,
                  std::function<void(grpc::Status)> done) {
  CallForSlices(stub, context, kPushPullMethod, request, response,
                std::move(done));
}

// Sends one shard's pushes in the order they were issued, numbering each
// request (seq) as it is sent. The requests of one push cover different
// blocks and go out together, up to `max_in_flight` at once; the next push
// starts when all of the previous one's requests have ended, so each block
// sees a worker's pushes in order.
class PushLane {
 public:
  // Starts the request with the given seq; must call Release() when it ends.
  using Send = absl::AnyInvocable<void(uint64_t seq)>;

  PushLane(uint64_t first_seq, int max_in_flight)
      : max_in_flight_(max_in_flight), next_seq_(first_seq) {}

  // Queues the requests of one push behind the pushes queued before.
  void Enqueue(std::vector<Send> push) {
    std::vector<std::pair<Send, uint64_t>> ready;
    {
      absl::MutexLock lock(&mu_);
      if (!push.empty()) {
        pushes_.emplace_back(std::make_move_iterator(push.begin()),
                             std::make_move_iterator(push.end()));
      }
      TakeReady(ready);
    }
    for (auto& [send, seq] : ready) send(seq);
  }

  // A request in flight has ended (answered or given up): start what may.
  void Release() {
    std::vector<std::pair<Send, uint64_t>> ready;
    {
      absl::MutexLock lock(&mu_);
      --in_flight_;
      TakeReady(ready);
    }
    for (auto& [send, seq] : ready) send(seq);
  }

 private:
  // Moves the requests that may start now, with their seqs, to `ready`.
  void TakeReady(std::vector<std::pair<Send, uint64_t>>& ready)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (!pushes_.empty()) {
      std::deque<Send>& front = pushes_.front();
      if (front.empty()) {
        if (in_flight_ > 0) return;  // the front push is still in flight
        pushes_.pop_front();
        continue;
      }
      if (in_flight_ >= max_in_flight_) return;
      ready.emplace_back(std::move(front.front()), next_seq_++);
      front.pop_front();
      ++in_flight_;
    }
  }

  const int max_in_flight_;
  absl::Mutex mu_;
  // The pushes not yet finished; the front one's requests not yet sent.
  std::deque<std::deque<Send>> pushes_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_);
};

struct Shard {
  std::string address;
  std::optional<uint32_t> index;  // known once connected
  std::vector<ShardStub> stubs;   // one per channel
  std::atomic<size_t> next_stub{0};
  std::unique_ptr<PushLane> lane;

  ShardStub* stub() {
    return &stubs[next_stub.fetch_add(1, std::memory_order_relaxed) %
                  stubs.size()];
  }
  std::string Name() const {
    return index.has_value()
               ? absl::StrCat("shard ", *index, " (", address, ")")
               : absl::StrCat("shard at ", address);
  }
};

}  // namespace

namespace client_internal {

// Everything a Client holds; shared with the calls in flight.
class ClientCore {
 public:
  using DoneCallback = Client::DoneCallback;

  ClientOptions options;
  std::string worker_id;
  v1::ClusterInfo cluster_info;
  std::optional<PartitionPlan> plan;
  std::vector<std::unique_ptr<Shard>> shards;  // by shard index once connected
  std::vector<std::string> addresses;          // by shard index
  // The worker's session: the epoch every exactly-once push carries, and
  // (sync) the step the shards collected when it opened.
  uint64_t epoch = 0;
  uint64_t sync_step = 0;

  // Calls (and shard calls) that have started and not ended.
  void CallStarted() {
    absl::MutexLock lock(&mu_);
    ++in_flight_;
  }
  void CallEnded() {
    absl::MutexLock lock(&mu_);
    --in_flight_;
  }
  void WaitIdle() {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int* in_flight) { return *in_flight == 0; }, &in_flight_));
  }

  void PrepareContext(grpc::ClientContext* context) const {
    context->set_deadline(
        absl::ToChronoTime(absl::Now() + options.call_timeout));
    if (!options.token.empty()) {
      context->AddMetadata("authorization",
                           absl::StrCat("Bearer ", options.token));
    }
  }

  // The wait after `attempts` failed attempts.
  absl::Duration Backoff(int attempts) {
    const RetryPolicy& retry = options.retry;
    absl::Duration wait = retry.initial_backoff;
    for (int i = 1; i < attempts && wait < retry.max_backoff; ++i) {
      wait *= retry.backoff_multiplier;
    }
    wait = std::min(wait, retry.max_backoff);
    if (retry.jitter > 0) {
      absl::MutexLock lock(&rng_mu_);
      wait *= absl::Uniform(rng_, 1.0 - retry.jitter, 1.0 + retry.jitter);
    }
    return wait;
  }

  // Remembers the size of a variable this client created or confirmed.
  void RememberSize(const std::string& name, uint64_t size) {
    absl::MutexLock lock(&sizes_mu_);
    sizes_[name] = size;
  }
  // INVALID_ARGUMENT when `name` is known to have another size than `size`.
  absl::Status CheckSize(std::string_view name, uint64_t size,
                         std::string_view what) {
    absl::ReaderMutexLock lock(&sizes_mu_);
    auto it = sizes_.find(absl::string_view(name.data(), name.size()));
    if (it == sizes_.end() || it->second == size) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        "variable ", it->first, " has ", it->second, " values but the ",
        absl::string_view(what.data(), what.size()), " has ", size));
  }

  SplitLimits split_limits() const {
    return {options.part_bytes, options.max_message_bytes};
  }

  void StartPush(std::vector<PushItem> items, Outputs outputs,
                 const PushOptions& options, DoneCallback done);
  void StartPull(std::vector<PullItem> items, Outputs outputs,
                 const PullOptions& options, DoneCallback done);

 private:
  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Mutex rng_mu_;
  absl::BitGen rng_ ABSL_GUARDED_BY(rng_mu_);
  absl::Mutex sizes_mu_;
  absl::flat_hash_map<std::string, uint64_t> sizes_ ABSL_GUARDED_BY(sizes_mu_);
};

}  // namespace client_internal

namespace {

// One request to one shard, retried per the policy; deletes itself after
// calling `done` once with the final status and the (last) response.
template <typename Request, typename Response>
class ShardCall {
 public:
  using Method = void (*)(ShardStub*, grpc::ClientContext*, const Request*,
                          Response*, std::function<void(grpc::Status)>);
  using Done =
      absl::AnyInvocable<void(const grpc::Status&, const Request&, Response&)>;

  static void Start(ClientCore* impl, size_t shard, Request request,
                    Method method, Done done) {
    (new ShardCall(impl, shard, std::move(request), method, std::move(done)))
        ->Attempt();
  }

 private:
  ShardCall(ClientCore* impl, size_t shard, Request request, Method method,
            Done done)
      : core_(impl),
        shard_(shard),
        request_(std::move(request)),
        method_(method),
        done_(std::move(done)) {
    core_->CallStarted();
  }

  void Attempt() {
    ++attempts_;
    context_ = std::make_unique<grpc::ClientContext>();
    core_->PrepareContext(context_.get());
    response_.Clear();
    method_(core_->shards[shard_]->stub(), context_.get(), &request_,
            &response_,
            [this](grpc::Status status) { OnDone(std::move(status)); });
  }

  void OnDone(grpc::Status status) {
    if (Retryable(status) && attempts_ < core_->options.retry.max_attempts) {
      const absl::Duration wait = core_->Backoff(attempts_);
      spdlog::debug("{} answered {} ({}); attempt {} in {}",
                    core_->shards[shard_]->Name(),
                    absl::StatusCodeToString(
                        static_cast<absl::StatusCode>(status.error_code())),
                    status.error_message(), attempts_ + 1,
                    absl::FormatDuration(wait));
      // The previous alarm, if any, has fired: it started this attempt.
      retry_alarm_ = std::make_unique<grpc::Alarm>();
      retry_alarm_->Set(absl::ToChronoTime(absl::Now() + wait),
                        [this](bool) { Attempt(); });
      return;
    }
    ClientCore* core = core_;
    done_(status, request_, response_);
    delete this;
    core->CallEnded();
  }

  ClientCore* const core_;
  const size_t shard_;
  const Request request_;
  const Method method_;
  Done done_;
  int attempts_ = 0;
  std::unique_ptr<grpc::ClientContext> context_;
  Response response_;
  std::unique_ptr<grpc::Alarm> retry_alarm_;
};

// Collects the outcomes of a call's requests; when the last has ended,
// calls `done` with OK or with every failed shard named, then deletes
// itself.
class Fanout {
 public:
  Fanout(ClientCore* impl, size_t requests, Client::DoneCallback done)
      : core_(impl), pending_(requests), done_(std::move(done)) {
    core_->CallStarted();
  }

  void Finish(size_t shard, absl::Status status) {
    std::vector<std::pair<size_t, absl::Status>> errors;
    {
      absl::MutexLock lock(&mu_);
      if (!status.ok()) errors_.emplace(shard, std::move(status));
      if (--pending_ > 0) return;
      errors.assign(errors_.begin(), errors_.end());
    }
    // The last request has ended; nothing else touches this object.
    absl::Status result;
    if (!errors.empty()) {
      std::sort(errors.begin(), errors.end(),
                [](const auto& a, const auto& b) { return a.first < b.first; });
      std::vector<std::string> lines;
      for (const auto& [s, error] : errors) {
        lines.push_back(absl::StrCat(core_->shards[s]->Name(), ": ",
                                     absl::StatusCodeToString(error.code()),
                                     ": ", error.message()));
      }
      result = absl::Status(errors.front().second.code(),
                            absl::StrJoin(lines, "; "));
    }
    ClientCore* core = core_;
    done_(std::move(result));
    delete this;
    core->CallEnded();
  }

 private:
  ClientCore* const core_;
  absl::Mutex mu_;
  size_t pending_ ABSL_GUARDED_BY(mu_);
  // The first error of each shard.
  absl::flat_hash_map<size_t, absl::Status> errors_ ABSL_GUARDED_BY(mu_);
  Client::DoneCallback done_;
};

// The fan-out of one split call, or null when there is nothing to send: then
// `done` has run with the split's error, or with OK for an empty call.
template <typename Request>
Fanout* StartFanout(ClientCore* core,
                    const absl::StatusOr<ShardParts<Request>>& parts,
                    Client::DoneCallback& done) {
  if (!parts.ok()) {
    done(parts.status());
    return nullptr;
  }
  size_t count = 0;
  for (const auto& list : *parts) count += list.size();
  if (count == 0) {
    done(absl::OkStatus());
    return nullptr;
  }
  return new Fanout(core, count, std::move(done));
}

absl::Status CheckDType(v1::DType dtype) {
  if (v1::DType_IsValid(dtype)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype ", static_cast<int>(dtype),
                   "; use FLOAT32, BFLOAT16 or FLOAT16"));
}

// INVALID_ARGUMENT for an empty or repeated variable name.
template <typename Named>
absl::Status CheckNames(std::span<const Named> items) {
  absl::flat_hash_set<std::string_view> seen;
  for (const Named& item : items) {
    if (item.variable.empty()) {
      return absl::InvalidArgumentError("variable name is empty");
    }
    if (!seen.insert(item.variable).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("variable ", std::string(item.variable),
                       " appears twice in one call"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

void ClientCore::StartPush(std::vector<PushItem> items, Outputs outputs,
                           const PushOptions& push_options, DoneCallback done) {
  const bool answered = outputs != nullptr;
  v1::PushRequest header;
  header.set_worker_id(worker_id);
  header.set_epoch(epoch);
  header.set_step(push_options.step);
  if (push_options.loss.has_value()) header.set_loss(*push_options.loss);
  if (answered) header.set_pull_dtype(push_options.pull_dtype);
  absl::StatusOr<ShardParts<v1::PushRequest>> parts =
      client_internal::SplitPush(*plan, items, header, push_options.dtype,
                                 answered, split_limits());
  Fanout* fanout = StartFanout(this, parts, done);
  if (fanout == nullptr) return;
  const v1::DType pull_dtype = push_options.pull_dtype;
  for (size_t s = 0; s < parts->size(); ++s) {
    std::vector<PushLane::Send> sends;
    for (Part<v1::PushRequest>& part : (*parts)[s]) {
      sends.push_back([this, fanout, s, part = std::move(part), outputs,
                       pull_dtype](uint64_t seq) mutable {
        part.request.set_seq(seq);
        EncodedPush request = EncodePush(std::move(part.request));
        if (outputs == nullptr) {
          ShardCall<EncodedPush, grpc::ByteBuffer>::Start(
              this, s, std::move(request), &CallPush,
              [this, fanout, s](const grpc::Status& status, const EncodedPush&,
                                grpc::ByteBuffer&) {
                shards[s]->lane->Release();
                fanout->Finish(s, FromGrpcStatus(status));
              });
          return;
        }
        ShardCall<EncodedPush, ReceivedSlices>::Start(
            this, s, std::move(request), &CallPushPull,
            [this, fanout, s, items = std::move(part.items), outputs,
             pull_dtype](const grpc::Status& status, const EncodedPush& request,
                         ReceivedSlices& response) {
              absl::Status result = FromGrpcStatus(status);
              if (result.ok()) {
                result = DecodeAnswer(request.head.gradients(), items,
                                      pull_dtype, response.message.values(),
                                      response.data, *outputs);
              }
              shards[s]->lane->Release();
              fanout->Finish(s, std::move(result));
            });
      });
    }
    if (!sends.empty()) shards[s]->lane->Enqueue(std::move(sends));
  }
}

void ClientCore::StartPull(std::vector<PullItem> items, Outputs outputs,
                           const PullOptions& pull_options, DoneCallback done) {
  absl::StatusOr<ShardParts<v1::PullRequest>> parts =
      client_internal::SplitPull(*plan, items, pull_options.dtype,
                                 split_limits());
  Fanout* fanout = StartFanout(this, parts, done);
  if (fanout == nullptr) return;
  const v1::DType dtype = pull_options.dtype;
  for (size_t s = 0; s < parts->size(); ++s) {
    for (Part<v1::PullRequest>& part : (*parts)[s]) {
      ShardCall<EncodedPull, ReceivedSlices>::Start(
          this, s, EncodePull(std::move(part.request)), &CallPull,
          [fanout, s, items = std::move(part.items), outputs, dtype](
              const grpc::Status& status, const EncodedPull& request,
              ReceivedSlices& response) {
            absl::Status result = FromGrpcStatus(status);
            if (result.ok()) {
              result = DecodeAnswer(request.head.slices(), items, dtype,
                                    response.message.values(), response.data,
                                    *outputs);
            }
            fanout->Finish(s, std::move(result));
          });
    }
  }
}

namespace {

// Sends OpenSession(worker, epochs[s]) to every shard s with a wanted epoch
// (nullopt: none) and collects the answers.
absl::Status OpenOn(ClientCore* core,
                    const std::vector<std::optional<uint64_t>>& epochs,
                    std::vector<v1::OpenSessionResponse>& answers) {
  size_t calls = 0;
  for (const auto& epoch : epochs) calls += epoch.has_value() ? 1 : 0;
  if (calls == 0) return absl::OkStatus();
  auto [done, future] = MakePromise();
  auto* fanout = new Fanout(core, calls, std::move(done));
  for (size_t s = 0; s < epochs.size(); ++s) {
    if (!epochs[s].has_value()) continue;
    v1::OpenSessionRequest request;
    request.set_worker_id(core->worker_id);
    request.set_epoch(*epochs[s]);
    ShardCall<v1::OpenSessionRequest, v1::OpenSessionResponse>::Start(
        core, s, std::move(request), &CallOpenSession,
        [fanout, s, &answers](const grpc::Status& status,
                              const v1::OpenSessionRequest&,
                              v1::OpenSessionResponse& answer) {
          if (status.ok()) answers[s] = std::move(answer);
          fanout->Finish(s, FromGrpcStatus(status));
        });
  }
  const absl::Status status = future.get();
  core->WaitIdle();
  return status;
}

// Opens this worker's session on every shard: sets core->epoch and
// core->sync_step.
absl::Status OpenSession(ClientCore* core) {
  const size_t n = core->shards.size();
  // Each shard picks an epoch above all it knows for this worker; then the
  // shards that picked less take the highest, so all hold the same one. A
  // shard that answers ABORTED holds a newer session already (another
  // process with this worker id opened one meanwhile): start over.
  absl::Status status;
  for (int attempt = 0; attempt < 3; ++attempt) {
    std::vector<v1::OpenSessionResponse> answers(n);
    status = OpenOn(core, std::vector<std::optional<uint64_t>>(n, 0), answers);
    if (!status.ok()) return status;
    uint64_t epoch = 0;
    uint64_t step = 0;
    for (const auto& answer : answers) {
      epoch = std::max(epoch, answer.epoch());
      step = std::max(step, answer.sync_step());
    }
    std::vector<std::optional<uint64_t>> behind(n);
    for (size_t s = 0; s < n; ++s) {
      if (answers[s].epoch() != epoch) behind[s] = epoch;
    }
    status = OpenOn(core, behind, answers);
    if (status.code() == absl::StatusCode::kAborted) continue;
    if (!status.ok()) return status;
    core->epoch = epoch;
    core->sync_step = step;
    return absl::OkStatus();
  }
  return status;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const ClientOptions& options) {
  PS_RETURN_IF_ERROR(ValidateOptions(options));
  PS_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                      MakeCredentials(options));
  auto impl = std::make_unique<ClientCore>();
  impl->options = options;
  impl->worker_id =
      options.worker_id.empty() ? RandomWorkerId() : options.worker_id;

  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
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
  // Seqs count from 1 in each session: the session's epoch, not the seq,
  // tells a restarted worker from a retry.
  constexpr uint64_t first_seq = 1;
  for (const std::string& address : options.addresses) {
    auto shard = std::make_unique<Shard>();
    shard->address = address;
    for (int c = 0; c < options.channels_per_shard; ++c) {
      std::shared_ptr<grpc::Channel> channel =
          grpc::CreateCustomChannel(address, credentials, args);
      shard->stubs.push_back({v1::ParameterService::NewStub(channel),
                              std::make_unique<grpc::GenericStub>(channel)});
    }
    shard->lane =
        std::make_unique<PushLane>(first_seq, options.parts_in_flight);
    impl->shards.push_back(std::move(shard));
  }

  std::vector<v1::ClusterInfo> infos(impl->shards.size());
  auto [done, future] = MakePromise();
  auto* fanout = new Fanout(impl.get(), impl->shards.size(), std::move(done));
  for (size_t s = 0; s < impl->shards.size(); ++s) {
    ShardCall<v1::GetClusterInfoRequest, v1::ClusterInfo>::Start(
        impl.get(), s, v1::GetClusterInfoRequest(), &CallGetClusterInfo,
        [fanout, s, &infos](const grpc::Status& status,
                            const v1::GetClusterInfoRequest&,
                            v1::ClusterInfo& info) {
          if (status.ok()) infos[s] = std::move(info);
          fanout->Finish(s, FromGrpcStatus(status));
        });
  }
  const absl::Status reached = future.get();
  impl->WaitIdle();
  PS_RETURN_IF_ERROR(reached);

  PS_ASSIGN_OR_RETURN(std::vector<size_t> order,
                      CheckCluster(options.addresses, infos));
  std::vector<std::unique_ptr<Shard>> ordered;
  for (uint32_t index = 0; index < order.size(); ++index) {
    ordered.push_back(std::move(impl->shards[order[index]]));
    ordered.back()->index = index;
    impl->addresses.push_back(ordered.back()->address);
  }
  impl->shards = std::move(ordered);
  impl->cluster_info = infos[order[0]];
  impl->plan.emplace(impl->cluster_info.num_shards(),
                     impl->cluster_info.block_size());
  PS_RETURN_IF_ERROR(OpenSession(impl.get()));
  spdlog::debug(
      "worker {} connected to {} shards, block_size {}, {}, session epoch {}",
      impl->worker_id, impl->shards.size(), impl->cluster_info.block_size(),
      impl->cluster_info.consistency(), impl->epoch);
  return std::unique_ptr<Client>(new Client(std::move(impl)));
}

Client::Client(std::unique_ptr<ClientCore> core) : core_(std::move(core)) {}

Client::~Client() { core_->WaitIdle(); }

const std::string& Client::worker_id() const { return core_->worker_id; }

uint64_t Client::session_epoch() const { return core_->epoch; }

uint64_t Client::sync_step() const { return core_->sync_step; }

const v1::ClusterInfo& Client::cluster_info() const {
  return core_->cluster_info;
}

const PartitionPlan& Client::plan() const { return *core_->plan; }

const std::vector<std::string>& Client::shard_addresses() const {
  return core_->addresses;
}

absl::StatusOr<bool> Client::CreateVariable(
    std::string_view name, const std::vector<uint64_t>& shape,
    std::span<const float> initial_values,
    const std::optional<v1::OptimizerConfig>& optimizer) {
  if (name.empty()) {
    return absl::InvalidArgumentError("variable name is empty");
  }
  const std::string variable(name);
  PS_ASSIGN_OR_RETURN(uint64_t size, client_internal::NumValues(shape));
  PS_ASSIGN_OR_RETURN(std::vector<v1::CreateVariableRequest> requests,
                      client_internal::SplitCreate(
                          *core_->plan, variable, shape, initial_values,
                          optimizer, core_->options.max_message_bytes));
  std::atomic<bool> created{false};
  auto [done, future] = MakePromise();
  auto* fanout = new Fanout(core_.get(), requests.size(), std::move(done));
  for (size_t s = 0; s < requests.size(); ++s) {
    ShardCall<v1::CreateVariableRequest, v1::CreateVariableResponse>::Start(
        core_.get(), s, std::move(requests[s]), &CallCreateVariable,
        [fanout, s, &created](const grpc::Status& status,
                              const v1::CreateVariableRequest&,
                              v1::CreateVariableResponse& response) {
          if (status.ok() && response.created()) created = true;
          fanout->Finish(s, FromGrpcStatus(status));
        });
  }
  PS_RETURN_IF_ERROR(future.get());
  core_->RememberSize(variable, size);
  return created.load();
}

absl::Status Client::Push(std::string_view name,
                          std::span<const float> gradient,
                          const PushOptions& options) {
  const NamedGradient item{name, gradient};
  return PushAsync(std::span<const NamedGradient>(&item, 1), options).get();
}

absl::Status Client::Pull(std::string_view name, std::span<float> values,
                          const PullOptions& options) {
  const NamedValues item{name, values};
  return PullAsync(std::span<const NamedValues>(&item, 1), options).get();
}

absl::Status Client::PushPull(std::string_view name,
                              std::span<const float> gradient,
                              std::span<float> values,
                              const PushOptions& options) {
  const NamedUpdate item{name, gradient, values};
  return PushPullAsync(std::span<const NamedUpdate>(&item, 1), options).get();
}

absl::Status Client::Push(std::span<const NamedGradient> gradients,
                          const PushOptions& options) {
  return PushAsync(gradients, options).get();
}

absl::Status Client::Pull(std::span<const NamedValues> values,
                          const PullOptions& options) {
  return PullAsync(values, options).get();
}

absl::Status Client::PushPull(std::span<const NamedUpdate> updates,
                              const PushOptions& options) {
  return PushPullAsync(updates, options).get();
}

void Client::PushAsync(std::span<const NamedGradient> gradients,
                       const PushOptions& options, DoneCallback done) {
  absl::Status valid = CheckNames(gradients);
  if (valid.ok()) valid = CheckDType(options.dtype);
  std::vector<PushItem> items;
  for (const NamedGradient& g : gradients) {
    if (!valid.ok()) break;
    valid = core_->CheckSize(g.variable, g.gradient.size(), "gradient");
    items.push_back(PushItem{std::string(g.variable), g.gradient});
  }
  if (!valid.ok()) {
    done(std::move(valid));
    return;
  }
  core_->StartPush(std::move(items), nullptr, options, std::move(done));
}

void Client::PullAsync(std::span<const NamedValues> values,
                       const PullOptions& options, DoneCallback done) {
  absl::Status valid = CheckNames(values);
  if (valid.ok()) valid = CheckDType(options.dtype);
  std::vector<PullItem> items;
  auto outputs = std::make_shared<std::vector<std::span<float>>>();
  for (const NamedValues& v : values) {
    if (!valid.ok()) break;
    valid = core_->CheckSize(v.variable, v.values.size(), "output");
    items.push_back(PullItem{std::string(v.variable), v.values.size()});
    outputs->push_back(v.values);
  }
  if (!valid.ok()) {
    done(std::move(valid));
    return;
  }
  core_->StartPull(std::move(items), std::move(outputs), options,
                   std::move(done));
}

void Client::PushPullAsync(std::span<const NamedUpdate> updates,
                           const PushOptions& options, DoneCallback done) {
  absl::Status valid = CheckNames(updates);
  if (valid.ok()) valid = CheckDType(options.dtype);
  if (valid.ok()) valid = CheckDType(options.pull_dtype);
  std::vector<PushItem> items;
  auto outputs = std::make_shared<std::vector<std::span<float>>>();
  for (const NamedUpdate& u : updates) {
    if (!valid.ok()) break;
    if (u.gradient.size() != u.values.size()) {
      valid = absl::InvalidArgumentError(absl::StrCat(
          "the gradient of ", std::string(u.variable), " has ",
          u.gradient.size(), " values but its output has ", u.values.size()));
      break;
    }
    valid = core_->CheckSize(u.variable, u.gradient.size(), "gradient");
    items.push_back(PushItem{std::string(u.variable), u.gradient});
    outputs->push_back(u.values);
  }
  if (!valid.ok()) {
    done(std::move(valid));
    return;
  }
  core_->StartPush(std::move(items), std::move(outputs), options,
                   std::move(done));
}

std::future<absl::Status> Client::PushAsync(
    std::span<const NamedGradient> gradients, const PushOptions& options) {
  auto [done, future] = MakePromise();
  PushAsync(gradients, options, std::move(done));
  return std::move(future);
}

std::future<absl::Status> Client::PullAsync(std::span<const NamedValues> values,
                                            const PullOptions& options) {
  auto [done, future] = MakePromise();
  PullAsync(values, options, std::move(done));
  return std::move(future);
}

std::future<absl::Status> Client::PushPullAsync(
    std::span<const NamedUpdate> updates, const PushOptions& options) {
  auto [done, future] = MakePromise();
  PushPullAsync(updates, options, std::move(done));
  return std::move(future);
}

std::future<absl::Status> Client::PushAsync(std::string_view name,
                                            std::span<const float> gradient,
                                            const PushOptions& options) {
  const NamedGradient item{name, gradient};
  return PushAsync(std::span<const NamedGradient>(&item, 1), options);
}

std::future<absl::Status> Client::PullAsync(std::string_view name,
                                            std::span<float> values,
                                            const PullOptions& options) {
  const NamedValues item{name, values};
  return PullAsync(std::span<const NamedValues>(&item, 1), options);
}

std::future<absl::Status> Client::PushPullAsync(std::string_view name,
                                                std::span<const float> gradient,
                                                std::span<float> values,
                                                const PushOptions& options) {
  const NamedUpdate item{name, gradient, values};
  return PushPullAsync(std::span<const NamedUpdate>(&item, 1), options);
}

}  // namespace ps

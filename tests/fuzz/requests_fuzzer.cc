// Fuzzes every request a shard parses, through the store that serves it:
// the first byte picks the method (and an async or a sync store), the rest
// are the request's bytes as they arrive on the wire. Whatever the bytes,
// the shard must answer with a status and stay consistent; a crash, a
// sanitizer report or a hang is a bug.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "common/optimizer_config.h"
#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/text_format.h"
#include "proto/ps/v1/ps.pb.h"
#include "server/push.h"
#include "server/store_impl.h"
#include "spdlog/spdlog.h"

namespace ps {
namespace {

v1::OptimizerConfig Config(const char* text) {
  return *ParseOptimizerConfig(text);
}

// Two stores with a few variables under different rules and blocks that
// end short: one applies each push, the other averages two workers' pushes
// per step (quorum 1 of 2, so a step never waits).
struct Stores {
  std::unique_ptr<VariableStore> async_store;
  std::unique_ptr<VariableStore> sync_store;
};

std::unique_ptr<VariableStore> MakeStore(bool sync) {
  StoreOptions options;
  options.shard_index = 0;
  options.num_shards = 2;
  options.block_size = 8;
  options.sync = sync;
  options.num_workers = sync ? 2 : 0;
  options.quorum = sync ? 1 : 0;
  options.default_optimizer = Config("adam {} learning_rate: 0.01");
  options.memory_limit_bytes = 64 << 20;
  options.max_answer_bytes = 1 << 20;
  options.max_workers = 64;
  auto store = std::make_unique<VariableStore>(options);
  for (const auto& [name, size, rule] :
       {std::tuple{"w", 37, ""}, std::tuple{"m", 16, "momentum {}"},
        std::tuple{"e", 9, "eve {}"}, std::tuple{"s", 3, "sgd {}"}}) {
    v1::CreateVariableRequest create;
    create.set_name(name);
    create.add_shape(size);
    if (*rule != '\0') *create.mutable_optimizer() = Config(rule);
    (void)store->CreateVariable(create);
  }
  // Tables whose ids on this shard (row_shard) are about half of all ids.
  for (const auto& [name, dim, policy] :
       {std::tuple{"t", 2u, "max_rows: 50 min_count: 2"},
        std::tuple{"u", 3u, "evict_after_steps: 3"}}) {
    v1::CreateTableRequest create;
    create.set_name(name);
    create.set_dim(dim);
    create.mutable_init()->mutable_normal()->set_stddev(0.1);
    google::protobuf::TextFormat::ParseFromString(policy,
                                                  create.mutable_policy());
    if (std::string(name) == "u") {
      *create.mutable_optimizer() = Config("adagrad {}");
    }
    (void)store->CreateTable(create);
  }
  return store;
}

Stores& TheStores() {
  static Stores* stores = new Stores{MakeStore(false), MakeStore(true)};
  return *stores;
}

template <typename Message>
bool Parse(absl::string_view bytes, Message* message) {
  return message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

void Push(VariableStore& store, absl::string_view bytes, bool answered) {
  v1::PushRequest request;
  if (!Parse(bytes, &request)) return;
  absl::StatusOr<PreparedPush> prepared = store.PreparePush(request, answered);
  if (!prepared.ok()) return;
  auto completion = std::make_shared<PushCompletion>(
      prepared->gradients.size(), answered, request.pull_dtype(),
      [](absl::Status, v1::PullResponse) {});
  if (answered)
    LendRequestBuffers(request, *prepared, *completion);  // as the service does
  store.ApplyPush(*std::move(prepared), std::move(completion));
}

}  // namespace
}  // namespace ps

namespace {
// Protobuf logs each malformed string field it parses, and the shard each
// checkpoint it skips; the fuzzer makes millions.
[[maybe_unused]] const bool kQuiet =
    (google::protobuf::SetLogHandler(nullptr),
     spdlog::set_level(spdlog::level::off), true);
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  ps::Stores& stores = ps::TheStores();
  ps::VariableStore& store =
      (data[0] & 0x80) ? *stores.sync_store : *stores.async_store;
  const absl::string_view bytes(reinterpret_cast<const char*>(data + 1),
                                size - 1);
  switch (data[0] & 0x7f) {
    case 0: {
      ps::v1::PullRequest request;
      if (!ps::Parse(bytes, &request)) break;
      ps::v1::PullResponse response;
      (void)store.Pull(request, &response);
      break;
    }
    case 1:
      ps::Push(store, bytes, /*answered=*/false);
      break;
    case 2:
      ps::Push(store, bytes, /*answered=*/true);
      break;
    case 3: {
      ps::v1::CreateVariableRequest request;
      if (!ps::Parse(bytes, &request)) break;
      // New variables would fill the store: only those of the fixed names.
      if (request.name().size() != 1) break;
      (void)store.CreateVariable(request);
      break;
    }
    case 4: {
      ps::v1::SetOptimizerRequest request;
      if (!ps::Parse(bytes, &request)) break;
      (void)store.SetOptimizer(request.variable(), request.config(),
                               request.reset_state(), request.validate_only());
      break;
    }
    case 5: {
      ps::v1::OpenSessionRequest request;
      if (!ps::Parse(bytes, &request)) break;
      (void)store.OpenSession(request.worker_id(), request.epoch());
      break;
    }
    case 6: {
      ps::v1::GetOptimizerRequest request;
      if (!ps::Parse(bytes, &request)) break;
      (void)store.GetOptimizer(request.variable());
      (void)store.ListVariables();
      (void)store.Stats();
      break;
    }
    case 7: {
      ps::v1::CreateTableRequest request;
      if (!ps::Parse(bytes, &request)) break;
      if (request.name().size() != 1) break;  // as for variables
      (void)store.CreateTable(request);
      break;
    }
    case 8: {
      ps::v1::DeleteVariableRequest request;
      if (!ps::Parse(bytes, &request)) break;
      // Keep the names other inputs use: created again afresh, a table as
      // it was, a variable with the default optimizer.
      ps::v1::CreateTableRequest table;
      if (auto found = store.FindTable(request.name())) {
        table.set_name(request.name());
        table.set_dim(found->dim());
        *table.mutable_init() = found->init();
        *table.mutable_policy() = found->policy();
      }
      auto deleted = store.DeleteVariable(request.name());
      if (deleted.ok() && *deleted) {
        if (!table.name().empty()) {
          (void)store.CreateTable(table);
        } else {
          ps::v1::CreateVariableRequest create;
          create.set_name(request.name());
          create.add_shape(12);
          (void)store.CreateVariable(create);
        }
      }
      break;
    }
    case 9: {
      ps::v1::ReadStateRequest request;
      if (!ps::Parse(bytes, &request)) break;
      ps::v1::ReadStateResponse response;
      (void)store.ReadState(request, &response);
      break;
    }
    case 10: {
      ps::v1::WriteStateRequest request;
      if (!ps::Parse(bytes, &request)) break;
      (void)store.WriteState(request);
      break;
    }
    default:
      break;
  }
  return 0;
}

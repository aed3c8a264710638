// Fuzzes the checkpoint reader: a checkpoint folder, held in memory, whose
// state.pb and blocks.bin are the fuzzer's bytes under a MANIFEST whose
// checksums match them (so the parsers are reached), or whose MANIFEST is
// the fuzzer's too. Loading it into a fresh store must end in a status, never
// a crash, and never in a store that breaks on use.
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/optimizer_config.h"
#include "google/protobuf/stubs/logging.h"
#include "proto/ps/storage/v1/checkpoint.pb.h"
#include "server/checkpoint.h"
#include "server/env.h"
#include "server/store_impl.h"
#include "spdlog/spdlog.h"

namespace ps {
namespace {

constexpr char kDir[] = "/ckpt";
constexpr char kFolder[] = "/ckpt/ckpt-00000000000000000001-shard-0-of-2";
constexpr char kCluster[] = "/ckpt/ckpt-00000000000000000001.cluster";

// The files of one folder, in memory. Only reading is needed here.
class MemoryEnv final : public Env {
 public:
  std::map<std::string, std::string> files;

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path) override {
    return absl::PermissionDeniedError("read only: " + path);
  }
  absl::StatusOr<std::unique_ptr<SequentialFile>> NewSequentialFile(
      const std::string& path) override {
    auto it = files.find(path);
    if (it == files.end()) return absl::NotFoundError("missing " + path);
    return std::unique_ptr<SequentialFile>(new Reader(it->second));
  }
  absl::Status CreateDirs(const std::string&) override {
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<std::string>> ListDir(
      const std::string& path) override {
    if (path != kDir) return absl::NotFoundError("missing " + path);
    return std::vector<std::string>{"ckpt-00000000000000000001-shard-0-of-2",
                                    "ckpt-00000000000000000001.cluster"};
  }
  absl::Status RemoveAll(const std::string&) override {
    return absl::OkStatus();
  }
  absl::Status Rename(const std::string&, const std::string&) override {
    return absl::PermissionDeniedError("read only");
  }
  absl::Status SyncDir(const std::string&) override { return absl::OkStatus(); }

 private:
  class Reader final : public SequentialFile {
   public:
    explicit Reader(const std::string& data) : data_(data) {}
    absl::StatusOr<size_t> Read(char* out, size_t size) override {
      const size_t n = std::min(size, data_.size() - position_);
      std::memcpy(out, data_.data() + position_, n);
      position_ += n;
      return n;
    }

   private:
    const std::string& data_;
    size_t position_ = 0;
  };
};

uint32_t Crc(const std::string& bytes) {
  return static_cast<uint32_t>(
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()),
            static_cast<uInt>(bytes.size())));
}

// MANIFEST: the CRC of the manifest's bytes, then those bytes.
std::string ManifestFile(const std::string& payload) {
  const uint32_t crc = Crc(payload);
  std::string file(reinterpret_cast<const char*>(&crc), 4);
  return file + payload;
}

StoreOptions Options() {
  StoreOptions options;
  options.shard_index = 0;
  options.num_shards = 2;
  options.block_size = 8;
  options.default_optimizer = *ParseOptimizerConfig("adam {}");
  options.memory_limit_bytes = 64 << 20;
  return options;
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
  if (size < 3) return 0;
  const bool raw_manifest = data[0] & 1;
  const size_t state_size =
      std::min<size_t>(size - 3, static_cast<size_t>(data[1]) |
                                     (static_cast<size_t>(data[2]) << 8));
  const char* rest = reinterpret_cast<const char*>(data + 3);
  const std::string state(rest, state_size);
  const std::string blocks(rest + state_size, size - 3 - state_size);

  ps::MemoryEnv env;
  const std::string folder = ps::kFolder;
  env.files[folder + "/state.pb"] = state;
  env.files[folder + "/blocks.bin"] = blocks;
  if (raw_manifest) {
    env.files[folder + "/MANIFEST"] = state;
  } else {
    ps::storage::v1::Manifest manifest;
    manifest.set_format_version(1);
    manifest.set_shard_index(0);
    manifest.set_num_shards(2);
    manifest.set_block_size(8);
    for (const auto& [name, bytes] :
         {std::pair{"state.pb", &state}, std::pair{"blocks.bin", &blocks}}) {
      auto* file = manifest.add_files();
      file->set_name(name);
      file->set_bytes(bytes->size());
      file->set_crc32(ps::Crc(*bytes));
    }
    env.files[folder + "/MANIFEST"] =
        ps::ManifestFile(manifest.SerializeAsString());
  }

  // The cluster manifest names this part (by its MANIFEST's checksum) and
  // another shard's, in another folder.
  ps::storage::v1::ClusterManifest cluster;
  cluster.set_format_version(1);
  cluster.set_number(1);
  cluster.set_num_shards(2);
  cluster.set_block_size(8);
  for (uint32_t i = 0; i < 2; ++i) {
    ps::v1::CheckpointPart* part = cluster.add_parts();
    part->set_number(1);
    part->set_shard_index(i);
    part->set_num_shards(2);
    part->set_path(
        i == 0 ? folder : "/elsewhere/ckpt-00000000000000000001-shard-1-of-2");
  }
  cluster.mutable_parts(0)->set_manifest_crc32(
      ps::Crc(env.files[folder + "/MANIFEST"]));
  env.files[ps::kCluster] = ps::ManifestFile(cluster.SerializeAsString());

  ps::VariableStore store(ps::Options());
  ps::Checkpointer checkpointer({ps::kDir, 3, &env}, &store);
  absl::StatusOr<ps::Checkpointer::Loaded> loaded = checkpointer.LoadNewest();
  if (loaded.ok() && loaded->number != 0) {
    // What loaded must be usable: list it, pull and push every block.
    (void)store.ListVariables();
    (void)store.Stats();
    for (const std::string& name : store.VariableNames()) {
      auto variable = store.Find(name);
      ps::v1::PushRequest push;
      ps::v1::PullRequest pull;
      for (ps::Block* block : variable->SortedBlocks()) {
        ps::v1::Slice* slice = push.add_gradients();
        slice->set_variable(name);
        slice->set_offset(block->range.offset);
        slice->set_length(block->range.length);
        slice->set_data(std::string(block->range.length * 4, '\0'));
        *pull.add_slices() = *slice;
        pull.mutable_slices()->rbegin()->clear_data();
      }
      push.set_loss(1.0);
      ps::v1::PullResponse answer;
      (void)store.Pull(pull, &answer);
      auto prepared = store.PreparePush(push, true);
      if (!prepared.ok()) continue;
      auto completion = std::make_shared<ps::PushCompletion>(
          prepared->gradients.size(), true, ps::v1::FLOAT32,
          [](absl::Status, ps::v1::PullResponse) {});
      store.ApplyPush(*std::move(prepared), std::move(completion));
    }
  }
  return 0;
}

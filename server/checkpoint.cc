#include "server/checkpoint.h"

#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/delimited_message_util.h>
#include <spdlog/spdlog.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "proto/ps/storage/v1/checkpoint.pb.h"

namespace ps {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kFormatVersion = 1;
constexpr absl::string_view kPrefix = "ckpt-";
constexpr absl::string_view kTmpSuffix = ".tmp";
constexpr char kManifest[] = "MANIFEST";
constexpr char kState[] = "state.pb";
constexpr char kBlocks[] = "blocks.bin";

// A file written once, front to back, with its size and CRC-32 tracked.
class DurableFile {
 public:
  absl::Status Open(Env* env, const std::string& path) {
    PS_ASSIGN_OR_RETURN(file_, env->NewWritableFile(path));
    return absl::OkStatus();
  }

  absl::Status Append(absl::string_view data) {
    crc_ = crc32(crc_, reinterpret_cast<const Bytef*>(data.data()),
                 static_cast<uInt>(data.size()));
    bytes_ += data.size();
    return file_->Append(data);
  }

  // fsyncs and closes.
  absl::Status Close() {
    PS_RETURN_IF_ERROR(file_->Sync());
    return file_->Close();
  }

  uint64_t bytes() const { return bytes_; }
  uint32_t crc() const { return static_cast<uint32_t>(crc_); }

 private:
  std::unique_ptr<WritableFile> file_;
  uLong crc_ = crc32(0L, Z_NULL, 0);
  uint64_t bytes_ = 0;
};

// A SequentialFile as protobuf's input streams read it.
class FileReader final : public google::protobuf::io::CopyingInputStream {
 public:
  explicit FileReader(SequentialFile* file) : file_(file) {}
  int Read(void* buffer, int size) override {
    absl::StatusOr<size_t> n =
        file_->Read(static_cast<char*>(buffer), static_cast<size_t>(size));
    if (!n.ok()) {
      status_ = n.status();
      return -1;
    }
    return static_cast<int>(*n);
  }
  const absl::Status& status() const { return status_; }

 private:
  SequentialFile* const file_;
  absl::Status status_;
};

// The size and CRC-32 of a whole file.
absl::StatusOr<std::pair<uint64_t, uint32_t>> Digest(Env* env,
                                                     const std::string& path) {
  PS_ASSIGN_OR_RETURN(std::unique_ptr<SequentialFile> file,
                      env->NewSequentialFile(path));
  std::vector<char> buffer(1 << 16);
  uLong crc = crc32(0L, Z_NULL, 0);
  uint64_t bytes = 0;
  while (true) {
    PS_ASSIGN_OR_RETURN(size_t n, file->Read(buffer.data(), buffer.size()));
    if (n == 0) break;
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buffer.data()),
                static_cast<uInt>(n));
    bytes += n;
  }
  return std::make_pair(bytes, static_cast<uint32_t>(crc));
}

// The checkpoint number a folder name stands for, and whether it is an
// unfinished one (".tmp"); nothing for other names.
std::optional<std::pair<uint64_t, bool>> ParseName(absl::string_view name) {
  if (!absl::StartsWith(name, kPrefix)) return std::nullopt;
  const bool tmp = absl::EndsWith(name, kTmpSuffix);
  absl::string_view digits = name;
  digits.remove_prefix(kPrefix.size());
  if (tmp) digits.remove_suffix(kTmpSuffix.size());
  uint64_t number;
  if (digits.empty() || !absl::SimpleAtoi(digits, &number)) return std::nullopt;
  return std::make_pair(number, tmp);
}

// The checkpoints in `dir`, newest first; `tmp` for the unfinished.
absl::StatusOr<std::vector<std::pair<uint64_t, fs::path>>> List(
    Env* env, const std::string& dir, bool tmp) {
  PS_ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(dir));
  std::vector<std::pair<uint64_t, fs::path>> found;
  for (const std::string& name : names) {
    auto parsed = ParseName(name);
    if (!parsed.has_value() || parsed->second != tmp) continue;
    found.emplace_back(parsed->first, fs::path(dir) / name);
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  return found;
}

// Reads MANIFEST and checks it and every file it names.
absl::StatusOr<storage::v1::Manifest> Verify(Env* env, const fs::path& folder) {
  PS_ASSIGN_OR_RETURN(std::string raw,
                      ReadWholeFile(env, (folder / kManifest).string()));
  if (raw.size() < 4) return absl::DataLossError("MANIFEST is truncated");
  uint32_t stored;
  std::memcpy(&stored, raw.data(), 4);
  const uint32_t actual = static_cast<uint32_t>(crc32(
      crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(raw.data() + 4),
      static_cast<uInt>(raw.size() - 4)));
  storage::v1::Manifest manifest;
  if (stored != actual ||
      !manifest.ParseFromArray(raw.data() + 4,
                               static_cast<int>(raw.size() - 4))) {
    return absl::DataLossError("MANIFEST fails its checksum");
  }
  if (manifest.format_version() != kFormatVersion) {
    return absl::DataLossError(absl::StrCat("format version ",
                                            manifest.format_version(),
                                            " is not ", kFormatVersion));
  }
  for (const auto& file : manifest.files()) {
    if (file.name() != kState && file.name() != kBlocks) {
      return absl::DataLossError(
          absl::StrCat("MANIFEST names an unknown file '", file.name(), "'"));
    }
    PS_ASSIGN_OR_RETURN(auto digest,
                        Digest(env, (folder / file.name()).string()));
    if (digest.first != file.bytes() || digest.second != file.crc32()) {
      return absl::DataLossError(
          absl::StrCat(file.name(), " fails its checksum (", digest.first,
                       " bytes, CRC ", digest.second, "; MANIFEST says ",
                       file.bytes(), " bytes, CRC ", file.crc32(), ")"));
    }
  }
  return manifest;
}

// Restores blocks.bin of `folder` into `store`: every block of the store's
// variables exactly once.
absl::Status RestoreBlocks(Env* env, const std::string& path, Store* store) {
  PS_ASSIGN_OR_RETURN(std::unique_ptr<SequentialFile> file,
                      env->NewSequentialFile(path));
  FileReader reader(file.get());
  google::protobuf::io::CopyingInputStreamAdaptor input(&reader);
  storage::v1::BlockRecord block;
  absl::flat_hash_set<std::pair<std::string, uint64_t>> restored;
  while (true) {
    // A delimited parse merges into the message: start each record empty,
    // or it would inherit the fields of the one before.
    block.Clear();
    bool clean_eof = false;
    if (!google::protobuf::util::ParseDelimitedFromZeroCopyStream(
            &block, &input, &clean_eof)) {
      if (clean_eof) break;
      PS_RETURN_IF_ERROR(reader.status());
      return absl::DataLossError(absl::StrCat("cannot parse ", path));
    }
    if (!restored.emplace(block.variable(), block.index()).second) {
      return absl::DataLossError(absl::StrCat(path, " holds block ",
                                              block.index(), " of '",
                                              block.variable(), "' twice"));
    }
    PS_RETURN_IF_ERROR(store->RestoreBlock(block));
  }
  if (restored.size() != store->NumBlocks()) {
    return absl::DataLossError(absl::StrCat(path, " holds ", restored.size(),
                                            " blocks of the shard's ",
                                            store->NumBlocks()));
  }
  return absl::OkStatus();
}

}  // namespace

Checkpointer::Checkpointer(CheckpointOptions options, Store* store)
    : options_(std::move(options)),
      env_(options_.env != nullptr ? options_.env : Env::Default()),
      store_(store) {}

absl::Status Checkpointer::Prepare() {
  absl::MutexLock lock(&mu_);
  const std::string& dir = options_.dir;
  auto refuse = [&dir](const absl::Status& status) {
    return absl::Status(
        status.code(),
        absl::StrCat("checkpoint folder ", dir,
                     " cannot be used: ", status.message(),
                     ". Give --checkpoint_dir a folder this process can "
                     "write (in a container: a volume owned by its user)"));
  };
  if (absl::Status status = env_->CreateDirs(dir); !status.ok()) {
    return refuse(status);
  }
  auto leftovers = List(env_, dir, /*tmp=*/true);
  if (!leftovers.ok()) return refuse(leftovers.status());
  for (const auto& [number, path] : *leftovers) {
    spdlog::info("removing unfinished checkpoint {}", path.string());
    if (absl::Status status = env_->RemoveAll(path.string()); !status.ok()) {
      return refuse(status);
    }
  }
  // Writing a file and making it durable is what a checkpoint does.
  const std::string probe = (fs::path(dir) / ".write-probe").string();
  absl::Status written = [&]() -> absl::Status {
    PS_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file,
                        env_->NewWritableFile(probe));
    PS_RETURN_IF_ERROR(file->Append("ps_server checkpoint folder probe\n"));
    PS_RETURN_IF_ERROR(file->Sync());
    PS_RETURN_IF_ERROR(file->Close());
    PS_RETURN_IF_ERROR(env_->RemoveAll(probe));
    return env_->SyncDir(dir);
  }();
  if (!written.ok()) {
    env_->RemoveAll(probe).IgnoreError();
    return refuse(written);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::CheckpointResponse> Checkpointer::Write() {
  absl::MutexLock lock(&mu_);
  const absl::Time start = absl::Now();
  const std::string& dir = options_.dir;
  PS_RETURN_IF_ERROR(env_->CreateDirs(dir));
  // Numbers go on from the highest in the folder, finished or not.
  for (bool tmp : {false, true}) {
    PS_ASSIGN_OR_RETURN(auto found, List(env_, dir, tmp));
    if (!found.empty()) {
      next_number_ = std::max(next_number_, found.front().first + 1);
    }
  }
  const uint64_t number = next_number_++;
  const std::string name = absl::StrFormat("%s%020d", kPrefix, number);
  const fs::path tmp = fs::path(dir) / absl::StrCat(name, kTmpSuffix);
  const fs::path final_path = fs::path(dir) / name;

  absl::StatusOr<uint64_t> total = WriteFolder(tmp, start);
  if (!total.ok()) {
    env_->RemoveAll(tmp.string()).IgnoreError();
    return total.status();
  }
  if (absl::Status status = env_->Rename(tmp.string(), final_path.string());
      !status.ok()) {
    env_->RemoveAll(tmp.string()).IgnoreError();
    return status;
  }
  // Complete from here on, but durable only once its name is.
  PS_RETURN_IF_ERROR(env_->SyncDir(dir));

  // Keep the newest `keep`; drop older ones.
  PS_ASSIGN_OR_RETURN(auto complete, List(env_, dir, false));
  for (size_t i = static_cast<size_t>(options_.keep); i < complete.size();
       ++i) {
    if (absl::Status status = env_->RemoveAll(complete[i].second.string());
        !status.ok()) {
      spdlog::warn("cannot remove old checkpoint {}: {}",
                   complete[i].second.string(), std::string(status.message()));
    }
  }

  v1::CheckpointResponse response;
  response.set_path(final_path.string());
  response.set_bytes(*total);
  response.set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return response;
}

absl::StatusOr<uint64_t> Checkpointer::WriteFolder(const fs::path& tmp,
                                                   absl::Time start) {
  PS_RETURN_IF_ERROR(env_->RemoveAll(tmp.string()));
  PS_RETURN_IF_ERROR(env_->CreateDirs(tmp.string()));

  storage::v1::Manifest manifest;
  manifest.set_format_version(kFormatVersion);
  manifest.set_shard_index(store_->options().shard_index);
  manifest.set_num_shards(store_->options().num_shards);
  manifest.set_block_size(store_->options().block_size);
  manifest.set_created_unix_micros(absl::ToUnixMicros(start));
  auto record = [&manifest](const char* file_name, const DurableFile& file) {
    storage::v1::FileDigest* digest = manifest.add_files();
    digest->set_name(file_name);
    digest->set_bytes(file.bytes());
    digest->set_crc32(file.crc());
  };

  DurableFile state;
  DurableFile blocks;
  PS_RETURN_IF_ERROR(state.Open(env_, (tmp / kState).string()));
  PS_RETURN_IF_ERROR(blocks.Open(env_, (tmp / kBlocks).string()));
  std::string buffer;
  PS_RETURN_IF_ERROR(store_->Snapshot(
      [&](const storage::v1::ShardState& shard) -> absl::Status {
        PS_RETURN_IF_ERROR(state.Append(shard.SerializeAsString()));
        return state.Close();
      },
      [&](const storage::v1::BlockRecord& block) -> absl::Status {
        buffer.clear();
        google::protobuf::io::StringOutputStream output(&buffer);
        if (!google::protobuf::util::SerializeDelimitedToZeroCopyStream(
                block, &output)) {
          return absl::InternalError("cannot serialize a block");
        }
        return blocks.Append(buffer);
      }));
  PS_RETURN_IF_ERROR(blocks.Close());
  record(kState, state);
  record(kBlocks, blocks);
  uint64_t total = state.bytes() + blocks.bytes();

  const std::string payload = manifest.SerializeAsString();
  const uint32_t crc = static_cast<uint32_t>(crc32(
      crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(payload.data()),
      static_cast<uInt>(payload.size())));
  char header[4];
  std::memcpy(header, &crc, 4);
  DurableFile file;
  PS_RETURN_IF_ERROR(file.Open(env_, (tmp / kManifest).string()));
  PS_RETURN_IF_ERROR(file.Append(absl::string_view(header, 4)));
  PS_RETURN_IF_ERROR(file.Append(payload));
  PS_RETURN_IF_ERROR(file.Close());
  total += file.bytes();
  PS_RETURN_IF_ERROR(env_->SyncDir(tmp.string()));
  return total;
}

absl::StatusOr<std::string> Checkpointer::LoadNewest() {
  absl::MutexLock lock(&mu_);
  const StoreOptions& options = store_->options();
  PS_ASSIGN_OR_RETURN(const auto checkpoints, List(env_, options_.dir, false));
  for (const auto& [number, folder] : checkpoints) {
    auto manifest = Verify(env_, folder);
    if (!manifest.ok()) {
      spdlog::warn("skipping checkpoint {}: {}", folder.string(),
                   std::string(manifest.status().message()));
      continue;
    }
    if (manifest->num_shards() != options.num_shards ||
        manifest->block_size() != options.block_size ||
        manifest->shard_index() != options.shard_index) {
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint ", folder.string(), " was made by shard ",
          manifest->shard_index(), " of num_shards=", manifest->num_shards(),
          " with block_size=", manifest->block_size(), "; this is shard ",
          options.shard_index, " of num_shards=", options.num_shards,
          " with block_size=", options.block_size,
          ". Start with the checkpoint's settings or another --checkpoint_dir "
          "(re-sharding is not supported yet)"));
    }
    PS_ASSIGN_OR_RETURN(std::string state_bytes,
                        ReadWholeFile(env_, (folder / kState).string()));
    storage::v1::ShardState state;
    if (!state.ParseFromString(state_bytes)) {
      return absl::DataLossError(
          absl::StrCat("cannot parse ", (folder / kState).string()));
    }
    PS_RETURN_IF_ERROR(store_->RestoreState(state));
    PS_RETURN_IF_ERROR(
        RestoreBlocks(env_, (folder / kBlocks).string(), store_));
    return folder.string();
  }
  if (!checkpoints.empty()) {
    // Starting empty would silently drop the training run.
    return absl::DataLossError(absl::StrCat(
        "none of the ", checkpoints.size(), " checkpoints in ", options_.dir,
        " can be loaded (see the warnings above); move them aside to start "
        "empty"));
  }
  return std::string();
}

}  // namespace ps

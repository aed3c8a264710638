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
#include "absl/functional/function_ref.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/status.h"
#include "proto/ps/storage/v1/checkpoint.pb.h"
#include "server/reshard.h"

namespace ps {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kFormatVersion = 1;
constexpr absl::string_view kPrefix = "ckpt-";
constexpr absl::string_view kTmpSuffix = ".tmp";
constexpr char kClusterSuffix[] = ".cluster";
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

// A part's folder name: ckpt-<N>-shard-<i>-of-<S>, ".tmp" while unfinished.
std::string PartName(uint64_t number, uint32_t shard, uint32_t num_shards) {
  return absl::StrFormat("%s%020d-shard-%d-of-%d", kPrefix, number, shard,
                         num_shards);
}
std::string ClusterName(uint64_t number) {
  return absl::StrFormat("%s%020d%s", kPrefix, number, kClusterSuffix);
}

struct PartName_ {
  uint64_t number = 0;
  uint32_t shard = 0;
  uint32_t num_shards = 0;
  bool tmp = false;
};

// What a part's folder name stands for; nothing for other names.
std::optional<PartName_> ParsePart(absl::string_view name) {
  if (!absl::StartsWith(name, kPrefix)) return std::nullopt;
  PartName_ parsed;
  parsed.tmp = absl::EndsWith(name, kTmpSuffix);
  absl::string_view rest = name;
  rest.remove_prefix(kPrefix.size());
  if (parsed.tmp) rest.remove_suffix(kTmpSuffix.size());
  std::vector<absl::string_view> pieces = absl::StrSplit(rest, '-');
  // <N> shard <i> of <S>
  if (pieces.size() != 5 || pieces[1] != "shard" || pieces[3] != "of" ||
      pieces[0].size() != 20 || !absl::SimpleAtoi(pieces[0], &parsed.number) ||
      !absl::SimpleAtoi(pieces[2], &parsed.shard) ||
      !absl::SimpleAtoi(pieces[4], &parsed.num_shards)) {
    return std::nullopt;
  }
  return parsed;
}

// The number of a cluster manifest's name; nothing for other names.
std::optional<uint64_t> ParseCluster(absl::string_view name) {
  if (!absl::StartsWith(name, kPrefix) ||
      !absl::EndsWith(name, kClusterSuffix)) {
    return std::nullopt;
  }
  absl::string_view digits = name;
  digits.remove_prefix(kPrefix.size());
  digits.remove_suffix(std::strlen(kClusterSuffix));
  uint64_t number;
  if (digits.size() != 20 || !absl::SimpleAtoi(digits, &number)) {
    return std::nullopt;
  }
  return number;
}

// This shard's parts in `dir`, newest first; `tmp` for the unfinished.
absl::StatusOr<std::vector<std::pair<uint64_t, fs::path>>> ListParts(
    Env* env, const std::string& dir, uint32_t shard, uint32_t num_shards,
    bool tmp) {
  PS_ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(dir));
  std::vector<std::pair<uint64_t, fs::path>> found;
  for (const std::string& name : names) {
    auto parsed = ParsePart(name);
    if (!parsed.has_value() || parsed->tmp != tmp || parsed->shard != shard ||
        parsed->num_shards != num_shards) {
      continue;
    }
    found.emplace_back(parsed->number, fs::path(dir) / name);
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  return found;
}

// The cluster manifests in `dir`, newest first.
absl::StatusOr<std::vector<std::pair<uint64_t, fs::path>>> ListClusters(
    Env* env, const std::string& dir) {
  PS_ASSIGN_OR_RETURN(std::vector<std::string> names, env->ListDir(dir));
  std::vector<std::pair<uint64_t, fs::path>> found;
  for (const std::string& name : names) {
    if (auto number = ParseCluster(name); number.has_value()) {
      found.emplace_back(*number, fs::path(dir) / name);
    }
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  return found;
}

// A message behind a 4-byte CRC-32 of it.
std::string Checksummed(const google::protobuf::MessageLite& message) {
  const std::string payload = message.SerializeAsString();
  const uint32_t crc = static_cast<uint32_t>(crc32(
      crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(payload.data()),
      static_cast<uInt>(payload.size())));
  char header[4];
  std::memcpy(header, &crc, 4);
  return absl::StrCat(absl::string_view(header, 4), payload);
}

absl::Status ParseChecksummed(const std::string& raw, const char* what,
                              google::protobuf::MessageLite* message) {
  if (raw.size() < 4) {
    return absl::DataLossError(absl::StrCat(what, " is truncated"));
  }
  uint32_t stored;
  std::memcpy(&stored, raw.data(), 4);
  const uint32_t actual = static_cast<uint32_t>(crc32(
      crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(raw.data() + 4),
      static_cast<uInt>(raw.size() - 4)));
  if (stored != actual ||
      !message->ParseFromArray(raw.data() + 4,
                               static_cast<int>(raw.size() - 4))) {
    return absl::DataLossError(absl::StrCat(what, " fails its checksum"));
  }
  return absl::OkStatus();
}

// Reads a cluster manifest and checks that it holds together.
absl::StatusOr<storage::v1::ClusterManifest> ReadCluster(Env* env,
                                                         const fs::path& path) {
  PS_ASSIGN_OR_RETURN(std::string raw, ReadWholeFile(env, path.string()));
  storage::v1::ClusterManifest manifest;
  PS_RETURN_IF_ERROR(ParseChecksummed(raw, "the cluster manifest", &manifest));
  if (manifest.format_version() != kFormatVersion) {
    return absl::DataLossError(absl::StrCat("format version ",
                                            manifest.format_version(),
                                            " is not ", kFormatVersion));
  }
  if (manifest.num_shards() == 0 ||
      manifest.parts_size() != static_cast<int>(manifest.num_shards()) ||
      manifest.block_size() == 0) {
    return absl::DataLossError(
        "the cluster manifest does not list one part "
        "per shard");
  }
  for (int i = 0; i < manifest.parts_size(); ++i) {
    if (manifest.parts(i).shard_index() != static_cast<uint32_t>(i) ||
        manifest.parts(i).number() != manifest.number()) {
      return absl::DataLossError(
          "the cluster manifest's parts are out of "
          "order");
    }
  }
  return manifest;
}

// Reads MANIFEST and checks it and every file it names.
absl::StatusOr<storage::v1::Manifest> Verify(Env* env, const fs::path& folder) {
  PS_ASSIGN_OR_RETURN(std::string raw,
                      ReadWholeFile(env, (folder / kManifest).string()));
  storage::v1::Manifest manifest;
  PS_RETURN_IF_ERROR(ParseChecksummed(raw, "MANIFEST", &manifest));
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

// Calls `fn` for each record of blocks.bin at `path`, each block once.
absl::Status ForEachBlock(
    Env* env, const std::string& path,
    absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)> fn) {
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
    PS_RETURN_IF_ERROR(fn(block));
  }
  return absl::OkStatus();
}

// Restores blocks.bin of `folder` into `store`: every block of the store's
// variables exactly once.
absl::Status RestoreBlocks(Env* env, const std::string& path, Store* store) {
  uint64_t restored = 0;
  PS_RETURN_IF_ERROR(
      ForEachBlock(env, path, [&](const storage::v1::BlockRecord& block) {
        ++restored;
        return store->RestoreBlock(block);
      }));
  if (restored != store->NumBlocks()) {
    return absl::DataLossError(absl::StrCat(path, " holds ", restored,
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
  // Only this shard's own unfinished parts: in a shared folder another
  // shard may be writing its part now.
  const StoreOptions& store = store_->options();
  auto leftovers =
      ListParts(env_, dir, store.shard_index, store.num_shards, /*tmp=*/true);
  if (!leftovers.ok()) return refuse(leftovers.status());
  for (const auto& [number, path] : *leftovers) {
    spdlog::info("removing unfinished checkpoint part {}", path.string());
    if (absl::Status status = env_->RemoveAll(path.string()); !status.ok()) {
      return refuse(status);
    }
  }
  // And this shard's unfinished cluster manifests.
  auto names = env_->ListDir(dir);
  if (!names.ok()) return refuse(names.status());
  const std::string own_tmp =
      absl::StrCat(kClusterSuffix, kTmpSuffix, "-shard-", store.shard_index);
  for (const std::string& name : *names) {
    if (!absl::StartsWith(name, kPrefix) || !absl::EndsWith(name, own_tmp)) {
      continue;
    }
    spdlog::info("removing unfinished checkpoint manifest {}", name);
    const std::string path = (fs::path(dir) / name).string();
    if (absl::Status status = env_->RemoveAll(path); !status.ok()) {
      return refuse(status);
    }
  }
  // Writing a file and making it durable is what a checkpoint does.
  const std::string probe =
      (fs::path(dir) / absl::StrCat(".write-probe-shard-", store.shard_index))
          .string();
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

absl::StatusOr<uint64_t> Checkpointer::HighestNumber() {
  const StoreOptions& store = store_->options();
  uint64_t highest = highest_written_;
  for (bool tmp : {false, true}) {
    PS_ASSIGN_OR_RETURN(auto parts,
                        ListParts(env_, options_.dir, store.shard_index,
                                  store.num_shards, tmp));
    if (!parts.empty()) highest = std::max(highest, parts.front().first);
  }
  PS_ASSIGN_OR_RETURN(auto clusters, ListClusters(env_, options_.dir));
  if (!clusters.empty()) highest = std::max(highest, clusters.front().first);
  return highest;
}

absl::StatusOr<v1::CheckpointPart> Checkpointer::WritePart(
    uint64_t number, std::optional<uint64_t> cut_before) {
  absl::MutexLock lock(&mu_);
  return WritePartLocked(number, cut_before);
}

absl::StatusOr<v1::CheckpointPart> Checkpointer::WritePartLocked(
    uint64_t number, std::optional<uint64_t> cut_before) {
  const absl::Time start = absl::Now();
  const std::string& dir = options_.dir;
  const StoreOptions& store = store_->options();
  PS_RETURN_IF_ERROR(env_->CreateDirs(dir));
  PS_ASSIGN_OR_RETURN(const uint64_t highest, HighestNumber());
  if (number == 0) number = highest + 1;
  if (number <= highest) {
    return absl::AbortedError(absl::StrCat(
        "checkpoint number ", number, " is taken: shard ", store.shard_index,
        " has used numbers up to ", highest, " in ", dir,
        " (is another coordinator making checkpoints?)"));
  }
  const std::string name =
      PartName(number, store.shard_index, store.num_shards);
  const fs::path tmp = fs::path(dir) / absl::StrCat(name, kTmpSuffix);
  const fs::path final_path = fs::path(dir) / name;

  if (cut_before.has_value()) {
    PS_RETURN_IF_ERROR(
        store_->CutBefore(*cut_before, start + options_.sync_cut_timeout));
  }
  uint64_t sync_step = 0, block_steps = 0;
  auto written = WriteFolder(tmp, start, &sync_step, &block_steps);
  if (cut_before.has_value()) {
    // The part holds its cut: the steps from it on may be applied now.
    store_->ReleaseSteps();
    sync_step = *cut_before;
  }
  if (!written.ok()) {
    env_->RemoveAll(tmp.string()).IgnoreError();
    return written.status();
  }
  if (absl::Status status = env_->Rename(tmp.string(), final_path.string());
      !status.ok()) {
    env_->RemoveAll(tmp.string()).IgnoreError();
    return status;
  }
  highest_written_ = std::max(highest_written_, number);
  // Complete from here on, but durable only once its name is.
  PS_RETURN_IF_ERROR(env_->SyncDir(dir));

  v1::CheckpointPart part;
  part.set_number(number);
  part.set_shard_index(store.shard_index);
  part.set_num_shards(store.num_shards);
  part.set_path(final_path.string());
  part.set_bytes(written->first);
  part.set_manifest_crc32(written->second);
  part.set_sync_step(sync_step);
  part.set_sync_cut(cut_before.has_value());
  part.set_block_steps(block_steps);
  part.set_cut_unix_micros(absl::ToUnixMicros(start));
  part.set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return part;
}

absl::Status Checkpointer::Commit(const v1::CommitCheckpointRequest& commit) {
  absl::MutexLock lock(&mu_);
  return CommitLocked(commit);
}

absl::Status Checkpointer::CommitLocked(
    const v1::CommitCheckpointRequest& commit) {
  const StoreOptions& store = store_->options();
  const std::string& dir = options_.dir;
  if (commit.number() == 0 ||
      commit.parts_size() != static_cast<int>(store.num_shards) ||
      commit.block_size() != store.block_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a commit of checkpoint ", commit.number(), " must list ",
        store.num_shards, " parts (one per shard) with block_size ",
        store.block_size, "; it lists ", commit.parts_size(),
        " with block_size ", commit.block_size()));
  }
  double earliest = 0, latest = 0;
  for (int i = 0; i < commit.parts_size(); ++i) {
    const v1::CheckpointPart& part = commit.parts(i);
    if (part.shard_index() != static_cast<uint32_t>(i) ||
        part.num_shards() != store.num_shards ||
        part.number() != commit.number()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "part ", i, " of the commit of checkpoint ", commit.number(),
          " is shard ", part.shard_index(), " of ", part.num_shards(),
          " for checkpoint ", part.number()));
    }
    if (part.sync_cut() != commit.parts(0).sync_cut() ||
        (part.sync_cut() && part.sync_step() != commit.parts(0).sync_step())) {
      return absl::InvalidArgumentError(
          absl::StrCat("the parts of checkpoint ", commit.number(),
                       " are not one sync cut: part 0 is ",
                       commit.parts(0).sync_cut() ? "cut" : "not cut",
                       " before step ", commit.parts(0).sync_step(), ", part ",
                       i, " ", part.sync_cut() ? "cut" : "not cut",
                       " before step ", part.sync_step()));
    }
    const double cut = static_cast<double>(part.cut_unix_micros()) / 1e6;
    if (i == 0 || cut < earliest) earliest = cut;
    if (i == 0 || cut > latest) latest = cut;
  }
  // This shard's part must be the one it wrote.
  const fs::path own =
      fs::path(dir) /
      PartName(commit.number(), store.shard_index, store.num_shards);
  absl::StatusOr<std::pair<uint64_t, uint32_t>> digest =
      Digest(env_, (own / kManifest).string());
  if (!digest.ok() ||
      digest->second != commit.parts(store.shard_index).manifest_crc32()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard ", store.shard_index, " has no part ", own.string(),
                     " with the MANIFEST the commit names"));
  }

  const fs::path path = fs::path(dir) / ClusterName(commit.number());
  if (!ReadCluster(env_, path).ok()) {
    storage::v1::ClusterManifest manifest;
    manifest.set_format_version(kFormatVersion);
    manifest.set_number(commit.number());
    manifest.set_num_shards(store.num_shards);
    manifest.set_block_size(store.block_size);
    manifest.set_created_unix_micros(absl::ToUnixMicros(absl::Now()));
    *manifest.mutable_parts() = commit.parts();
    manifest.set_cut_spread_seconds(latest - earliest);
    manifest.set_sync_cut(commit.parts(0).sync_cut());
    if (manifest.sync_cut())
      manifest.set_sync_step(commit.parts(0).sync_step());
    // Each shard's own temporary name: in a shared folder they may commit
    // at once, and each rename puts a whole manifest in place.
    const std::string tmp =
        absl::StrCat(path.string(), kTmpSuffix, "-shard-", store.shard_index);
    absl::Status written = [&]() -> absl::Status {
      DurableFile file;
      PS_RETURN_IF_ERROR(file.Open(env_, tmp));
      PS_RETURN_IF_ERROR(file.Append(Checksummed(manifest)));
      PS_RETURN_IF_ERROR(file.Close());
      PS_RETURN_IF_ERROR(env_->Rename(tmp, path.string()));
      return env_->SyncDir(dir);
    }();
    if (!written.ok()) {
      env_->RemoveAll(tmp).IgnoreError();
      return written;
    }
  }

  // Keep the newest `keep` complete checkpoints: their manifests, and this
  // shard's parts of them. Parts of numbers that never completed go once
  // a newer one has.
  PS_ASSIGN_OR_RETURN(auto clusters, ListClusters(env_, dir));
  absl::flat_hash_set<uint64_t> kept;
  for (size_t i = 0; i < clusters.size(); ++i) {
    if (i < static_cast<size_t>(options_.keep)) {
      kept.insert(clusters[i].first);
      continue;
    }
    if (absl::Status status = env_->RemoveAll(clusters[i].second.string());
        !status.ok()) {
      spdlog::warn("cannot remove old checkpoint manifest {}: {}",
                   clusters[i].second.string(), std::string(status.message()));
    }
  }
  PS_ASSIGN_OR_RETURN(auto parts, ListParts(env_, dir, store.shard_index,
                                            store.num_shards, false));
  for (const auto& [number, folder] : parts) {
    if (kept.contains(number) || number > commit.number()) continue;
    if (absl::Status status = env_->RemoveAll(folder.string()); !status.ok()) {
      spdlog::warn("cannot remove old checkpoint part {}: {}", folder.string(),
                   std::string(status.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::CheckpointResponse> Checkpointer::Write() {
  absl::MutexLock lock(&mu_);
  const absl::Time start = absl::Now();
  PS_ASSIGN_OR_RETURN(v1::CheckpointPart part,
                      WritePartLocked(0, std::nullopt));
  v1::CheckpointResponse response;
  response.set_number(part.number());
  response.set_path(part.path());
  response.set_bytes(part.bytes());
  *response.add_parts() = part;
  if (store_->options().num_shards == 1) {
    v1::CommitCheckpointRequest commit;
    commit.set_number(part.number());
    commit.set_block_size(store_->options().block_size);
    *commit.add_parts() = part;
    PS_RETURN_IF_ERROR(CommitLocked(commit));
  }
  response.set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return response;
}

absl::StatusOr<v1::ListCheckpointsResponse> Checkpointer::List() {
  absl::MutexLock lock(&mu_);
  v1::ListCheckpointsResponse response;
  PS_ASSIGN_OR_RETURN(const uint64_t highest, HighestNumber());
  response.set_highest_number(highest);
  PS_ASSIGN_OR_RETURN(auto clusters, ListClusters(env_, options_.dir));
  for (const auto& [number, path] : clusters) {
    auto manifest = ReadCluster(env_, path);
    if (!manifest.ok()) continue;
    v1::CheckpointResponse* checkpoint = response.add_checkpoints();
    checkpoint->set_number(number);
    checkpoint->set_path(path.string());
    uint64_t bytes = 0;
    for (const v1::CheckpointPart& part : manifest->parts()) {
      bytes += part.bytes();
    }
    checkpoint->set_bytes(bytes);
    *checkpoint->mutable_parts() = manifest->parts();
    checkpoint->set_cut_spread_seconds(manifest->cut_spread_seconds());
  }
  return response;
}

absl::StatusOr<std::pair<uint64_t, uint32_t>> Checkpointer::WriteFolder(
    const fs::path& tmp, absl::Time start, uint64_t* sync_step,
    uint64_t* block_steps) {
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
        *sync_step = shard.sync_step();
        PS_RETURN_IF_ERROR(state.Append(shard.SerializeAsString()));
        return state.Close();
      },
      [&](const storage::v1::BlockRecord& block) -> absl::Status {
        *block_steps += block.step();
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

  DurableFile file;
  PS_RETURN_IF_ERROR(file.Open(env_, (tmp / kManifest).string()));
  PS_RETURN_IF_ERROR(file.Append(Checksummed(manifest)));
  PS_RETURN_IF_ERROR(file.Close());
  total += file.bytes();
  PS_RETURN_IF_ERROR(env_->SyncDir(tmp.string()));
  return std::make_pair(total, file.crc());
}

absl::StatusOr<uint64_t> Checkpointer::RollBackTo(uint64_t number) {
  absl::MutexLock lock(&mu_);
  const StoreOptions& options = store_->options();
  const std::string& dir = options_.dir;
  const fs::path path = fs::path(dir) / ClusterName(number);
  auto manifest = ReadCluster(env_, path);
  if (!manifest.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shard ", options.shard_index,
        " cannot go back to "
        "checkpoint ",
        number, ": ", path.string(), " ", manifest.status().message()));
  }
  if (!manifest->sync_cut()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", number,
        " is not a sync cut (its parts may hold "
        "different steps), so the cluster does not go back to it together"));
  }
  if (manifest->num_shards() != options.num_shards ||
      manifest->block_size() != options.block_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", number, " was made with num_shards=",
        manifest->num_shards(), " and block_size=", manifest->block_size(),
        "; shard ", options.shard_index,
        " goes back in place only to one of "
        "its own shape: restart it"));
  }
  const fs::path folder =
      fs::path(dir) / PartName(number, options.shard_index, options.num_shards);
  auto verified = Verify(env_, folder);
  absl::StatusOr<std::pair<uint64_t, uint32_t>> digest =
      verified.ok() ? Digest(env_, (folder / kManifest).string())
                    : verified.status();
  if (!digest.ok() ||
      digest->second != manifest->parts(options.shard_index).manifest_crc32()) {
    return absl::DataLossError(absl::StrCat(
        "part ", folder.string(), " of checkpoint ", number, " ",
        !digest.ok() ? std::string(digest.status().message())
                     : std::string("is not the one its manifest names")));
  }
  PS_ASSIGN_OR_RETURN(std::string state_bytes,
                      ReadWholeFile(env_, (folder / kState).string()));
  storage::v1::ShardState state;
  if (!state.ParseFromString(state_bytes)) {
    return absl::DataLossError(
        absl::StrCat("cannot parse ", (folder / kState).string()));
  }
  const std::string blocks = (folder / kBlocks).string();
  PS_RETURN_IF_ERROR(store_->RollBack(
      state, number, manifest->sync_step(),
      [&](absl::FunctionRef<absl::Status(const storage::v1::BlockRecord&)> fn) {
        return ForEachBlock(env_, blocks, fn);
      }));
  return manifest->sync_step();
}

absl::StatusOr<Checkpointer::Loaded> Checkpointer::LoadNewest() {
  absl::MutexLock lock(&mu_);
  const StoreOptions& options = store_->options();
  const std::string& dir = options_.dir;
  PS_ASSIGN_OR_RETURN(const auto clusters, ListClusters(env_, dir));
  // A shared folder holds other shards' parts too; then every part of a
  // checkpoint must be here (a per-shard folder holds only this shard's).
  bool shared = false;
  PS_ASSIGN_OR_RETURN(const std::vector<std::string> names, env_->ListDir(dir));
  for (const std::string& name : names) {
    auto part = ParsePart(name);
    shared = shared || (part.has_value() && part->shard != options.shard_index);
  }
  const absl::flat_hash_set<std::string> present(names.begin(), names.end());
  for (const auto& [number, path] : clusters) {
    auto skip = [&, number = number](absl::string_view why) {
      spdlog::warn("skipping checkpoint {} in {}: {}; trying the one before",
                   number, dir, std::string(why));
    };
    auto manifest = ReadCluster(env_, path);
    if (!manifest.ok()) {
      skip(manifest.status().message());
      continue;
    }
    if (manifest->sync_cut()) {
      // One cut before one step: every part must say so.
      bool one_cut = true;
      for (const v1::CheckpointPart& part : manifest->parts()) {
        one_cut = one_cut && part.sync_cut() &&
                  part.sync_step() == manifest->sync_step();
      }
      if (!one_cut) {
        skip(absl::StrCat("its parts do not all hold the state before step ",
                          manifest->sync_step()));
        continue;
      }
    }
    // Every part this folder should hold: all of them in a shared folder,
    // else this shard's (and all of them to re-shard).
    const bool same_shape = manifest->num_shards() == options.num_shards &&
                            manifest->block_size() == options.block_size;
    bool all_present = true;
    for (const v1::CheckpointPart& part : manifest->parts()) {
      all_present =
          all_present && present.contains(PartName(number, part.shard_index(),
                                                   manifest->num_shards()));
    }
    if (!same_shape && !shared && !all_present) {
      // Re-sharding reads every part; a per-shard folder holds one.
      return absl::FailedPreconditionError(absl::StrCat(
          "checkpoint ", number, " in ", dir,
          " was made with num_shards=", manifest->num_shards(),
          " and block_size=", manifest->block_size(), "; this is shard ",
          options.shard_index, " of num_shards=", options.num_shards,
          " with block_size=", options.block_size,
          ". Restoring into another shape reads every shard's part, and this "
          "folder holds only this shard's: give every shard one shared "
          "--checkpoint_dir holding all the parts (or copy every "
          "ckpt-<N>-shard-* folder and ckpt-<N>.cluster into each), or start "
          "with the checkpoint's settings"));
    }
    std::vector<fs::path> folders(manifest->parts_size());
    bool usable = true;
    for (const v1::CheckpointPart& part : manifest->parts()) {
      const bool needed =
          !same_shape || shared || part.shard_index() == options.shard_index;
      if (!needed) continue;
      const std::string name =
          PartName(number, part.shard_index(), manifest->num_shards());
      const fs::path folder = fs::path(dir) / name;
      auto verified = Verify(env_, folder);
      absl::StatusOr<std::pair<uint64_t, uint32_t>> digest =
          verified.ok() ? Digest(env_, (folder / kManifest).string())
                        : verified.status();
      if (!digest.ok() || digest->second != part.manifest_crc32()) {
        skip(absl::StrCat(
            "its part ", name, " ",
            !verified.ok() ? std::string(verified.status().message())
            : !digest.ok() ? std::string(digest.status().message())
                           : std::string("is not the one its manifest names")));
        usable = false;
        break;
      }
      folders[part.shard_index()] = folder;
    }
    if (!usable) continue;
    if (!same_shape) {
      PS_ASSIGN_OR_RETURN(std::string summary,
                          RestoreResharded(env_, *manifest, folders, store_));
      highest_written_ = std::max(highest_written_, number);
      return Loaded{number, *manifest, path.string(), std::move(summary)};
    }
    const fs::path& folder = folders[options.shard_index];
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
    highest_written_ = std::max(highest_written_, number);
    return Loaded{number, *manifest, folder.string(), ""};
  }
  if (!clusters.empty()) {
    // Starting empty would silently drop the training run.
    return absl::DataLossError(absl::StrCat(
        "none of the ", clusters.size(), " checkpoints in ", dir,
        " can be loaded (see the warnings above); move them aside to start "
        "empty"));
  }
  return Loaded{};
}

}  // namespace ps

#include "server/checkpoint.h"

#include <fcntl.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/util/delimited_message_util.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <vector>

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

absl::Status ErrnoError(absl::string_view what, const std::string& path) {
  return absl::InternalError(
      absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// A file written once, front to back, with its size and CRC-32 tracked.
class DurableFile {
 public:
  ~DurableFile() {
    if (fd_ >= 0) ::close(fd_);
  }

  absl::Status Open(const std::string& path) {
    path_ = path;
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) return ErrnoError("cannot create", path);
    return absl::OkStatus();
  }

  absl::Status Append(absl::string_view data) {
    crc_ = crc32(crc_, reinterpret_cast<const Bytef*>(data.data()),
                 static_cast<uInt>(data.size()));
    bytes_ += data.size();
    while (!data.empty()) {
      const ssize_t n = ::write(fd_, data.data(), data.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("cannot write", path_);
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }

  // fsyncs and closes.
  absl::Status Close() {
    if (::fsync(fd_) != 0) return ErrnoError("cannot fsync", path_);
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) return ErrnoError("cannot close", path_);
    return absl::OkStatus();
  }

  uint64_t bytes() const { return bytes_; }
  uint32_t crc() const { return static_cast<uint32_t>(crc_); }

 private:
  std::string path_;
  int fd_ = -1;
  uLong crc_ = crc32(0L, Z_NULL, 0);
  uint64_t bytes_ = 0;
};

absl::Status SyncDirectory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open folder", path);
  const int result = ::fsync(fd);
  ::close(fd);
  if (result != 0) return ErrnoError("cannot fsync folder", path);
  return absl::OkStatus();
}

// The size and CRC-32 of a whole file.
absl::StatusOr<std::pair<uint64_t, uint32_t>> Digest(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("missing file ", path));
  std::vector<char> buffer(1 << 20);
  uLong crc = crc32(0L, Z_NULL, 0);
  uint64_t bytes = 0;
  while (true) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      return ErrnoError("cannot read", path);
    }
    if (n == 0) break;
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buffer.data()),
                static_cast<uInt>(n));
    bytes += static_cast<uint64_t>(n);
  }
  ::close(fd);
  return std::make_pair(bytes, static_cast<uint32_t>(crc));
}

absl::StatusOr<std::string> ReadWhole(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("missing file ", path));
  google::protobuf::io::FileInputStream input(fd);
  input.SetCloseOnDelete(true);
  std::string contents;
  const void* data;
  int size;
  while (input.Next(&data, &size)) {
    contents.append(static_cast<const char*>(data), size);
  }
  if (input.GetErrno() != 0) return ErrnoError("cannot read", path);
  return contents;
}

// The checkpoint numbers in `dir`, newest first; `tmp` for the unfinished.
std::vector<std::pair<uint64_t, fs::path>> List(const std::string& dir,
                                                bool tmp) {
  std::vector<std::pair<uint64_t, fs::path>> found;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) {
    std::string name = entry.path().filename().string();
    if (!absl::StartsWith(name, kPrefix)) continue;
    const bool is_tmp = absl::EndsWith(name, kTmpSuffix);
    if (is_tmp != tmp) continue;
    absl::string_view digits(name);
    digits.remove_prefix(kPrefix.size());
    if (is_tmp) digits.remove_suffix(kTmpSuffix.size());
    uint64_t number;
    if (!absl::SimpleAtoi(digits, &number)) continue;
    found.emplace_back(number, entry.path());
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  return found;
}

// Reads MANIFEST and checks it and every file it names.
absl::StatusOr<storage::v1::Manifest> Verify(const fs::path& folder) {
  PS_ASSIGN_OR_RETURN(std::string raw,
                      ReadWhole((folder / kManifest).string()));
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
    PS_ASSIGN_OR_RETURN(auto digest, Digest((folder / file.name()).string()));
    if (digest.first != file.bytes() || digest.second != file.crc32()) {
      return absl::DataLossError(
          absl::StrCat(file.name(), " fails its checksum (", digest.first,
                       " bytes, CRC ", digest.second, "; MANIFEST says ",
                       file.bytes(), " bytes, CRC ", file.crc32(), ")"));
    }
  }
  return manifest;
}

}  // namespace

Checkpointer::Checkpointer(CheckpointOptions options, VariableStore* store)
    : options_(std::move(options)), store_(store) {
  absl::MutexLock lock(&mu_);
  for (bool tmp : {false, true}) {
    auto found = List(options_.dir, tmp);
    if (!found.empty()) {
      next_number_ = std::max(next_number_, found.front().first + 1);
    }
  }
}

absl::StatusOr<v1::CheckpointResponse> Checkpointer::Write() {
  absl::MutexLock lock(&mu_);
  const absl::Time start = absl::Now();
  const uint64_t number = next_number_++;
  const std::string name = absl::StrFormat("%s%020d", kPrefix, number);
  const fs::path dir(options_.dir);
  const fs::path tmp = dir / absl::StrCat(name, kTmpSuffix);
  const fs::path final_path = dir / name;
  std::error_code error;
  fs::create_directories(dir, error);
  fs::remove_all(tmp, error);
  if (!fs::create_directory(tmp, error)) {
    return absl::InternalError(absl::StrCat("cannot create checkpoint folder ",
                                            tmp.string(), ": ",
                                            error.message()));
  }

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

  {
    DurableFile state;
    PS_RETURN_IF_ERROR(state.Open((tmp / kState).string()));
    PS_RETURN_IF_ERROR(
        state.Append(store_->SnapshotState().SerializeAsString()));
    PS_RETURN_IF_ERROR(state.Close());
    record(kState, state);
  }
  {
    DurableFile blocks;
    PS_RETURN_IF_ERROR(blocks.Open((tmp / kBlocks).string()));
    std::string buffer;
    PS_RETURN_IF_ERROR(store_->SnapshotBlocks(
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
    record(kBlocks, blocks);
  }
  uint64_t total = 0;
  for (const auto& file : manifest.files()) total += file.bytes();
  {
    const std::string payload = manifest.SerializeAsString();
    const uint32_t crc = static_cast<uint32_t>(crc32(
        crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(payload.data()),
        static_cast<uInt>(payload.size())));
    char header[4];
    std::memcpy(header, &crc, 4);
    DurableFile file;
    PS_RETURN_IF_ERROR(file.Open((tmp / kManifest).string()));
    PS_RETURN_IF_ERROR(file.Append(absl::string_view(header, 4)));
    PS_RETURN_IF_ERROR(file.Append(payload));
    PS_RETURN_IF_ERROR(file.Close());
    total += file.bytes();
  }
  PS_RETURN_IF_ERROR(SyncDirectory(tmp.string()));
  if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
    return ErrnoError("cannot rename into place", final_path.string());
  }
  PS_RETURN_IF_ERROR(SyncDirectory(dir.string()));

  // Keep the newest `keep`; drop older ones and unfinished leftovers.
  auto complete = List(options_.dir, false);
  for (size_t i = static_cast<size_t>(options_.keep); i < complete.size();
       ++i) {
    fs::remove_all(complete[i].second, error);
  }
  for (const auto& [n, path] : List(options_.dir, true)) {
    fs::remove_all(path, error);
  }

  v1::CheckpointResponse response;
  response.set_path(final_path.string());
  response.set_bytes(total);
  response.set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  return response;
}

absl::StatusOr<std::string> Checkpointer::LoadNewest() {
  absl::MutexLock lock(&mu_);
  const StoreOptions& options = store_->options();
  const auto checkpoints = List(options_.dir, false);
  for (const auto& [number, folder] : checkpoints) {
    auto manifest = Verify(folder);
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
                        ReadWhole((folder / kState).string()));
    storage::v1::ShardState state;
    if (!state.ParseFromString(state_bytes)) {
      return absl::DataLossError(
          absl::StrCat("cannot parse ", (folder / kState).string()));
    }
    PS_RETURN_IF_ERROR(store_->RestoreState(state));

    const std::string blocks_path = (folder / kBlocks).string();
    const int fd = ::open(blocks_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError("cannot open", blocks_path);
    google::protobuf::io::FileInputStream input(fd);
    input.SetCloseOnDelete(true);
    storage::v1::BlockRecord block;
    while (true) {
      // A delimited parse merges into the message: start each record empty,
      // or it would inherit the fields of the one before.
      block.Clear();
      bool clean_eof = false;
      if (!google::protobuf::util::ParseDelimitedFromZeroCopyStream(
              &block, &input, &clean_eof)) {
        if (clean_eof) break;
        return absl::DataLossError(absl::StrCat("cannot parse ", blocks_path));
      }
      PS_RETURN_IF_ERROR(store_->RestoreBlock(block));
    }
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

#include "tests/durability/shard_process.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace ps::durability {
namespace {

namespace fs = std::filesystem;

constexpr char kBinary[] = PS_SERVER_BINARY;
constexpr absl::string_view kListening = "listening on ";
// Large enough for the biggest variable a test pulls in one call.
constexpr int kMaxMessageBytes = 64 << 20;

}  // namespace

int PickFreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  int port = 0;
  socklen_t length = sizeof(address);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0) {
    port = ntohs(address.sin_port);
  }
  ::close(fd);
  return port;
}

std::string MakeTempDir(const std::string& prefix) {
  std::string pattern =
      (fs::path(::testing::TempDir()) / (prefix + "-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << pattern << ": " << std::strerror(errno);
    return "";
  }
  return pattern;
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream contents;
  contents << file.rdbuf();
  return contents.str();
}

std::unique_ptr<ShardProcess> ShardProcess::Spawn(
    const ShardFlags& flags, int port, const std::string& stderr_path) {
  std::vector<std::string> args = {
      "--host=127.0.0.1",
      absl::StrCat("--port=", port),
      absl::StrCat("--shard_index=", flags.shard_index),
      absl::StrCat("--num_shards=", flags.num_shards),
      absl::StrCat("--block_size=", flags.block_size),
      absl::StrCat("--optimizer=", flags.optimizer),
      absl::StrCat("--checkpoint_keep=", flags.checkpoint_keep),
      absl::StrCat("--checkpoint_interval_s=", flags.checkpoint_interval_s),
  };
  if (!flags.checkpoint_dir.empty()) {
    args.push_back(absl::StrCat("--checkpoint_dir=", flags.checkpoint_dir));
  }
  args.insert(args.end(), flags.extra.begin(), flags.extra.end());
  auto child = ChildProcess::Start(kBinary, args, StderrTo::File(stderr_path));
  if (child == nullptr) return nullptr;
  return std::unique_ptr<ShardProcess>(
      new ShardProcess(std::move(child), stderr_path));
}

std::optional<std::string> ShardProcess::WaitListening(
    Clock::duration timeout) {
  std::optional<std::string> line = child_->ReadLine(timeout);
  if (!line.has_value() || !absl::StartsWith(*line, kListening)) {
    return std::nullopt;
  }
  return line->substr(kListening.size());
}

ProcessCluster::ProcessCluster(std::string root, uint32_t num_shards,
                               uint64_t block_size, std::string optimizer,
                               bool checkpoints)
    : root_(std::move(root)),
      plan_(num_shards, block_size),
      flags_(num_shards),
      ports_(num_shards, 0),
      starts_(num_shards, 0),
      processes_(num_shards),
      stubs_(num_shards),
      admins_(num_shards) {
  for (uint32_t i = 0; i < num_shards; ++i) {
    ShardFlags& flags = flags_[i];
    flags.shard_index = i;
    flags.num_shards = num_shards;
    flags.block_size = block_size;
    flags.optimizer = optimizer;
    if (checkpoints) {
      flags.checkpoint_dir =
          (fs::path(root_) / absl::StrCat("shard", i, "-ckpt")).string();
    }
  }
}

ProcessCluster::~ProcessCluster() {
  for (auto& process : processes_) process.reset();
}

absl::Status ProcessCluster::StartAll() {
  // Every port first, so that each shard starts knowing its peers.
  for (uint32_t i = 0; i < num_shards(); ++i) {
    if (ports_[i] == 0) ports_[i] = PickFreePort();
  }
  for (uint32_t i = 0; i < num_shards(); ++i) {
    if (absl::Status status = Start(i); !status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status ProcessCluster::Start(uint32_t i) {
  processes_[i].reset();
  // A new port is picked only at the first start; a restart must keep the
  // address the clients know, so it waits for the port instead.
  const bool first = starts_[i] == 0;
  std::string last_error;
  for (int attempt = 0; attempt < 10; ++attempt) {
    if (first && ports_[i] == 0) ports_[i] = PickFreePort();
    if (ports_[i] == 0) return absl::InternalError("no free port");
    ShardFlags flags = flags_[i];
    if (num_shards() > 1 &&
        std::find(ports_.begin(), ports_.end(), 0) == ports_.end()) {
      flags.extra.push_back(
          absl::StrCat("--peers=", absl::StrJoin(addresses(), ",")));
    }
    const std::string stderr_path =
        (fs::path(root_) /
         absl::StrCat("shard", i, "-start", ++starts_[i], ".stderr"))
            .string();
    auto process = ShardProcess::Spawn(flags, ports_[i], stderr_path);
    if (process == nullptr) return absl::InternalError("cannot spawn");
    auto address = process->WaitListening(kStartTimeout);
    if (address.has_value()) {
      if (*address != absl::StrCat("127.0.0.1:", ports_[i])) {
        return absl::InternalError(
            absl::StrCat("shard ", i, " listens on ", *address));
      }
      processes_[i] = std::move(process);
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(kMaxMessageBytes);
      args.SetMaxSendMessageSize(kMaxMessageBytes);
      auto channel = grpc::CreateCustomChannel(
          *address, grpc::InsecureChannelCredentials(), args);
      stubs_[i] = v1::ParameterService::NewStub(channel);
      admins_[i] = v1::AdminService::NewStub(channel);
      return absl::OkStatus();
    }
    process->WaitForExit(kExitTimeout);
    process->Kill();
    last_error = process->StderrText();
    if (!absl::StrContains(last_error, "cannot listen")) break;
    if (first) ports_[i] = 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return absl::UnavailableError(
      absl::StrCat("shard ", i, " did not start: ", last_error));
}

void ProcessCluster::Kill(uint32_t i) {
  if (processes_[i] != nullptr) processes_[i]->Kill();
}

std::optional<int> ProcessCluster::Terminate(uint32_t i) {
  if (processes_[i] == nullptr) return std::nullopt;
  processes_[i]->Signal(SIGTERM);
  auto status = processes_[i]->WaitForExit(kExitTimeout);
  if (!status.has_value()) processes_[i]->Kill();
  return status;
}

std::string ProcessCluster::LastStderr(uint32_t i) const {
  return processes_[i] == nullptr ? "" : processes_[i]->StderrText();
}

std::vector<std::string> ProcessCluster::addresses() const {
  std::vector<std::string> addresses;
  for (int port : ports_) addresses.push_back(absl::StrCat("127.0.0.1:", port));
  return addresses;
}

absl::StatusOr<v1::CheckpointResponse> ProcessCluster::Checkpoint(uint32_t i) {
  auto context = MakeContext();
  v1::CheckpointResponse response;
  const grpc::Status status =
      admins_[0]->Checkpoint(context.get(), v1::CheckpointRequest(), &response);
  if (status.ok() && static_cast<int>(i) < response.parts_size()) {
    response.set_path(response.parts(i).path());
  }
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  return response;
}

std::vector<uint64_t> ProcessCluster::BlocksOf(uint32_t i,
                                               const std::string& variable,
                                               uint64_t size) const {
  std::vector<uint64_t> blocks;
  for (uint64_t k = 0; k < plan_.NumBlocks(size); ++k) {
    if (plan_.ShardOf(variable, k) == i) blocks.push_back(k);
  }
  return blocks;
}

absl::StatusOr<Values> ProcessCluster::PullShard(uint32_t i,
                                                 const std::string& variable,
                                                 uint64_t size) {
  v1::PullRequest request;
  for (uint64_t k : BlocksOf(i, variable, size)) {
    const FlatRange range = plan_.BlockRange(size, k);
    v1::Slice* slice = request.add_slices();
    slice->set_variable(variable);
    slice->set_offset(range.offset);
    slice->set_length(range.length);
  }
  auto context = MakeContext();
  v1::PullResponse response;
  const grpc::Status status =
      stubs_[i]->Pull(context.get(), request, &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  Values out;
  for (const v1::Slice& slice : response.values()) {
    if (slice.dtype() != v1::FLOAT32 ||
        slice.data().size() != slice.length() * sizeof(float)) {
      return absl::DataLossError("a pulled slice does not decode");
    }
    const size_t at = out.values.size();
    out.values.resize(at + slice.length());
    std::memcpy(out.values.data() + at, slice.data().data(),
                slice.data().size());
    for (uint64_t j = 0; j < slice.length(); ++j) {
      out.flat_index.push_back(slice.offset() + j);
    }
    out.versions.push_back(slice.version());
  }
  return out;
}

grpc::Status ProcessCluster::PushShard(uint32_t i, const std::string& variable,
                                       const std::vector<float>& gradient,
                                       const std::string& worker_id,
                                       uint64_t seq, uint64_t step,
                                       std::optional<double> loss) {
  v1::PushRequest request;
  request.set_worker_id(worker_id);
  request.set_seq(seq);
  request.set_epoch(1);  // a session the shard takes from the push
  request.set_step(step);
  if (loss.has_value()) request.set_loss(*loss);
  for (uint64_t k : BlocksOf(i, variable, gradient.size())) {
    const FlatRange range = plan_.BlockRange(gradient.size(), k);
    v1::Slice* slice = request.add_gradients();
    slice->set_variable(variable);
    slice->set_offset(range.offset);
    slice->set_length(range.length);
    slice->set_data(
        reinterpret_cast<const char*>(gradient.data() + range.offset),
        range.length * sizeof(float));
  }
  auto context = MakeContext();
  v1::PushResponse response;
  return stubs_[i]->Push(context.get(), request, &response);
}

std::unique_ptr<grpc::ClientContext> MakeContext() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  return context;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() ||
          std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace ps::durability

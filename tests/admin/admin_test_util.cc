#include "tests/admin/admin_test_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/cluster_check.h"
#include "common/optimizer_config.h"
#include "common/status.h"
#include "common/wire.h"

extern char** environ;

namespace ps::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr && *base ? base : "/tmp") +
                        "/ps_admin_test_XXXXXX";
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  char* made = mkdtemp(buffer.data());
  EXPECT_NE(made, nullptr) << "mkdtemp " << pattern;
  path_ = made != nullptr ? made : pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string TempDir::WriteFile(const std::string& name,
                               const std::string& contents) const {
  const std::string full = path_ + "/" + name;
  std::ofstream file(full, std::ios::binary);
  file << contents;
  EXPECT_TRUE(file.good()) << "cannot write " << full;
  return full;
}

std::vector<std::unique_ptr<ParameterServer>> StartShards(
    int n, const ServerOptions& base) {
  std::vector<std::unique_ptr<ParameterServer>> shards;
  for (int i = 0; i < n; ++i) {
    ServerOptions options = base;
    options.host = "127.0.0.1";
    options.port = 0;
    options.shard_index = i;
    options.num_shards = n;
    auto server = ParameterServer::Start(options);
    EXPECT_TRUE(server.ok()) << server.status();
    if (server.ok()) shards.push_back(*std::move(server));
  }
  return shards;
}

std::string ServerList(
    const std::vector<std::unique_ptr<ParameterServer>>& shards) {
  std::string list;
  for (const auto& shard : shards) {
    if (!list.empty()) list += ",";
    list += shard->address();
  }
  return list;
}

std::vector<std::string> ServerAddresses(
    const std::vector<std::unique_ptr<ParameterServer>>& shards) {
  std::vector<std::string> addresses;
  for (const auto& shard : shards) addresses.push_back(shard->address());
  return addresses;
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const std::string& root_pem) {
  if (root_pem.empty()) {
    return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  }
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = root_pem;
  return grpc::CreateChannel(address, grpc::SslCredentials(ssl));
}

std::unique_ptr<grpc::ClientContext> MakeContext(const std::string& token) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(10));
  if (!token.empty()) {
    context->AddMetadata("authorization", "Bearer " + token);
  }
  return context;
}

absl::StatusOr<std::unique_ptr<RawWorker>> RawWorker::Connect(
    const std::vector<std::string>& addresses, const std::string& token) {
  PS_RETURN_IF_ERROR(CheckServerAddresses(addresses));
  std::vector<v1::ClusterInfo> infos(addresses.size());
  for (size_t i = 0; i < addresses.size(); ++i) {
    grpc::Status status =
        v1::ParameterService::NewStub(MakeChannel(addresses[i]))
            ->GetClusterInfo(MakeContext(token).get(),
                             v1::GetClusterInfoRequest(), &infos[i]);
    if (!status.ok()) {
      return absl::Status(
          FromGrpcStatus(status).code(),
          absl::StrCat(addresses[i], ": ", status.error_message()));
    }
  }
  PS_ASSIGN_OR_RETURN(std::vector<size_t> order,
                      CheckCluster(addresses, infos));
  std::vector<std::string> ordered;
  for (size_t i : order) ordered.push_back(addresses[i]);
  return std::make_unique<RawWorker>(ordered, infos[order[0]].block_size(),
                                     token);
}

RawWorker::RawWorker(const std::vector<std::string>& addresses,
                     uint64_t block_size, std::string token)
    : plan_(static_cast<uint32_t>(addresses.size()), block_size),
      token_(std::move(token)) {
  for (const std::string& address : addresses) {
    auto channel = MakeChannel(address);
    parameters_.push_back(v1::ParameterService::NewStub(channel));
    admin_.push_back(v1::AdminService::NewStub(channel));
  }
}

grpc::Status RawWorker::Create(const std::string& name,
                               const std::vector<float>& initial,
                               const v1::OptimizerConfig* optimizer) {
  std::vector<v1::CreateVariableRequest> requests(parameters_.size());
  for (auto& request : requests) {
    request.set_name(name);
    request.add_shape(initial.size());
    if (optimizer != nullptr) *request.mutable_optimizer() = *optimizer;
  }
  for (uint64_t k = 0; k < plan_.NumBlocks(initial.size()); ++k) {
    const FlatRange range = plan_.BlockRange(initial.size(), k);
    v1::Slice* slice = requests[plan_.ShardOf(name, k)].add_initial_values();
    slice->set_variable(name);
    slice->set_offset(range.offset);
    slice->set_length(range.length);
    EncodeValues(
        v1::FLOAT32,
        std::span<const float>(initial.data() + range.offset, range.length),
        slice->mutable_data());
  }
  for (size_t s = 0; s < parameters_.size(); ++s) {
    v1::CreateVariableResponse response;
    grpc::Status status = parameters_[s]->CreateVariable(
        MakeContext(token_).get(), requests[s], &response);
    if (!status.ok()) return status;
  }
  return grpc::Status::OK;
}

grpc::Status RawWorker::Push(const std::string& name,
                             const std::vector<float>& gradient) {
  ++seq_;
  std::vector<v1::PushRequest> requests(parameters_.size());
  for (auto& request : requests) {
    request.set_worker_id("admin-test-worker");
    request.set_seq(seq_);
    request.set_epoch(1);  // a session the shard takes from the push
    request.set_step(seq_);
  }
  for (uint64_t k = 0; k < plan_.NumBlocks(gradient.size()); ++k) {
    const FlatRange range = plan_.BlockRange(gradient.size(), k);
    v1::Slice* slice = requests[plan_.ShardOf(name, k)].add_gradients();
    slice->set_variable(name);
    slice->set_offset(range.offset);
    slice->set_length(range.length);
    EncodeValues(
        v1::FLOAT32,
        std::span<const float>(gradient.data() + range.offset, range.length),
        slice->mutable_data());
  }
  for (size_t s = 0; s < parameters_.size(); ++s) {
    if (requests[s].gradients_size() == 0) continue;
    v1::PushResponse response;
    grpc::Status status =
        parameters_[s]->Push(MakeContext(token_).get(), requests[s], &response);
    if (!status.ok()) return status;
  }
  return grpc::Status::OK;
}

grpc::Status RawWorker::Pull(const std::string& name, uint64_t size,
                             std::vector<float>* values,
                             std::vector<uint64_t>* versions) {
  values->assign(size, 0.0f);
  if (versions != nullptr) versions->assign(plan_.NumBlocks(size), 0);
  std::vector<v1::PullRequest> requests(parameters_.size());
  for (uint64_t k = 0; k < plan_.NumBlocks(size); ++k) {
    const FlatRange range = plan_.BlockRange(size, k);
    v1::Slice* slice = requests[plan_.ShardOf(name, k)].add_slices();
    slice->set_variable(name);
    slice->set_offset(range.offset);
    slice->set_length(range.length);
  }
  for (size_t s = 0; s < parameters_.size(); ++s) {
    if (requests[s].slices_size() == 0) continue;
    v1::PullResponse response;
    grpc::Status status =
        parameters_[s]->Pull(MakeContext(token_).get(), requests[s], &response);
    if (!status.ok()) return status;
    for (const v1::Slice& slice : response.values()) {
      if (slice.offset() + slice.length() > size) {
        return grpc::Status(grpc::StatusCode::INTERNAL, "slice out of range");
      }
      absl::Status decoded = DecodeValues(
          slice.dtype(), slice.data(),
          std::span<float>(values->data() + slice.offset(), slice.length()));
      if (!decoded.ok()) {
        return grpc::Status(grpc::StatusCode::INTERNAL,
                            std::string(decoded.message()));
      }
      if (versions != nullptr) {
        (*versions)[plan_.BlockOf(slice.offset())] = slice.version();
      }
    }
  }
  return grpc::Status::OK;
}

std::vector<grpc::Status> SetOptimizerOnAll(RawWorker& worker,
                                            const std::string& variable,
                                            const v1::OptimizerConfig& config,
                                            bool reset_state,
                                            const std::string& token) {
  v1::SetOptimizerRequest request;
  request.set_variable(variable);
  *request.mutable_config() = config;
  request.set_reset_state(reset_state);
  std::vector<grpc::Status> statuses(worker.num_shards());
  std::vector<std::thread> threads;
  for (int s = 0; s < worker.num_shards(); ++s) {
    threads.emplace_back([&, s] {
      v1::SetOptimizerResponse response;
      statuses[s] = worker.admin(s).SetOptimizer(MakeContext(token).get(),
                                                 request, &response);
    });
  }
  for (auto& t : threads) t.join();
  return statuses;
}

ReferenceVariable::ReferenceVariable(std::vector<float> initial,
                                     uint64_t block_size)
    : block_size_(block_size), values_(std::move(initial)) {
  states_.resize((values_.size() + block_size_ - 1) / block_size_);
}

void ReferenceVariable::Step(const std::vector<float>& gradient) {
  for (size_t k = 0; k < states_.size(); ++k) {
    const size_t offset = k * block_size_;
    const size_t length =
        std::min<size_t>(block_size_, values_.size() - offset);
    optimizer::ApplyUpdate(
        settings_, states_[k],
        std::span<float>(values_.data() + offset, length),
        std::span<const float>(gradient.data() + offset, length), std::nullopt);
  }
}

optimizer::OptimizerSettings Resolve(const v1::OptimizerConfig& config) {
  auto settings = ResolveOptimizerConfig(config);
  EXPECT_TRUE(settings.ok()) << settings.status();
  return settings.ok() ? *settings : optimizer::OptimizerSettings();
}

v1::OptimizerConfig Config(const std::string& text) {
  auto config = ParseOptimizerConfig(text);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : v1::OptimizerConfig();
}

std::vector<float> QuadraticGradient(const std::vector<float>& values) {
  std::vector<float> gradient(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    const float target = 0.05f * static_cast<float>(i) - 1.0f;
    gradient[i] = 2.0f * (values[i] - target);
  }
  return gradient;
}

Certificate MakeCertificate(const TempDir& dir, const std::string& name) {
  Certificate c;
  c.cert_file = dir.path() + "/" + name + ".crt";
  c.key_file = dir.path() + "/" + name + ".key";
  const ProcessResult made =
      RunProcess("openssl", {"req", "-x509", "-newkey", "rsa:2048", "-nodes",
                             "-days", "2", "-subj", "/CN=localhost", "-addext",
                             "subjectAltName=DNS:localhost,IP:127.0.0.1",
                             "-keyout", c.key_file, "-out", c.cert_file});
  EXPECT_EQ(made.exit_code, 0) << made.err;
  std::ifstream file(c.cert_file);
  std::stringstream pem;
  pem << file.rdbuf();
  c.pem = pem.str();
  EXPECT_NE(c.pem.find("BEGIN CERTIFICATE"), std::string::npos);
  return c;
}

ProcessResult RunProcess(const std::string& program,
                         const std::vector<std::string>& args,
                         std::chrono::milliseconds timeout) {
  ProcessResult result;
  int out_pipe[2];
  int err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe failed";
    return result;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], STDERR_FILENO);
  std::vector<std::string> argv_strings = {program};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int spawned = posix_spawnp(&pid, program.c_str(), &actions, nullptr,
                                   argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (spawned != 0) {
    ADD_FAILURE() << "cannot run " << program << ": errno " << spawned;
    close(out_pipe[0]);
    close(err_pipe[0]);
    return result;
  }

  const auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      break;
    }
    if (poll(fds, 2, static_cast<int>(left.count())) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buffer[4096];
      const ssize_t n = read(fds[i].fd, buffer, sizeof(buffer));
      if (n > 0) {
        sinks[i]->append(buffer, n);
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  if (result.timed_out) kill(pid, SIGKILL);
  for (pollfd& fd : fds) {
    if (fd.fd >= 0) close(fd.fd);
  }
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid || (done < 0 && errno != EINTR)) break;
    if (done == 0 && std::chrono::steady_clock::now() > deadline) {
      result.timed_out = true;
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (!result.timed_out && WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  }
  return result;
}

}  // namespace ps::testing

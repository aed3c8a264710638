// A training worker in C++: softmax regression on a synthetic four-class
// problem, trained through ps::Client against a sharded parameter server.
//
// With --servers it joins a running cluster; without, it starts a 2-shard
// cluster in this process (loopback, port 0) so that it runs on its own:
//
//   train_linear                       # its own 2-shard cluster
//   train_linear --servers=127.0.0.1:7000,127.0.0.1:7001 --steps=500
//
// It prints the loss and accuracy as training goes, and at the end
// "loss fell from A to B" when the loss fell.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <Eigen/Core>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "common/cli.h"
#include "common/optimizer_config.h"
#include "server/server.h"

ABSL_FLAG(std::string, servers, "",
          "shards as HOST:PORT,...; empty = start a 2-shard cluster here");
ABSL_FLAG(std::string, token, "", "bearer token, when the shards need one");
ABSL_FLAG(int, steps, 200, "training steps");
ABSL_FLAG(int, batch, 64, "examples per step");
ABSL_FLAG(int, print_every, 20, "print the loss every this many steps");
ABSL_FLAG(std::string, optimizer, "adam {} learning_rate: 0.05",
          "the variables' optimizer, protobuf text (OptimizerConfig)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the synthetic data");

namespace {

constexpr int kFeatures = 20;
constexpr int kClasses = 4;

using Matrix =
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Points around one random centre per class, with overlap.
struct Dataset {
  Matrix x;            // n x kFeatures
  std::vector<int> y;  // n labels
};

Dataset MakeData(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Matrix centres(kClasses, kFeatures);
  for (int i = 0; i < centres.size(); ++i) centres.data()[i] = normal(rng);
  Dataset data{Matrix(n, kFeatures), std::vector<int>(n)};
  for (int i = 0; i < n; ++i) {
    const int label = static_cast<int>(rng() % kClasses);
    data.y[i] = label;
    for (int f = 0; f < kFeatures; ++f) {
      data.x(i, f) = centres(label, f) + 1.5f * normal(rng);
    }
  }
  return data;
}

// Mean cross-entropy of the batch rows [begin, begin + size); fills the
// gradients of W (kFeatures x kClasses) and b (kClasses). Returns accuracy
// through `correct`.
float LossAndGradient(const Dataset& data, int begin, int size, const Matrix& w,
                      const Eigen::RowVectorXf& b, Matrix& grad_w,
                      Eigen::RowVectorXf& grad_b, int* correct) {
  const Matrix x = data.x.middleRows(begin, size);
  Matrix logits = (x * w).rowwise() + b;
  Matrix probs(size, kClasses);
  float loss = 0.0f;
  *correct = 0;
  for (int i = 0; i < size; ++i) {
    const float top = logits.row(i).maxCoeff();
    Eigen::RowVectorXf e = (logits.row(i).array() - top).exp();
    const float sum = e.sum();
    probs.row(i) = e / sum;
    const int label = data.y[begin + i];
    loss -= std::log(probs(i, label));
    int predicted;
    logits.row(i).maxCoeff(&predicted);
    *correct += predicted == label;
    probs(i, label) -= 1.0f;  // d loss / d logits, before the mean
  }
  probs /= static_cast<float>(size);
  grad_w = x.transpose() * probs;
  grad_b = probs.colwise().sum();
  return loss / static_cast<float>(size);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Trains softmax regression through the parameter server.");
  ps::ParseCommandLineWithHelp(argc, argv);
  spdlog::set_default_logger(spdlog::stderr_color_mt("train_linear"));
  ps::TuneMalloc();  // reuse the large buffers of every call

  auto optimizer = ps::ParseOptimizerConfig(absl::GetFlag(FLAGS_optimizer));
  if (!optimizer.ok()) {
    std::fprintf(stderr, "train_linear: --optimizer: %s\n",
                 std::string(optimizer.status().message()).c_str());
    return 2;
  }

  // The cluster: given, or two shards started here.
  std::vector<std::unique_ptr<ps::ParameterServer>> shards;
  ps::ClientOptions options;
  options.token = absl::GetFlag(FLAGS_token);
  if (absl::GetFlag(FLAGS_servers).empty()) {
    for (uint32_t i = 0; i < 2; ++i) {
      ps::ServerOptions server;
      server.shard_index = i;
      server.num_shards = 2;
      server.block_size = 16;  // small, so both variables span both shards
      auto started = ps::ParameterServer::Start(server);
      if (!started.ok()) {
        std::fprintf(stderr, "train_linear: %s\n",
                     std::string(started.status().message()).c_str());
        return 1;
      }
      options.addresses.push_back((*started)->address());
      shards.push_back(*std::move(started));
    }
  } else {
    options.addresses = absl::StrSplit(absl::GetFlag(FLAGS_servers), ',');
  }
  auto client = ps::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "train_linear: %s\n",
                 std::string(client.status().message()).c_str());
    return 1;
  }

  // Small random initial weights, the same in every worker (a creation
  // with other values would be refused).
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.01f);
  Matrix w(kFeatures, kClasses);
  for (int i = 0; i < w.size(); ++i) w.data()[i] = normal(rng);
  Eigen::RowVectorXf b = Eigen::RowVectorXf::Zero(kClasses);
  for (const auto& [name, values, shape] :
       {std::tuple{"linear/w", std::span<const float>(w.data(), w.size()),
                   std::vector<uint64_t>{kFeatures, kClasses}},
        std::tuple{"linear/b", std::span<const float>(b.data(), b.size()),
                   std::vector<uint64_t>{kClasses}}}) {
    auto created = (*client)->CreateVariable(name, shape, values, *optimizer);
    if (!created.ok()) {
      std::fprintf(stderr, "train_linear: %s\n",
                   std::string(created.status().message()).c_str());
      return 1;
    }
  }
  std::vector<ps::NamedValues> pull = {
      {"linear/w", std::span<float>(w.data(), w.size())},
      {"linear/b", std::span<float>(b.data(), b.size())}};
  if (absl::Status status = (*client)->Pull(pull); !status.ok()) {
    std::fprintf(stderr, "train_linear: %s\n",
                 std::string(status.message()).c_str());
    return 1;
  }

  const int batch = absl::GetFlag(FLAGS_batch);
  const int steps = absl::GetFlag(FLAGS_steps);
  const Dataset data = MakeData(batch * 50, absl::GetFlag(FLAGS_seed));
  const int batches = static_cast<int>(data.y.size()) / batch;
  Matrix grad_w(kFeatures, kClasses);
  Eigen::RowVectorXf grad_b(kClasses);
  float first_loss = 0.0f, loss = 0.0f, window_loss = 0.0f;
  int window_correct = 0, window_steps = 0;
  std::printf("%6s  %8s  %8s\n", "step", "loss", "accuracy");
  for (int step = 1; step <= steps; ++step) {
    int correct;
    loss = LossAndGradient(data, ((step - 1) % batches) * batch, batch, w, b,
                           grad_w, grad_b, &correct);
    if (step == 1) first_loss = loss;
    window_loss += loss;
    window_correct += correct;
    ++window_steps;
    ps::PushOptions push;
    push.step = static_cast<uint64_t>(step);
    push.loss = loss;
    std::vector<ps::NamedUpdate> updates = {
        {"linear/w", std::span<const float>(grad_w.data(), grad_w.size()),
         std::span<float>(w.data(), w.size())},
        {"linear/b", std::span<const float>(grad_b.data(), grad_b.size()),
         std::span<float>(b.data(), b.size())}};
    if (absl::Status status = (*client)->PushPull(updates, push);
        !status.ok()) {
      std::fprintf(stderr, "train_linear: step %d: %s\n", step,
                   std::string(status.message()).c_str());
      return 1;
    }
    if (step % absl::GetFlag(FLAGS_print_every) == 0 || step == steps) {
      std::printf("%6d  %8.4f  %7.1f%%\n", step, window_loss / window_steps,
                  100.0 * window_correct / (window_steps * batch));
      std::fflush(stdout);
      window_loss = 0.0f;
      window_correct = 0;
      window_steps = 0;
    }
  }
  if (loss < first_loss) {
    std::printf("loss fell from %.4f to %.4f\n", first_loss, loss);
  } else {
    std::printf("loss did not fall: %.4f at first, %.4f at the end\n",
                first_loss, loss);
  }
  client->reset();
  for (auto& shard : shards) shard->Shutdown().IgnoreError();
  return 0;
}

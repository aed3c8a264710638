// Runs the update rules side by side on one small problem and prints the
// loss of each as training goes, then a summary.
//
// Every rule trains its own copy of the same model from the same start, on
// the same sequence of mini-batches, through the server's own kernels
// (ps::optimizer::ApplyUpdate, the whole model as one block). Configs are
// the text form of ps.v1.OptimizerConfig, resolved as the server resolves
// them, so unset hyper-parameters take the server's (PyTorch's) defaults.
//
// Problems:
//   logistic   logistic regression on synthetic data whose features are
//              correlated and scaled over a range of sqrt(--condition), so
//              that the loss is ill-conditioned; labels are drawn from a
//              known model (the best loss is well above 0). Mini-batches.
//   quadratic  0.5 (x - c)^T A (x - c), A = Q diag(lambda) Q^T with a random
//              rotation Q and eigenvalues spaced log-evenly over
//              [1 / --condition, 1]; exact gradients; the minimum is 0.
//
// The table goes to stdout; logs go to stderr.
#include <Eigen/Core>
#include <Eigen/QR>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/cli.h"
#include "common/optimizer_config.h"
#include "common/optimizer_settings.h"
#include "server/optimizer/update.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, problem, "logistic",
          "the problem to train on: logistic or quadratic");
ABSL_FLAG(std::string, rules, "sgd,momentum,adagrad,rmsprop,adam,eve",
          "comma-separated rules to run, in table order; each takes its "
          "config from the flag of the same name");
ABSL_FLAG(int, steps, 1000, "optimizer steps per rule");
ABSL_FLAG(int, print_every, 100,
          "print a row of losses every this many steps (0: only the summary)");
ABSL_FLAG(int, features, 32, "model size: features (logistic) or dimension");
ABSL_FLAG(int, samples, 8192, "logistic: number of training examples");
ABSL_FLAG(int, batch_size, 128, "logistic: examples per gradient");
ABSL_FLAG(double, condition, 1e3,
          "how ill-conditioned the problem is: the ratio of the largest to "
          "the smallest curvature (quadratic) or of the largest to the "
          "smallest squared feature scale (logistic)");
ABSL_FLAG(uint32_t, seed, 1, "seed for the data, the start and the batches");
ABSL_FLAG(std::string, sgd, "sgd {} learning_rate: 0.1",
          "config of rule sgd (ps.v1.OptimizerConfig text format)");
ABSL_FLAG(std::string, momentum,
          "momentum { momentum: 0.9 } learning_rate: 0.01",
          "config of rule momentum");
ABSL_FLAG(std::string, adagrad, "adagrad {} learning_rate: 0.1",
          "config of rule adagrad");
ABSL_FLAG(std::string, rmsprop, "rmsprop {} learning_rate: 0.003",
          "config of rule rmsprop");
ABSL_FLAG(std::string, adam, "adam {} learning_rate: 0.01",
          "config of rule adam");
ABSL_FLAG(std::string, eve, "eve {} learning_rate: 0.01", "config of rule eve");

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>;
using Vector = Eigen::VectorXf;

// A differentiable objective of one flat parameter vector.
class Problem {
 public:
  virtual ~Problem() = default;
  virtual int size() const = 0;
  // The loss over all the data at x.
  virtual double Loss(const Vector& x) const = 0;
  // The gradient for step `step` (1-based) into `grad`; returns the loss it
  // was computed with (the mini-batch loss where there are batches).
  virtual double Gradient(const Vector& x, int step, Vector& grad) const = 0;
  // A second number worth showing next to the loss, and its column name.
  virtual std::optional<double> Score(const Vector& x) const = 0;
  virtual const char* score_name() const = 0;
};

// Mean logistic loss over examples with labels in {0, 1}; the last column
// of `features` is the bias input (1).
class LogisticProblem : public Problem {
 public:
  LogisticProblem(int samples, int features, int batch_size, double condition,
                  uint32_t seed)
      : batch_size_(std::min(batch_size, samples)), seed_(seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    // Feature j has scale s_j, log-spaced so that max s^2 / min s^2 is the
    // condition; every feature shares a common factor (correlation 0.5).
    Vector scale(features);
    for (int j = 0; j < features; ++j) {
      const double frac = features > 1 ? double(j) / (features - 1) : 0.0;
      scale[j] = static_cast<float>(std::pow(condition, 0.5 * (frac - 0.5)));
    }
    Vector true_weights(features);
    for (int j = 0; j < features; ++j) true_weights[j] = normal(gen);
    const float margin_scale = 3.0f / std::sqrt(static_cast<float>(features));
    x_.resize(samples, features + 1);
    y_.resize(samples);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    for (int i = 0; i < samples; ++i) {
      const float common = normal(gen);
      float logit = 0.5f;  // the true bias
      for (int j = 0; j < features; ++j) {
        const float z = std::sqrt(0.5f) * (common + normal(gen));
        logit += margin_scale * true_weights[j] * z;
        x_(i, j) = scale[j] * z;
      }
      x_(i, features) = 1.0f;
      y_[i] = uniform(gen) < 1.0f / (1.0f + std::exp(-logit)) ? 1.0f : 0.0f;
    }
  }

  int size() const override { return static_cast<int>(x_.cols()); }

  double Loss(const Vector& w) const override { return MeanLoss(x_ * w, y_); }

  double Gradient(const Vector& w, int step, Vector& grad) const override {
    // The batch for a step depends only on the seed and the step, so every
    // rule sees the same sequence.
    std::mt19937 gen(seed_ * 1000003u + static_cast<uint32_t>(step));
    std::uniform_int_distribution<int> pick(0, static_cast<int>(x_.rows()) - 1);
    Matrix xb(batch_size_, x_.cols());
    Vector yb(batch_size_);
    for (int i = 0; i < batch_size_; ++i) {
      const int row = pick(gen);
      xb.row(i) = x_.row(row);
      yb[i] = y_[row];
    }
    const Vector logits = xb * w;
    const Vector residual =
        (1.0f / (1.0f + (-logits.array()).exp())).matrix() - yb;
    grad = xb.transpose() * residual / static_cast<float>(batch_size_);
    return MeanLoss(logits, yb);
  }

  std::optional<double> Score(const Vector& w) const override {
    const Vector logits = x_ * w;
    int correct = 0;
    for (int i = 0; i < logits.size(); ++i) {
      correct += (logits[i] > 0) == (y_[i] > 0.5f);
    }
    return static_cast<double>(correct) / static_cast<double>(logits.size());
  }
  const char* score_name() const override { return "accuracy"; }

 private:
  // mean(log(1 + exp(-s z))) with s = +1 for label 1 and -1 for label 0,
  // written so that it neither overflows nor loses small values.
  static double MeanLoss(const Vector& logits, const Vector& labels) {
    double sum = 0.0;
    for (int i = 0; i < logits.size(); ++i) {
      const double z = labels[i] > 0.5f ? logits[i] : -logits[i];
      sum += z > 0 ? std::log1p(std::exp(-z)) : -z + std::log1p(std::exp(z));
    }
    return sum / static_cast<double>(logits.size());
  }

  Matrix x_;
  Vector y_;
  int batch_size_;
  uint32_t seed_;
};

// 0.5 (x - c)^T A (x - c) with A symmetric positive definite.
class QuadraticProblem : public Problem {
 public:
  QuadraticProblem(int dimension, double condition, uint32_t seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    Matrix random(dimension, dimension);
    for (int i = 0; i < dimension; ++i) {
      for (int j = 0; j < dimension; ++j) random(i, j) = normal(gen);
    }
    const Matrix q = Eigen::HouseholderQR<Matrix>(random).householderQ();
    Vector eigenvalues(dimension);
    for (int i = 0; i < dimension; ++i) {
      const double frac = dimension > 1 ? double(i) / (dimension - 1) : 0.0;
      eigenvalues[i] = static_cast<float>(std::pow(condition, -frac));
    }
    a_ = q * eigenvalues.asDiagonal() * q.transpose();
    center_.resize(dimension);
    for (int i = 0; i < dimension; ++i) center_[i] = normal(gen);
  }

  int size() const override { return static_cast<int>(center_.size()); }

  double Loss(const Vector& x) const override {
    const Vector d = x - center_;
    return 0.5 * static_cast<double>(d.dot(a_ * d));
  }

  double Gradient(const Vector& x, int /*step*/, Vector& grad) const override {
    grad = a_ * (x - center_);
    return Loss(x);
  }

  std::optional<double> Score(const Vector& x) const override {
    return static_cast<double>((x - center_).norm());
  }
  const char* score_name() const override { return "dist to min"; }

 private:
  Matrix a_;
  Vector center_;
};

// One rule's run: its settings, its copy of the model and its state.
struct Run {
  std::string name;
  std::string config_text;
  ps::optimizer::OptimizerSettings settings;
  ps::optimizer::BlockOptimizerState state;
  Vector params;
  Vector grad;
  double seconds = 0.0;  // time spent computing gradients and updating
  int steps = 0;
  bool failed = false;
};

std::string ConfigFlag(const std::string& rule) {
  if (rule == "sgd") return absl::GetFlag(FLAGS_sgd);
  if (rule == "momentum") return absl::GetFlag(FLAGS_momentum);
  if (rule == "adagrad") return absl::GetFlag(FLAGS_adagrad);
  if (rule == "rmsprop") return absl::GetFlag(FLAGS_rmsprop);
  if (rule == "adam") return absl::GetFlag(FLAGS_adam);
  if (rule == "eve") return absl::GetFlag(FLAGS_eve);
  return "";
}

// One optimizer step of `run`; false (logged) if the server would refuse it.
bool Step(const Problem& problem, int step, Run& run) {
  const auto start = std::chrono::steady_clock::now();
  const double loss = problem.Gradient(run.params, step, run.grad);
  absl::Status status = ps::optimizer::CheckUpdate(run.settings, run.state,
                                                   std::optional<double>(loss));
  if (!status.ok()) {
    spdlog::error("{}: step {} refused: {}", run.name, step,
                  std::string(status.message()));
    return false;
  }
  ps::optimizer::ApplyUpdate(
      run.settings, run.state,
      std::span<float>(run.params.data(), run.params.size()),
      std::span<const float>(run.grad.data(), run.grad.size()), loss);
  run.seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  ++run.steps;
  return true;
}

void PrintHeader(const std::vector<Run>& runs) {
  std::printf("%6s", "step");
  for (const Run& run : runs) std::printf(" %12s", run.name.c_str());
  std::printf("\n");
}

void PrintRow(const Problem& problem, int step, const std::vector<Run>& runs) {
  std::printf("%6d", step);
  for (const Run& run : runs) {
    std::printf(" %12.6g", problem.Loss(run.params));
  }
  std::printf("\n");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Trains one small model with each update rule side by side through "
      "the parameter server's kernels and prints the loss as it goes.\n"
      "Usage: compare_rules [--problem=logistic|quadratic] [--steps=N] "
      "[--rules=adam,eve] [--adam='adam { beta1: 0.8 } learning_rate: "
      "0.02'] ...");
  ps::ParseCommandLineWithHelp(argc, argv);
  spdlog::set_default_logger(spdlog::stderr_color_mt("compare_rules"));

  const std::string problem_name = absl::GetFlag(FLAGS_problem);
  const int steps = absl::GetFlag(FLAGS_steps);
  const int print_every = absl::GetFlag(FLAGS_print_every);
  const int features = absl::GetFlag(FLAGS_features);
  if (steps < 1 || print_every < 0 || features < 1 ||
      absl::GetFlag(FLAGS_samples) < 1 || absl::GetFlag(FLAGS_batch_size) < 1 ||
      !(absl::GetFlag(FLAGS_condition) >= 1)) {
    spdlog::error(
        "--steps, --features, --samples and --batch_size must be >= 1, "
        "--print_every >= 0 and --condition >= 1");
    return 2;
  }

  std::unique_ptr<Problem> problem;
  if (problem_name == "logistic") {
    problem = std::make_unique<LogisticProblem>(
        absl::GetFlag(FLAGS_samples), features, absl::GetFlag(FLAGS_batch_size),
        absl::GetFlag(FLAGS_condition), absl::GetFlag(FLAGS_seed));
  } else if (problem_name == "quadratic") {
    problem = std::make_unique<QuadraticProblem>(
        features, absl::GetFlag(FLAGS_condition), absl::GetFlag(FLAGS_seed));
  } else {
    spdlog::error("--problem={} is not one of logistic, quadratic",
                  problem_name);
    return 2;
  }

  std::vector<Run> runs;
  for (absl::string_view rule :
       absl::StrSplit(absl::GetFlag(FLAGS_rules), ',', absl::SkipEmpty())) {
    Run run;
    run.name = std::string(rule);
    run.config_text = ConfigFlag(run.name);
    if (run.config_text.empty()) {
      spdlog::error(
          "--rules names {}; the rules are sgd, momentum, adagrad, rmsprop, "
          "adam and eve",
          run.name);
      return 2;
    }
    absl::StatusOr<ps::v1::OptimizerConfig> config =
        ps::ParseOptimizerConfig(run.config_text);
    absl::StatusOr<ps::optimizer::OptimizerSettings> settings =
        config.ok()
            ? ps::ResolveOptimizerConfig(*config)
            : absl::StatusOr<ps::optimizer::OptimizerSettings>(config.status());
    if (!settings.ok()) {
      spdlog::error("--{}='{}': {}", run.name, run.config_text,
                    std::string(settings.status().message()));
      return 2;
    }
    run.config_text = ps::OptimizerConfigToText(*config);
    run.settings = *settings;
    run.params = Vector::Zero(problem->size());
    runs.push_back(std::move(run));
  }
  if (runs.empty()) {
    spdlog::error("--rules names no rule");
    return 2;
  }

  spdlog::info("problem {} with {} parameters, {} steps; rules: {}",
               problem_name, problem->size(), steps,
               absl::StrJoin(runs, "; ", [](std::string* out, const Run& run) {
                 out->append(run.name + ": " + run.config_text);
               }));

  if (print_every > 0) {
    std::printf("loss (%s, all data)\n", problem_name.c_str());
    PrintHeader(runs);
    PrintRow(*problem, 0, runs);
  }
  for (int step = 1; step <= steps; ++step) {
    for (Run& run : runs) {
      if (!run.failed && !Step(*problem, step, run)) run.failed = true;
    }
    if (print_every > 0 && (step % print_every == 0 || step == steps)) {
      PrintRow(*problem, step, runs);
    }
  }

  // Best first.
  std::vector<const Run*> order;
  for (const Run& run : runs) order.push_back(&run);
  std::stable_sort(order.begin(), order.end(), [&](const Run* a, const Run* b) {
    return problem->Loss(a->params) < problem->Loss(b->params);
  });
  std::printf("\n%-10s %12s %12s %7s %10s  %s\n", "rule", "final loss",
              problem->score_name(), "steps", "time (ms)", "config");
  for (const Run* run : order) {
    std::printf("%-10s %12.6g %12.4g %7d %10.2f  %s%s\n", run->name.c_str(),
                problem->Loss(run->params), *problem->Score(run->params),
                run->steps, 1e3 * run->seconds, run->config_text.c_str(),
                run->failed ? "  (stopped: refused)" : "");
  }
  return 0;
}

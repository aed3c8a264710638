// Checks every update rule against trajectories from torch.optim 1.13 (and,
// for Eve, a numpy reading of the paper) written by gen_golden.py.
//
// Each case runs ApplyUpdate step by step from the same initial values and
// gradients as the generator and compares the values at the recorded steps.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "common/optimizer_config.h"
#include "common/optimizer_settings.h"
#include "common/rule_catalog.h"
#include "server/optimizer/update.h"

#ifndef PS_GOLDEN_DATA
#error "PS_GOLDEN_DATA must name the golden trajectory file"
#endif

namespace ps::optimizer {
namespace {

// The inputs shared by several cases.
struct GoldenInputs {
  std::vector<float> initial;
  std::vector<double> losses;             // per step
  std::vector<std::vector<float>> grads;  // per step
};

struct GoldenCase {
  std::string name;
  std::string inputs;
  std::string config;                             // protobuf text format
  std::map<uint64_t, std::vector<float>> expect;  // step -> values
};

// Keeps failure messages to the case's name instead of a byte dump.
void PrintTo(const GoldenCase& golden, std::ostream* os) {
  *os << golden.name << " (" << golden.config << ")";
}

struct GoldenFile {
  std::map<std::string, GoldenInputs> inputs;
  std::vector<GoldenCase> cases;
  std::string error;  // empty when the file was read
};

std::vector<float> ReadFloats(std::istringstream& in) {
  std::vector<float> out;
  std::string token;
  while (in >> token) out.push_back(std::strtof(token.c_str(), nullptr));
  return out;
}

GoldenFile ReadGoldenFile(const std::string& path) {
  GoldenFile file;
  std::ifstream in(path);
  if (!in) {
    file.error = "cannot open " + path;
    return file;
  }
  std::string line;
  GoldenInputs* inputs = nullptr;
  GoldenCase* current = nullptr;
  int line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string keyword;
    fields >> keyword;
    if (keyword == "inputs" && current == nullptr) {
      std::string name;
      fields >> name;
      inputs = &file.inputs[name];
    } else if (keyword == "initial" && inputs != nullptr) {
      inputs->initial = ReadFloats(fields);
    } else if (keyword == "step" && inputs != nullptr) {
      uint64_t t = 0;
      std::string loss;
      fields >> t >> loss;
      inputs->losses.push_back(std::strtod(loss.c_str(), nullptr));
      inputs->grads.push_back(ReadFloats(fields));
    } else if (keyword == "case") {
      current = &file.cases.emplace_back();
      fields >> current->name;
    } else if (keyword == "inputs" && current != nullptr) {
      fields >> current->inputs;
    } else if (keyword == "config" && current != nullptr) {
      current->config = line.substr(line.find(' ') + 1);
    } else if (keyword == "expect" && current != nullptr) {
      uint64_t t = 0;
      fields >> t;
      current->expect[t] = ReadFloats(fields);
    } else if (keyword == "end") {
      inputs = nullptr;
      current = nullptr;
    } else {
      file.error = path + ":" + std::to_string(line_number) +
                   ": unexpected line: " + line.substr(0, 80);
      return file;
    }
  }
  return file;
}

const GoldenFile& Golden() {
  static const GoldenFile* file =
      new GoldenFile(ReadGoldenFile(PS_GOLDEN_DATA));
  return *file;
}

std::vector<GoldenCase> GoldenCases() { return Golden().cases; }

// Float32 rounding: the kernels and torch both round every operation to
// float32, but not in the same order (torch's CPU kernels fuse some
// multiply-adds, ours leave that to the compiler), so the values drift apart
// by a few ulps over 32 steps. Those ulps are of the largest magnitude a
// value has had so far, not of its current one: a value that walked from 0.5
// to 0.001 carries the rounding of the steps it took near 0.5. So the bound
// is 2e-6 (about 16 ulps) relative to that magnitude, plus 1e-8 for values
// that never left zero.
constexpr double kRelativeTolerance = 2e-6;
constexpr double kAbsoluteTolerance = 1e-8;

double Allowed(double magnitude) {
  return kRelativeTolerance * magnitude + kAbsoluteTolerance;
}

// The largest deviation seen per rule, as a fraction of the tolerance.
std::map<std::string, double>& WorstByRule() {
  static auto* worst = new std::map<std::string, double>;
  return *worst;
}

class GoldenTrajectoryTest : public ::testing::TestWithParam<GoldenCase> {
 protected:
  static void TearDownTestSuite() {
    for (const auto& [rule, worst] : WorstByRule()) {
      std::printf("[ golden   ] %-8s max deviation %.3f of the tolerance\n",
                  rule.c_str(), worst);
    }
  }
};

TEST_P(GoldenTrajectoryTest, MatchesReference) {
  const GoldenCase& golden = GetParam();
  const auto inputs_it = Golden().inputs.find(golden.inputs);
  ASSERT_NE(inputs_it, Golden().inputs.end()) << golden.inputs;
  const GoldenInputs& inputs = inputs_it->second;
  ASSERT_FALSE(golden.expect.empty());

  const auto config = ParseOptimizerConfig(golden.config);
  ASSERT_TRUE(config.ok()) << config.status();
  const auto settings = ResolveOptimizerConfig(*config);
  ASSERT_TRUE(settings.ok()) << settings.status();
  const std::string rule(RuleName(settings->rule));

  std::vector<float> values = inputs.initial;
  // Per value: the largest |value| seen so far in the reference trajectory.
  std::vector<double> magnitude(values.begin(), values.end());
  for (double& m : magnitude) m = std::abs(m);
  BlockOptimizerState state;
  double worst = 0.0;
  const uint64_t last_step = golden.expect.rbegin()->first;
  ASSERT_LE(last_step, inputs.grads.size());
  for (uint64_t t = 1; t <= last_step; ++t) {
    const std::vector<float>& grad = inputs.grads[t - 1];
    ASSERT_EQ(grad.size(), values.size());
    const double loss = inputs.losses[t - 1];
    ASSERT_TRUE(CheckUpdate(*settings, state, loss).ok()) << "step " << t;
    ApplyUpdate(*settings, state, values, grad, loss);
    ASSERT_EQ(state.step, t);
    const auto expect_it = golden.expect.find(t);
    if (expect_it == golden.expect.end()) continue;
    const std::vector<float>& expected = expect_it->second;
    ASSERT_EQ(expected.size(), values.size()) << "step " << t;
    for (size_t i = 0; i < values.size(); ++i) {
      magnitude[i] = std::max(magnitude[i], std::abs(double{expected[i]}));
      const double deviation =
          std::abs(static_cast<double>(values[i]) - expected[i]);
      worst = std::max(worst, deviation / Allowed(magnitude[i]));
      ASSERT_LE(deviation, Allowed(magnitude[i]))
          << golden.name << " (" << golden.config << "): step " << t
          << ", value " << i << " is " << values[i] << ", expected "
          << expected[i];
    }
  }
  double& rule_worst = WorstByRule()[rule];
  rule_worst = std::max(rule_worst, worst);
}

INSTANTIATE_TEST_SUITE_P(Torch, GoldenTrajectoryTest,
                         ::testing::ValuesIn(GoldenCases()),
                         [](const ::testing::TestParamInfo<GoldenCase>& info) {
                           return info.param.name;
                         });

TEST(GoldenFileTest, CoversEveryRuleAndSchedule) {
  const GoldenFile& file = Golden();
  ASSERT_EQ(file.error, "");
  EXPECT_GE(file.cases.size(), 90u);
  std::map<std::string, int> by_rule;
  std::map<Schedule::Kind, int> by_schedule;
  int warmup = 0, clipped = 0, decayed = 0;
  for (const GoldenCase& golden : file.cases) {
    const auto config = ParseOptimizerConfig(golden.config);
    ASSERT_TRUE(config.ok()) << golden.name << ": " << config.status();
    const auto settings = ResolveOptimizerConfig(*config);
    ASSERT_TRUE(settings.ok()) << golden.name;
    ++by_rule[std::string(RuleName(settings->rule))];
    ++by_schedule[settings->schedule.kind];
    warmup += settings->schedule.warmup_steps > 0;
    clipped += settings->clip_norm.has_value();
    decayed += settings->weight_decay > 0;
    EXPECT_GE(golden.expect.rbegin()->first, 30u) << golden.name;
  }
  EXPECT_THAT(by_rule, ::testing::SizeIs(6));
  EXPECT_THAT(by_schedule, ::testing::SizeIs(4));
  EXPECT_GT(warmup, 0);
  EXPECT_GT(clipped, 0);
  EXPECT_GT(decayed, 0);
  for (const auto& [name, inputs] : file.inputs) {
    EXPECT_EQ(inputs.initial.size() % 2, 1u) << name << ": use an odd size";
    EXPECT_GE(inputs.grads.size(), 30u) << name;
  }
}

}  // namespace
}  // namespace ps::optimizer

// Test helpers shared by the kernel tests: the common starting values and
// gradients, a float-vs-double matcher, and a loop that runs the first
// steps of a rule through ApplyUpdate.
#ifndef PS_SERVER_OPTIMIZER_TEST_UTIL_H_
#define PS_SERVER_OPTIMIZER_TEST_UTIL_H_

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <tuple>
#include <vector>

#include "common/optimizer_settings.h"
#include "server/optimizer/kernel_util.h"
#include "server/optimizer/simd.h"
#include "server/optimizer/update.h"

namespace ps::optimizer {

// Checks that every instruction set gives the baseline's numbers bit for
// bit, for every option of a rule, at every alignment of the arrays and
// with a length that leaves a partial packet. `apply(simd, base, n,
// option)` runs three steps of the rule with option number `option` (of
// `num_options`) on `num_arrays` arrays of n values side by side at base:
// the parameters, then its state (filled with non-negative values), then
// the gradient. Skips (GTEST_SKIP) where only the baseline runs; call it
// last in a test.
template <typename Apply>
void ExpectEverySimdGivesTheBaselinesBits(int num_arrays, int num_options,
                                          Apply apply) {
  if (!SimdSupported(Simd::kAvx)) {
    GTEST_SKIP() << "this build or CPU runs only the baseline";
  }
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  // Of odd length, so that each array starts at another alignment.
  const Eigen::Index n = 3 * kChunk + 45;
  const size_t size = static_cast<size_t>(num_arrays * n);
  for (int shift = 0; shift < 4; ++shift) {
    for (int option = 0; option < num_options; ++option) {
      std::vector<float> start(size);
      for (float& x : start) x = normal(rng) * std::exp(normal(rng) * 3);
      for (size_t i = n; i < size - n; ++i) start[i] = std::abs(start[i]);
      std::vector<float> baseline(size + 16), avx(size + 16);
      std::copy(start.begin(), start.end(), baseline.begin() + shift);
      std::copy(start.begin(), start.end(), avx.begin() + shift);
      apply(Simd::kBaseline, baseline.data() + shift, n, option);
      apply(Simd::kAvx, avx.data() + shift, n, option);
      ASSERT_EQ(0, std::memcmp(baseline.data(), avx.data(),
                               baseline.size() * sizeof(float)))
          << "shift " << shift << " option " << option;
      ASSERT_FALSE(std::equal(start.begin(), start.begin() + n,
                              baseline.begin() + shift))
          << "the values did not move";
    }
  }
}

// p0 = (1, -2, 0.5), g1 = (0.5, 1, -2), g2 = (1, -1, 0), g3 = (-0.5, 2, 1).
inline const std::vector<float> kInitial = {1.0f, -2.0f, 0.5f};
inline const std::vector<std::vector<float>> kGrads = {
    {0.5f, 1.0f, -2.0f}, {1.0f, -1.0f, 0.0f}, {-0.5f, 2.0f, 1.0f}};

// |actual - expected| <= 1e-6 * max(1, |expected|): a few float32 roundings.
// For Pointwise over (float, double) pairs.
MATCHER(FloatNearDouble, "") {
  const double actual = std::get<0>(arg);
  const double expected = std::get<1>(arg);
  *result_listener << "differs by " << actual - expected;
  return std::abs(actual - expected) <=
         1e-6 * std::max(1.0, std::abs(expected));
}

// `rule` at learning rate `lr`, everything else at its default.
inline OptimizerSettings Settings(RuleParams rule, double lr,
                                  double weight_decay = 0.0) {
  OptimizerSettings settings;
  settings.rule = rule;
  settings.learning_rate = lr;
  settings.weight_decay = weight_decay;
  return settings;
}

struct Trajectory {
  std::vector<std::vector<float>> values;  // after each step
  BlockOptimizerState state;               // after the last step
};

// One update from kInitial per gradient of `grads`, with no loss.
inline Trajectory RunSteps(const OptimizerSettings& settings,
                           std::span<const std::vector<float>> grads) {
  Trajectory out;
  std::vector<float> values = kInitial;
  for (const std::vector<float>& grad : grads) {
    ApplyUpdate(settings, out.state, values, grad, std::nullopt);
    out.values.push_back(values);
  }
  return out;
}

// The first `steps` updates from kInitial, with g1, g2, ... .
// REQUIRES: 0 <= steps <= kGrads.size().
inline Trajectory RunSteps(const OptimizerSettings& settings, int steps) {
  return RunSteps(settings, std::span(kGrads).first(steps));
}

}  // namespace ps::optimizer

#endif  // PS_SERVER_OPTIMIZER_TEST_UTIL_H_

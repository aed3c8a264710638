// SparseAdamStep: torch.optim.SparseAdam's numbers on one row, the same
// bits on every instruction set, and the finite check in every lane.
// (Through real shards against torch itself: tests/golden's table
// trajectories and client/python/tests/test_tables.py.)
#include "server/optimizer/sparse_adam.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "server/optimizer/test_util.h"

namespace ps::optimizer {
namespace {

using ::testing::Pointwise;

// torch's sparse_adam for one value over `grads`, in double.
std::vector<double> SparseAdamInDouble(double p, const AdamParams& adam,
                                       double lr,
                                       const std::vector<double>& grads) {
  std::vector<double> after;
  double m = 0, v = 0;
  for (size_t t = 1; t <= grads.size(); ++t) {
    const double g = grads[t - 1];
    m += (g - m) * (1 - adam.beta1);
    v += (g * g - v) * (1 - adam.beta2);
    const double bc1 = 1 - std::pow(adam.beta1, static_cast<double>(t));
    const double bc2 = 1 - std::pow(adam.beta2, static_cast<double>(t));
    p -= lr * std::sqrt(bc2) / bc1 * m / (std::sqrt(v) + adam.eps);
    after.push_back(p);
  }
  return after;
}

TEST(SparseAdamTest, FollowsTorchsSparseAdamOverThreeSteps) {
  AdamParams adam;
  adam.beta1 = 0.8;
  adam.beta2 = 0.99;
  adam.eps = 1e-3;
  const OptimizerSettings settings = Settings(adam, 0.1);
  // One row of 19 values (two packets of eight and a tail) per Simd.
  const size_t n = 19;
  for (Simd simd : {Simd::kBaseline, Simd::kAvx}) {
    if (!SimdSupported(simd)) continue;
    std::vector<float> values(n), m(n), v(n);
    std::vector<std::vector<double>> grads(n);
    for (size_t i = 0; i < n; ++i) {
      values[i] = kInitial[i % 3] + static_cast<float>(i);
      for (const std::vector<float>& g : kGrads) grads[i].push_back(g[i % 3]);
    }
    const std::vector<float> start = values;
    for (uint64_t step = 0; step < kGrads.size(); ++step) {
      std::vector<float> grad(n);
      for (size_t i = 0; i < n; ++i) grad[i] = kGrads[step][i % 3];
      EXPECT_TRUE(SparseAdamStep(settings, step, simd)
                      .Row(values.data(), m.data(), v.data(), grad.data(), n));
    }
    std::vector<double> expected;
    for (size_t i = 0; i < n; ++i) {
      expected.push_back(
          SparseAdamInDouble(start[i], adam, 0.1, grads[i]).back());
    }
    EXPECT_THAT(values, Pointwise(FloatNearDouble(), expected))
        << "simd " << static_cast<int>(simd);
  }
}

TEST(SparseAdamTest, EverySimdGivesTheBaselinesBits) {
  ExpectEverySimdGivesTheBaselinesBits(
      4, 2, [](Simd simd, float* base, Eigen::Index n, int option) {
        AdamParams adam;
        if (option == 1) {
          adam.beta1 = 0.5;
          adam.beta2 = 0.9;
          adam.eps = 1e-2;
        }
        const OptimizerSettings settings = Settings(adam, 0.05);
        const size_t size = static_cast<size_t>(n);
        for (uint64_t step = 0; step < 3; ++step) {
          SparseAdamStep(settings, step, simd)
              .Row(base, base + size, base + 2 * size, base + 3 * size, size);
        }
      });
}

TEST(SparseAdamTest, ANonFiniteValueInAnyLaneIsReported) {
  const OptimizerSettings settings = Settings(AdamParams{}, 0.1);
  const size_t n = 21;  // two packets of eight and a tail of five
  for (Simd simd : {Simd::kBaseline, Simd::kAvx}) {
    if (!SimdSupported(simd)) continue;
    for (size_t bad = 0; bad < n; ++bad) {
      for (float poison : {std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::quiet_NaN()}) {
        std::vector<float> values(n, 1.0f), m(n), v(n), grad(n, 0.5f);
        values[bad] = poison;
        EXPECT_FALSE(
            SparseAdamStep(settings, 0, simd)
                .Row(values.data(), m.data(), v.data(), grad.data(), n))
            << "simd " << static_cast<int>(simd) << " value " << bad;
      }
      std::vector<float> values(n, 1.0f), m(n), v(n), grad(n, 0.5f);
      EXPECT_TRUE(SparseAdamStep(settings, 0, simd)
                      .Row(values.data(), m.data(), v.data(), grad.data(), n));
    }
  }
}

TEST(SparseAdamTest, AppliesOnlyToPlainAdam) {
  EXPECT_TRUE(SparseAdamStep::Applies(Settings(AdamParams{}, 0.1)));
  AdamParams amsgrad;
  amsgrad.amsgrad = true;
  EXPECT_FALSE(SparseAdamStep::Applies(Settings(amsgrad, 0.1)));
  AdamParams adamw;
  adamw.decoupled_weight_decay = true;
  EXPECT_FALSE(SparseAdamStep::Applies(Settings(adamw, 0.1)));
  EXPECT_FALSE(SparseAdamStep::Applies(Settings(AdamParams{}, 0.1, 0.01)));
  OptimizerSettings clipped = Settings(AdamParams{}, 0.1);
  clipped.clip_norm = 1.0;
  EXPECT_FALSE(SparseAdamStep::Applies(clipped));
  EXPECT_FALSE(SparseAdamStep::Applies(Settings(SgdParams{}, 0.1)));
}

}  // namespace
}  // namespace ps::optimizer

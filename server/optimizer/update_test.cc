// The plumbing around the kernels: refusals, clipping, weight decay, the
// schedule's step counter, slots, and chunked blocks.

#include "server/optimizer/update.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/optimizer_settings.h"
#include "common/rule_catalog.h"
#include "server/optimizer/kernel_util.h"
#include "server/optimizer/test_util.h"

namespace ps::optimizer {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pointwise;
using ::testing::SizeIs;

const std::vector<float> kGrad = {0.5f, 1.0f, -2.0f};  // norm sqrt(5.25)

bool SameState(const BlockOptimizerState& a, const BlockOptimizerState& b) {
  return a.step == b.step && a.momentum == b.momentum &&
         a.square_avg == b.square_avg && a.grad_avg == b.grad_avg &&
         a.max_square_avg == b.max_square_avg && a.eve.d == b.eve.d &&
         a.eve.f_hat == b.eve.f_hat && a.eve.started == b.eve.started;
}

TEST(CheckUpdateTest, RulesOtherThanEveNeedNoLoss) {
  const RuleParams rules[] = {SgdParams{}, MomentumParams{}, AdagradParams{},
                              RmsPropParams{}, AdamParams{}};
  for (const RuleParams& rule : rules) {
    const OptimizerSettings settings = Settings(rule, 0.1);
    EXPECT_TRUE(CheckUpdate(settings, {}, std::nullopt).ok()) << RuleName(rule);
    EXPECT_TRUE(
        CheckUpdate(settings, {}, std::numeric_limits<double>::quiet_NaN())
            .ok())
        << RuleName(rule);
  }
}

TEST(CheckUpdateTest, EveRefusesAMissingLoss) {
  const absl::Status status =
      CheckUpdate(Settings(EveParams{}, 0.1), {}, std::nullopt);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("loss"));
}

TEST(CheckUpdateTest, EveRefusesANonFiniteLoss) {
  const OptimizerSettings settings = Settings(EveParams{}, 0.1);
  for (double loss : {std::numeric_limits<double>::quiet_NaN(),
                      std::numeric_limits<double>::infinity(),
                      -std::numeric_limits<double>::infinity()}) {
    const absl::Status status = CheckUpdate(settings, {}, loss);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << loss;
    EXPECT_THAT(status.message(), HasSubstr("not finite")) << loss;
  }
}

TEST(CheckUpdateTest, EveRefusesALossBelowTheFloor) {
  OptimizerSettings settings = Settings(EveParams{.loss_floor = 2.0}, 0.1);
  BlockOptimizerState started;
  started.eve.started = true;
  started.eve.f_hat = 1.0;
  for (const BlockOptimizerState& state : {BlockOptimizerState{}, started}) {
    const absl::Status status = CheckUpdate(settings, state, 1.5);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), AllOf(HasSubstr("loss_floor"),
                                        HasSubstr("1.5"), HasSubstr("2")));
  }
  settings.rule = EveParams{};  // floor 0
  EXPECT_EQ(CheckUpdate(settings, {}, -1e-9).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CheckUpdateTest, EveRefusesAFirstLossAtTheFloorOnly) {
  for (double floor : {0.0, 2.5, -3.0}) {
    const OptimizerSettings settings =
        Settings(EveParams{.loss_floor = floor}, 0.1);
    const absl::Status status = CheckUpdate(settings, {}, floor);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << floor;
    EXPECT_THAT(status.message(), HasSubstr("first loss")) << floor;
    EXPECT_TRUE(CheckUpdate(settings, {}, floor + 0.5).ok()) << floor;
    // Once f_hat is set, a loss at the floor is a valid (f = 0) update.
    BlockOptimizerState started;
    started.step = 1;
    started.eve.started = true;
    started.eve.f_hat = 0.5;
    EXPECT_TRUE(CheckUpdate(settings, started, floor).ok()) << floor;
  }
}

TEST(CheckUpdateTest, ARefusedEveUpdateChangesNothing) {
  // The store calls ApplyUpdate only after CheckUpdate said OK. A run with
  // refused pushes in between ends where a run without them does.
  const OptimizerSettings settings = Settings(EveParams{}, 0.1);
  const std::vector<float> grad2 = {1.0f, -1.0f, 0.0f};

  std::vector<float> clean_values = kInitial;
  BlockOptimizerState clean;
  ApplyUpdate(settings, clean, clean_values, kGrad, 2.0);
  ApplyUpdate(settings, clean, clean_values, grad2, 3.0);

  std::vector<float> values = kInitial;
  BlockOptimizerState state;
  const auto push = [&](std::span<const float> grad,
                        std::optional<double> loss) {
    const absl::Status status = CheckUpdate(settings, state, loss);
    if (status.ok()) ApplyUpdate(settings, state, values, grad, loss);
    return status;
  };
  EXPECT_FALSE(push(kGrad, 0.0).ok());  // first loss at the floor
  EXPECT_EQ(values, kInitial);
  EXPECT_TRUE(SameState(state, BlockOptimizerState{}));
  ASSERT_TRUE(push(kGrad, 2.0).ok());
  const BlockOptimizerState after_first = state;
  const std::vector<float> values_after_first = values;
  EXPECT_FALSE(push(grad2, std::nullopt).ok());
  EXPECT_FALSE(push(grad2, -1.0).ok());
  EXPECT_FALSE(push(grad2, std::numeric_limits<double>::infinity()).ok());
  EXPECT_TRUE(SameState(state, after_first));
  EXPECT_EQ(values, values_after_first);
  ASSERT_TRUE(push(grad2, 3.0).ok());
  EXPECT_TRUE(SameState(state, clean));
  EXPECT_EQ(values, clean_values);
}

TEST(ApplyUpdateTest, AdvancesTheStepAndAllocatesOnlyTheSlotsItNeeds) {
  std::vector<float> values = kInitial;
  BlockOptimizerState state;
  ApplyUpdate(Settings(SgdParams{}, 0.1), state, values, kGrad, std::nullopt);
  EXPECT_EQ(state.step, 1u);
  EXPECT_THAT(state.momentum, IsEmpty());
  EXPECT_THAT(state.square_avg, IsEmpty());

  BlockOptimizerState adam;
  ApplyUpdate(Settings(AdamParams{.amsgrad = true}, 0.1), adam, values, kGrad,
              std::nullopt);
  ApplyUpdate(Settings(AdamParams{.amsgrad = true}, 0.1), adam, values, kGrad,
              std::nullopt);
  EXPECT_EQ(adam.step, 2u);
  EXPECT_THAT(adam.momentum, SizeIs(3));
  EXPECT_THAT(adam.square_avg, SizeIs(3));
  EXPECT_THAT(adam.max_square_avg, SizeIs(3));
  EXPECT_THAT(adam.grad_avg, IsEmpty());
}

// SlotsOf is what the store charges a variable's memory by, so it must name
// exactly the slots an update allocates, for every rule and option.
TEST(StateSlotsTest, SlotsOfIsWhatAnUpdateAllocates) {
  const RuleParams rules[] = {
      SgdParams{},
      MomentumParams{},
      MomentumParams{.momentum = 0.0},
      AdagradParams{},
      RmsPropParams{},
      RmsPropParams{.centered = true},
      RmsPropParams{.momentum = 0.9},
      RmsPropParams{.momentum = 0.9, .centered = true},
      AdamParams{},
      AdamParams{.amsgrad = true},
      AdamParams{.decoupled_weight_decay = true},
      EveParams{},
  };
  for (const RuleParams& rule : rules) {
    std::vector<float> values = kInitial;
    BlockOptimizerState state;
    ApplyUpdate(Settings(rule, 0.1), state, values, kGrad, 1.0);
    EXPECT_EQ(HeldSlots(state), SlotsOf(rule))
        << RuleName(rule) << " (rule " << rule.index() << ")";
  }
}

TEST(StateSlotsTest, ReleaseSlotsFreesAllButTheKeptOnes) {
  std::vector<float> values = kInitial;
  BlockOptimizerState state;
  ApplyUpdate(Settings(AdamParams{.amsgrad = true}, 0.1), state, values, kGrad,
              std::nullopt);
  const std::vector<float> m = state.momentum;
  ASSERT_EQ(HeldSlots(state),
            kMomentumSlot | kSquareAvgSlot | kMaxSquareAvgSlot);

  ReleaseSlots(kMomentumSlot, state);
  EXPECT_EQ(HeldSlots(state), kMomentumSlot);
  EXPECT_EQ(state.momentum, m);
  EXPECT_EQ(state.square_avg.capacity(), 0u);
  EXPECT_EQ(state.max_square_avg.capacity(), 0u);
  EXPECT_EQ(state.step, 1u);

  ReleaseSlots(0, state);
  EXPECT_EQ(HeldSlots(state), 0);
  EXPECT_EQ(state.momentum.capacity(), 0u);
}

TEST(ApplyUpdateTest, ClipsTheGradientToClipNorm) {
  OptimizerSettings settings = Settings(SgdParams{}, 1.0);
  settings.clip_norm = 1.0;
  std::vector<float> values = kInitial;
  BlockOptimizerState state;
  ApplyUpdate(settings, state, values, kGrad, std::nullopt);
  // p -= g / (||g|| + 1e-6), ||g|| = sqrt(5.25).
  const double scale = 1.0 / (std::sqrt(5.25) + 1e-6);
  EXPECT_THAT(values, Pointwise(FloatNearDouble(),
                                std::vector{1 - 0.5 * scale, -2 - scale,
                                            0.5 + 2 * scale}));
  // The gradient the caller passed is left alone.
  EXPECT_EQ(kGrad, (std::vector{0.5f, 1.0f, -2.0f}));
}

TEST(ApplyUpdateTest, LeavesAGradientWithinClipNormAlone) {
  OptimizerSettings clipped = Settings(SgdParams{}, 1.0);
  clipped.clip_norm = 3.0;  // > sqrt(5.25) + 1e-6
  std::vector<float> a = kInitial, b = kInitial;
  BlockOptimizerState sa, sb;
  ApplyUpdate(clipped, sa, a, kGrad, std::nullopt);
  ApplyUpdate(Settings(SgdParams{}, 1.0), sb, b, kGrad, std::nullopt);
  EXPECT_EQ(a, b);
}

TEST(ApplyUpdateTest, ClipsBeforeAddingWeightDecay) {
  OptimizerSettings settings = Settings(SgdParams{}, 1.0);
  settings.clip_norm = 1.0;
  settings.weight_decay = 0.5;
  std::vector<float> values = kInitial;
  BlockOptimizerState state;
  ApplyUpdate(settings, state, values, kGrad, std::nullopt);
  // g' = g / (||g|| + 1e-6) + 0.5 p0: the decay is not clipped.
  const double scale = 1.0 / (std::sqrt(5.25) + 1e-6);
  EXPECT_THAT(values,
              Pointwise(FloatNearDouble(),
                        std::vector{1 - 0.5 * scale - 0.5, -2 - scale + 1,
                                    0.5 + 2 * scale - 0.25}));
}

TEST(ApplyUpdateTest, WeightDecayAddsL2ToTheGradient) {
  OptimizerSettings settings = Settings(SgdParams{}, 0.1);
  settings.weight_decay = 0.5;
  std::vector<float> values = kInitial;
  BlockOptimizerState state;
  ApplyUpdate(settings, state, values, kGrad, std::nullopt);
  // g' = g + 0.5 p0 = (1, 0, -1.75).
  EXPECT_THAT(values,
              Pointwise(FloatNearDouble(), std::vector{0.9, -2.0, 0.675}));
}

TEST(ApplyUpdateTest, ScheduleFollowsTheBlocksOwnStep) {
  OptimizerSettings settings = Settings(SgdParams{}, 1.0);
  settings.schedule = Schedule{.kind = Schedule::Kind::kStep,
                               .step_size = 2,
                               .gamma = 0.5,
                               .warmup_steps = 2};
  const std::vector<float> grad = {1.0f};
  std::vector<float> values = {0.0f};
  BlockOptimizerState state;
  // Rates 0.5 (warm-up 1/2), 1, 0.5, 0.5, 0.25.
  const float expected[] = {-0.5f, -1.5f, -2.0f, -2.5f, -2.75f};
  for (float e : expected) {
    ApplyUpdate(settings, state, values, grad, std::nullopt);
    EXPECT_EQ(values[0], e) << "t = " << state.step;
  }
  // A block that starts later starts its own schedule at t = 1.
  std::vector<float> other = {0.0f};
  BlockOptimizerState fresh;
  ApplyUpdate(settings, fresh, other, grad, std::nullopt);
  EXPECT_EQ(other[0], -0.5f);
}

TEST(ClipFactorTest, IsTorchsClipCoefficient) {
  const std::vector<float> g = {3.0f, 4.0f};  // norm 5
  EXPECT_FLOAT_EQ(ClipFactor(g, 1.0), 1.0f / (5.0f + 1e-6f));
  // At exactly the norm torch still scales by 5 / (5 + 1e-6) < 1.
  EXPECT_LT(ClipFactor(g, 5.0), 1.0f);
  EXPECT_FLOAT_EQ(ClipFactor(g, 5.0), 5.0f / (5.0f + 1e-6f));
  EXPECT_EQ(ClipFactor(g, 6.0), 1.0f);
  const std::vector<float> zero(4, 0.0f);
  EXPECT_EQ(ClipFactor(zero, 1.0), 1.0f);
  // The norm is over the whole block, not per chunk.
  const std::vector<float> big(3 * kChunk + 1, 1.0f);
  EXPECT_FLOAT_EQ(ClipFactor(big, 1.0), 1.0f / std::sqrt(3 * kChunk + 1.0f));
}

// Every rule over a block that spans several chunks, with a short tail,
// gives each value what it would get alone in a one-value block (clipping
// aside, which is over the whole block).
class ChunkedBlockTest : public ::testing::TestWithParam<RuleParams> {};

TEST_P(ChunkedBlockTest, EachValueIsUpdatedAsIfAlone) {
  OptimizerSettings settings = Settings(GetParam(), 0.01);
  settings.weight_decay = 0.01;
  settings.schedule.kind = Schedule::Kind::kExponential;
  settings.schedule.gamma = 0.9;
  const size_t n = 2 * kChunk + 37;
  std::vector<float> values(n);
  std::vector<std::vector<float>> grads(3, std::vector<float>(n));
  for (size_t i = 0; i < n; ++i) {
    values[i] = std::sin(0.37f * static_cast<float>(i));
    for (size_t t = 0; t < grads.size(); ++t) {
      grads[t][i] = std::cos(0.11f * static_cast<float>(i * (t + 1)) + 0.5f);
    }
  }
  std::vector<float> block = values;
  BlockOptimizerState block_state;
  std::vector<std::vector<float>> alone(n);
  std::vector<BlockOptimizerState> alone_state(n);
  for (size_t i = 0; i < n; ++i) alone[i] = {values[i]};
  const double losses[] = {2.0, 3.0, 1.0};
  for (size_t t = 0; t < grads.size(); ++t) {
    ApplyUpdate(settings, block_state, block, grads[t], losses[t]);
    for (size_t i = 0; i < n; ++i) {
      const std::vector<float> g = {grads[t][i]};
      ApplyUpdate(settings, alone_state[i], alone[i], g, losses[t]);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    // SIMD and scalar code may round differently by an ulp or so of the
    // values' magnitude (about 1); a chunking slip would be off by far more.
    ASSERT_NEAR(block[i], alone[i][0], 1e-6) << "value " << i;
    ASSERT_NE(block[i], values[i]) << "value " << i << " did not move";
  }
}

// With a sink, an update gives exactly the numbers it gives without one,
// hands every value over once, in order, right after writing it, and
// tolerates the sink overwriting the gradient it has been handed (PushPull
// writes its answer over the request's gradient).
TEST_P(ChunkedBlockTest, ASinkSeesEveryChunkAndChangesNoNumber) {
  OptimizerSettings settings = Settings(GetParam(), 0.01);
  settings.weight_decay = 0.01;
  settings.clip_norm = 5.0;
  const size_t n = 2 * kSinkChunk + 3 * kChunk + 37;
  std::vector<float> plain(n);
  std::vector<float> grad(n);
  for (size_t i = 0; i < n; ++i) {
    plain[i] = std::sin(0.37f * static_cast<float>(i));
    grad[i] = std::cos(0.11f * static_cast<float>(i) + 0.5f);
  }
  std::vector<float> sunk = plain;
  BlockOptimizerState plain_state, sunk_state;
  for (int t = 0; t < 3; ++t) {
    const double loss = 2.0 + t;
    ApplyUpdate(settings, plain_state, plain, grad, loss);
    std::vector<float> consumed = grad;
    std::vector<float> received;
    size_t calls = 0;
    auto sink = [&](size_t offset, std::span<const float> chunk) {
      ++calls;
      ASSERT_EQ(offset, received.size()) << "chunks out of order";
      ASSERT_LE(chunk.size(), kSinkChunk);
      ASSERT_EQ(chunk.data(), sunk.data() + offset) << "not the values";
      received.insert(received.end(), chunk.begin(), chunk.end());
      std::fill_n(consumed.begin() + offset, chunk.size(), 1e30f);
    };
    ApplyUpdate(settings, sunk_state, sunk, consumed, loss, sink);
    EXPECT_EQ(calls, (n + kSinkChunk - 1) / kSinkChunk);
    ASSERT_EQ(received.size(), n);
    EXPECT_EQ(received, sunk);
    // Bit for bit, values and every slot.
    ASSERT_EQ(0, std::memcmp(plain.data(), sunk.data(), n * sizeof(float)));
    EXPECT_EQ(plain_state.step, sunk_state.step);
    EXPECT_EQ(plain_state.momentum, sunk_state.momentum);
    EXPECT_EQ(plain_state.square_avg, sunk_state.square_avg);
    EXPECT_EQ(plain_state.grad_avg, sunk_state.grad_avg);
    EXPECT_EQ(plain_state.max_square_avg, sunk_state.max_square_avg);
  }
}

// A gradient widened chunk by chunk gives exactly the numbers of the same
// gradient as one array, with and without clipping and a sink.
TEST_P(ChunkedBlockTest, AWidenedGradientChangesNoNumber) {
  const size_t n = 2 * kSinkChunk + 3 * kChunk + 37;
  std::vector<float> initial(n), grad(n);
  for (size_t i = 0; i < n; ++i) {
    initial[i] = std::sin(0.37f * static_cast<float>(i));
    grad[i] = std::cos(0.11f * static_cast<float>(i) + 0.5f);
  }
  for (bool clip : {false, true}) {
    for (bool with_sink : {false, true}) {
      OptimizerSettings settings = Settings(GetParam(), 0.01);
      settings.weight_decay = 0.01;
      if (clip) settings.clip_norm = 5.0;
      std::vector<float> plain = initial, widened = initial;
      BlockOptimizerState plain_state, widened_state;
      for (int t = 0; t < 3; ++t) {
        const double loss = 2.0 + t;
        ApplyUpdate(settings, plain_state, plain, grad, loss);
        size_t next = 0;  // the next offset the widener should be asked for
        size_t asked = 0;
        auto widen = [&](size_t offset, std::span<float> out) {
          if (offset == 0) next = 0;  // clipping reads the gradient twice
          EXPECT_EQ(offset, next) << "chunks out of order";
          EXPECT_LE(out.size(), kSinkChunk);
          std::copy_n(grad.begin() + offset, out.size(), out.begin());
          next = offset + out.size();
          asked += out.size();
        };
        size_t sunk = 0;
        auto sink = [&](size_t, std::span<const float> chunk) {
          sunk += chunk.size();
        };
        if (with_sink) {
          ApplyUpdate(settings, widened_state, widened, widen, loss, sink);
        } else {
          ApplyUpdate(settings, widened_state, widened, widen, loss);
        }
        EXPECT_EQ(asked, clip ? 2 * n : n);
        EXPECT_EQ(sunk, with_sink ? n : 0);
        ASSERT_EQ(0,
                  std::memcmp(plain.data(), widened.data(), n * sizeof(float)))
            << "clip " << clip << " sink " << with_sink << " step " << t;
        EXPECT_EQ(plain_state.step, widened_state.step);
        EXPECT_EQ(plain_state.momentum, widened_state.momentum);
        EXPECT_EQ(plain_state.square_avg, widened_state.square_avg);
        EXPECT_EQ(plain_state.grad_avg, widened_state.grad_avg);
        EXPECT_EQ(plain_state.max_square_avg, widened_state.max_square_avg);
      }
    }
  }
}

// With helper threads, a large block's ranges run at once and give exactly
// the numbers of the update on one thread, with and without a sink and a
// widener; every value reaches the sink once.
TEST_P(ChunkedBlockTest, HelpersChangeNoNumber) {
  HelperThreads helpers(2);
  const size_t n = 3 * kParallelValues + kSinkChunk + 37;
  std::vector<float> initial(n), grad(n);
  for (size_t i = 0; i < n; ++i) {
    initial[i] = std::sin(0.37f * static_cast<float>(i));
    grad[i] = std::cos(0.11f * static_cast<float>(i) + 0.5f);
  }
  for (int form = 0; form < 3; ++form) {  // plain, sink, widener and sink
    OptimizerSettings settings = Settings(GetParam(), 0.01);
    settings.weight_decay = 0.01;
    settings.clip_norm = 50.0;
    std::vector<float> alone = initial, helped = initial;
    BlockOptimizerState alone_state, helped_state;
    for (int t = 0; t < 3; ++t) {
      const double loss = 2.0 + t;
      ApplyUpdate(settings, alone_state, alone, grad, loss);
      std::vector<int> sunk(n);
      auto sink = [&](size_t offset, std::span<const float> chunk) {
        for (size_t i = 0; i < chunk.size(); ++i) ++sunk[offset + i];
      };
      auto widen = [&](size_t offset, std::span<float> out) {
        std::copy_n(grad.begin() + offset, out.size(), out.begin());
      };
      if (form == 0) {
        ApplyUpdate(settings, helped_state, helped, grad, loss, std::nullopt,
                    &helpers);
      } else if (form == 1) {
        ApplyUpdate(settings, helped_state, helped, grad, loss, sink, &helpers);
      } else {
        ApplyUpdate(settings, helped_state, helped, widen, loss, sink,
                    &helpers);
      }
      ASSERT_EQ(0, std::memcmp(alone.data(), helped.data(), n * sizeof(float)))
          << "form " << form << " step " << t;
      EXPECT_EQ(alone_state.step, helped_state.step);
      EXPECT_EQ(alone_state.momentum, helped_state.momentum);
      EXPECT_EQ(alone_state.square_avg, helped_state.square_avg);
      EXPECT_EQ(alone_state.grad_avg, helped_state.grad_avg);
      EXPECT_EQ(alone_state.max_square_avg, helped_state.max_square_avg);
      if (form > 0) {
        EXPECT_EQ(sunk, std::vector<int>(n, 1)) << "form " << form;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllRules, ChunkedBlockTest,
    ::testing::Values(SgdParams{}, MomentumParams{.nesterov = true},
                      AdagradParams{.initial_accumulator_value = 0.1},
                      RmsPropParams{.momentum = 0.5, .centered = true},
                      AdamParams{.amsgrad = true},
                      AdamParams{.decoupled_weight_decay = true}, EveParams{}),
    [](const ::testing::TestParamInfo<RuleParams>& info) {
      return std::string(RuleName(info.param)) + std::to_string(info.index);
    });

}  // namespace
}  // namespace ps::optimizer

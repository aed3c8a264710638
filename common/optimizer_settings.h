// Resolved optimizer settings: plain data with every default filled in.
//
// These structs are what the kernels and the store work with. The wire form
// (ps.v1.OptimizerConfig) is turned into them, validated, by
// common/optimizer_config.h; nothing here knows about protobuf.
#ifndef PS_COMMON_OPTIMIZER_SETTINGS_H_
#define PS_COMMON_OPTIMIZER_SETTINGS_H_

#include <cstdint>
#include <optional>
#include <string_view>
#include <variant>

namespace ps::optimizer {

// p -= lr_t * g.
struct SgdParams {};

// Heavy ball with dampening; torch.optim.SGD with momentum.
struct MomentumParams {
  double momentum = 0.9;   // mu
  double dampening = 0.0;  // tau; 0.9 gives the EMA form b = 0.9 b + 0.1 g
  bool nesterov = false;   // requires momentum > 0 and dampening == 0
};

// torch.optim.Adagrad.
struct AdagradParams {
  double initial_accumulator_value = 0.0;
  double eps = 1e-10;
  double lr_decay = 0.0;  // lr_t / (1 + (t - 1) * lr_decay)
};

// torch.optim.RMSprop.
struct RmsPropParams {
  double alpha = 0.99;
  double eps = 1e-8;
  double momentum = 0.0;
  bool centered = false;
};

// torch.optim.Adam, or AdamW with decoupled_weight_decay.
struct AdamParams {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  bool amsgrad = false;
  bool decoupled_weight_decay = false;
};

// Eve (Koushik & Hayashi, arXiv:1611.01505v2, Algorithm 1): Adam whose step is
// damped by feedback from the objective.
struct EveParams {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double beta3 = 0.999;  // smoothing of the feedback d
  double k = 0.1;        // lower clip threshold
  double big_k = 10.0;   // upper clip threshold K
  double eps = 1e-8;
  double loss_floor = 0.0;  // f*: the objective's known minimum
};

using RuleParams = std::variant<SgdParams, MomentumParams, AdagradParams,
                                RmsPropParams, AdamParams, EveParams>;

// A multiplier on the base learning rate as a function of the block's step t
// (1-based), as torch.optim.lr_scheduler computes it per step.
struct Schedule {
  enum class Kind { kConstant, kStep, kExponential, kCosine };
  Kind kind = Kind::kConstant;
  uint64_t step_size = 1;     // kStep: decay every step_size steps
  double gamma = 1.0;         // kStep, kExponential: decay factor
  uint64_t t_max = 1;         // kCosine: half period, in steps
  double eta_min = 0.0;       // kCosine: the lowest rate
  uint64_t warmup_steps = 0;  // rate x min(1, t / warmup_steps); 0 = none
};

struct OptimizerSettings {
  RuleParams rule = AdamParams{};
  double learning_rate = 1e-3;
  double weight_decay = 0.0;        // L2 added to g; decoupled for AdamW
  std::optional<double> clip_norm;  // per-block L2 norm clip; none = off
  Schedule schedule;
};

// A set of a block's per-value optimizer slots (BlockOptimizerState in
// server/optimizer/update.h), as bits.
using StateSlots = uint8_t;
inline constexpr StateSlots kMomentumSlot = 1;      // momentum
inline constexpr StateSlots kSquareAvgSlot = 2;     // square_avg
inline constexpr StateSlots kGradAvgSlot = 4;       // grad_avg
inline constexpr StateSlots kMaxSquareAvgSlot = 8;  // max_square_avg

// The learning rate at step t (1-based) after the schedule and warm-up.
double ScheduledLearningRate(double base_rate, const Schedule& schedule,
                             uint64_t t);

}  // namespace ps::optimizer

#endif  // PS_COMMON_OPTIMIZER_SETTINGS_H_

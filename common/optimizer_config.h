// Optimizer configs: validation, PyTorch's defaults, and the text form.
//
// The wire form (ps.v1.OptimizerConfig) leaves hyper-parameters unset to mean
// "the default"; Resolve fills them in as torch.optim 1.13 does (Momentum's
// momentum defaults to 0.9) and refuses a bad config with a message that
// names the field.
#ifndef PS_COMMON_OPTIMIZER_CONFIG_H_
#define PS_COMMON_OPTIMIZER_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/optimizer_settings.h"
#include "proto/ps/v1/ps.pb.h"

namespace ps {

// Validates `config` and fills every unset field with its default.
// INVALID_ARGUMENT, naming the field, when a value is out of range or the
// config names no rule.
absl::StatusOr<optimizer::OptimizerSettings> ResolveOptimizerConfig(
    const v1::OptimizerConfig& config);

// The same check without the result.
absl::Status ValidateOptimizerConfig(const v1::OptimizerConfig& config);

// Parses the protobuf text format, e.g. "adam { beta1: 0.8 } learning_rate:
// 0.01", then validates it.
absl::StatusOr<v1::OptimizerConfig> ParseOptimizerConfig(
    absl::string_view text);

// One line of protobuf text format.
std::string OptimizerConfigToText(const v1::OptimizerConfig& config);

}  // namespace ps

#endif  // PS_COMMON_OPTIMIZER_CONFIG_H_

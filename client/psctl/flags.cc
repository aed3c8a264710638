#include "client/psctl/flags.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ps::psctl {

std::string ValueName(FlagType type) {
  switch (type) {
    case FlagType::kBool:
      return "";
    case FlagType::kDouble:
      return "X";
    case FlagType::kUint64:
    case FlagType::kInt:
      return "N";
    case FlagType::kString:
      return "S";
  }
  return "S";
}

std::string FlagUsage(const FlagSpec& spec) {
  if (spec.type == FlagType::kBool) return "--" + spec.name;
  return absl::StrCat(
      "--", spec.name, "=",
      spec.value_name.empty() ? ValueName(spec.type) : spec.value_name);
}

absl::Status CheckFlagValue(const FlagSpec& spec, const std::string& text) {
  if (text.empty() && spec.type != FlagType::kBool) return absl::OkStatus();
  bool ok = true;
  std::string expected;
  switch (spec.type) {
    case FlagType::kBool: {
      bool value = false;
      ok = absl::SimpleAtob(text, &value);
      expected = "true or false";
      break;
    }
    case FlagType::kDouble: {
      double value = 0;
      ok = absl::SimpleAtod(text, &value);
      expected = "a number";
      break;
    }
    case FlagType::kUint64: {
      uint64_t value = 0;
      ok = absl::SimpleAtoi(text, &value);
      expected = "a whole number >= 0";
      break;
    }
    case FlagType::kInt: {
      int64_t value = 0;
      ok = absl::SimpleAtoi(text, &value);
      expected = "a whole number";
      break;
    }
    case FlagType::kString:
      break;
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "bad value for --", spec.name, ": '", text, "' is not ", expected));
}

std::vector<std::string> FlagValues::GivenNames() const {
  std::vector<std::string> names;
  for (const auto& [name, value] : given_) names.push_back(name);
  return names;
}

std::optional<std::string> FlagValues::Text(const std::string& name) const {
  auto it = given_.find(name);
  if (it != given_.end()) {
    if (it->second.empty()) return std::nullopt;
    return it->second;
  }
  auto spec = flags_->find(name);
  if (spec == flags_->end() || spec->second.default_value.empty()) {
    return std::nullopt;
  }
  return spec->second.default_value;
}

std::string FlagValues::String(const std::string& name) const {
  return Text(name).value_or("");
}

bool FlagValues::Bool(const std::string& name) const {
  bool value = false;
  const std::optional<std::string> text = Text(name);
  return text.has_value() && absl::SimpleAtob(*text, &value) && value;
}

double FlagValues::Double(const std::string& name) const {
  return OptionalDouble(name).value_or(0.0);
}

int64_t FlagValues::Int(const std::string& name) const {
  int64_t value = 0;
  const std::optional<std::string> text = Text(name);
  if (!text.has_value() || !absl::SimpleAtoi(*text, &value)) return 0;
  return value;
}

std::optional<double> FlagValues::OptionalDouble(
    const std::string& name) const {
  double value = 0;
  const std::optional<std::string> text = Text(name);
  if (!text.has_value() || !absl::SimpleAtod(*text, &value)) {
    return std::nullopt;
  }
  return value;
}

std::optional<uint64_t> FlagValues::OptionalUint64(
    const std::string& name) const {
  uint64_t value = 0;
  const std::optional<std::string> text = Text(name);
  if (!text.has_value() || !absl::SimpleAtoi(*text, &value)) {
    return std::nullopt;
  }
  return value;
}

absl::StatusOr<CommandLine> ReadCommandLine(
    const std::vector<std::string>& args, const FlagSet* flags) {
  CommandLine line{.words = {}, .flags = FlagValues(flags)};
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      line.words.insert(line.words.end(), args.begin() + i + 1, args.end());
      break;
    }
    double number = 0;
    if (arg.size() < 2 || arg[0] != '-' || absl::SimpleAtod(arg, &number)) {
      // Negative numbers ("lr set -1") are words, not flags.
      line.words.push_back(arg);
      continue;
    }
    const std::string body = arg.substr(arg[1] == '-' ? 2 : 1);
    const size_t eq = body.find('=');
    const std::string name = body.substr(0, eq);
    std::optional<std::string> value;
    if (eq != std::string::npos) value = body.substr(eq + 1);
    if (name == "help" || name == "h" || name == "helpshort" ||
        name == "helpfull") {
      line.help = true;
      continue;
    }
    auto spec = flags->find(name);
    if (spec == flags->end() && absl::StartsWith(name, "no") && !value) {
      auto positive = flags->find(name.substr(2));
      if (positive != flags->end() &&
          positive->second.type == FlagType::kBool) {
        line.flags.Set(positive->first, "false");
        continue;
      }
    }
    if (spec == flags->end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (see psctl --help)"));
    }
    if (!value.has_value()) {
      if (spec->second.type == FlagType::kBool) {
        value = "true";
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value"));
      }
    }
    if (absl::Status valid = CheckFlagValue(spec->second, *value);
        !valid.ok()) {
      return valid;
    }
    line.flags.Set(name, *std::move(value));
  }
  return line;
}

}  // namespace ps::psctl

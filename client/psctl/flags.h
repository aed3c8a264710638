// psctl's flags as data: what each flag is, and reading a command line
// against them.
//
// psctl's flags are not Abseil flags: the optimizer's are made at run time
// from the protobuf descriptors (client/psctl/optimizer_flags.h), and which
// flags a command accepts comes from its row in the command table
// (client/psctl/command_table.h).
//
// Thread safety: thread-compatible.
#ifndef PS_CLIENT_PSCTL_FLAGS_H_
#define PS_CLIENT_PSCTL_FLAGS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ps::psctl {

enum class FlagType { kBool, kDouble, kUint64, kInt, kString };

struct FlagSpec {
  std::string name = {};  // without "--"
  FlagType type = FlagType::kString;
  // What it does, in a few words.
  std::string help = {};
  // The default as --help shows it; for a flag without a value of its own,
  // what applies when it is not given.
  std::string default_text = {};
  // The value used when the flag is not given; empty = none (unset).
  std::string default_value = {};
  // The placeholder of its value in help texts; empty = ValueName(type).
  std::string value_name = {};
};

// The placeholder of a flag's value in help texts: X, N, S (none for bool).
std::string ValueName(FlagType type);

// "--name=X" (with the spec's value_name, or ValueName), or "--name" for a
// bool flag.
std::string FlagUsage(const FlagSpec& spec);

// INVALID_ARGUMENT, "bad value for --NAME: ...", when `text` is not a value
// of the flag's type. An empty value is allowed (the flag is then unset).
absl::Status CheckFlagValue(const FlagSpec& spec, const std::string& text);

// Every flag psctl knows, by name.
using FlagSet = std::map<std::string, FlagSpec>;

// The flags given on one command line, with their values (checked against
// their types when read) and the defaults of those not given.
//
// REQUIRES of the accessors: the flag is in the FlagSet and has the type the
// accessor reads.
class FlagValues {
 public:
  explicit FlagValues(const FlagSet* flags) : flags_(flags) {}

  // Sets a flag's value (the last one given wins).
  void Set(const std::string& name, std::string value) {
    given_[name] = std::move(value);
  }

  bool Given(const std::string& name) const { return given_.contains(name); }
  // The names of the flags given, in name order.
  std::vector<std::string> GivenNames() const;
  // The text given, or the default value; nullopt when neither (or empty).
  std::optional<std::string> Text(const std::string& name) const;

  std::string String(const std::string& name) const;
  bool Bool(const std::string& name) const;
  double Double(const std::string& name) const;
  int64_t Int(const std::string& name) const;
  std::optional<double> OptionalDouble(const std::string& name) const;
  std::optional<uint64_t> OptionalUint64(const std::string& name) const;

 private:
  const FlagSet* flags_;
  std::map<std::string, std::string> given_;
};

// A command line split into its words and its flags.
struct CommandLine {
  std::vector<std::string> words;  // the command, its arguments
  FlagValues flags;
  bool help = false;  // --help, -h, --helpshort or --helpfull
};

// Reads `args` (without the program name): "--name=value", "--name value"
// (not for bool flags), "--name" and "--noname" for bool flags, one or two
// dashes; anything else, a negative number included, is a word; "--" ends
// the flags. INVALID_ARGUMENT, in one line, for an unknown flag, a missing
// value or a value that is not of the flag's type.
absl::StatusOr<CommandLine> ReadCommandLine(
    const std::vector<std::string>& args, const FlagSet* flags);

}  // namespace ps::psctl

#endif  // PS_CLIENT_PSCTL_FLAGS_H_

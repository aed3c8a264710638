#include "common/cli.h"

#include <cstdlib>
#include <iostream>

#include "absl/flags/internal/parse.h"
#include "absl/flags/internal/usage.h"
#include "absl/flags/usage.h"

namespace ps {

std::vector<char*> ParseCommandLineWithHelp(int argc, char** argv) {
  // Abseil 20220623 has no public way to handle the usage flags without
  // exiting 1, so this is absl::ParseCommandLine with that one step changed.
  std::vector<char*> rest = absl::flags_internal::ParseCommandLineImpl(
      argc, argv, absl::flags_internal::ArgvListAction::kRemoveParsedArgs,
      absl::flags_internal::UsageFlagsAction::kIgnoreUsage,
      absl::flags_internal::OnUndefinedFlag::kAbortIfUndefined);
  const int usage = absl::flags_internal::HandleUsageFlags(
      std::cout, absl::ProgramUsageMessage());
  if (usage != -1) std::exit(usage == 1 ? 0 : usage);
  return rest;
}

}  // namespace ps

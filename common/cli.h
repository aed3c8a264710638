// Command-line parsing shared by the project's programs.
#ifndef PS_COMMON_CLI_H_
#define PS_COMMON_CLI_H_

#include <vector>

namespace ps {

// Parses the absl flags of argc/argv and returns the remaining arguments
// (argv[0] first). --help, --helpfull and --version print to stdout and exit
// 0 (Abseil 20220623 exits 1 after help); an unknown flag exits 1 with a
// message, as absl::ParseCommandLine does.
std::vector<char*> ParseCommandLineWithHelp(int argc, char** argv);

}  // namespace ps

#endif  // PS_COMMON_CLI_H_

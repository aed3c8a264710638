// psctl's help texts.
#ifndef PS_CLIENT_PSCTL_HELP_H_
#define PS_CLIENT_PSCTL_HELP_H_

#include <string>

namespace ps::psctl {

// The overview: usage, commands, exit statuses.
std::string GeneralHelp();

// The help of one command ("info", "optimizer set", "optimizer" for both
// optimizer commands, ...), or "" when there is no such command.
std::string CommandHelp(const std::string& command);

}  // namespace ps::psctl

#endif  // PS_CLIENT_PSCTL_HELP_H_

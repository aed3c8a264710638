// psctl: the operator's command line for a parameter server cluster.
//
// Everything is in the command table (client/psctl/command_table.h); see
// `psctl --help`.
#include <iostream>
#include <string>
#include <vector>

#include "client/psctl/command_table.h"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  const int status = ps::psctl::Main(args, std::cout, std::cerr);
  std::cout.flush();
  return status;
}

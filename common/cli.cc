#include "common/cli.h"

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <string_view>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace ps {
namespace {

// Wraps `text` at 80 columns, continuation lines indented by `indent`.
std::string Wrap(const std::string& text, size_t indent) {
  std::string out;
  size_t column = indent;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (column > indent && column + 1 + word.size() > 80) {
      out += "\n" + std::string(indent + 2, ' ');
      column = indent + 2;
    } else if (column > indent) {
      out += ' ';
      ++column;
    }
    out.append(word.data(), word.size());
    column += word.size();
  }
  return out;
}

// The program's flags (with `all`, Abseil's own too) by the file that
// defines them, as absl's --help lists them.
void PrintHelp(bool all) {
  std::cout << absl::ProgramUsageMessage() << "\n";
  std::map<std::string, std::map<std::string, const absl::CommandLineFlag*>>
      by_file;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    const std::string file = flag->Filename();
    if (!all && absl::StrContains(file, "absl/")) continue;
    by_file[file][std::string(name)] = flag;
  }
  for (const auto& [file, flags] : by_file) {
    std::cout << "\n  Flags from " << file << ":\n";
    for (const auto& [name, flag] : flags) {
      std::string default_value = flag->DefaultValue();
      if (flag->IsOfType<std::string>()) {
        default_value = "\"" + default_value + "\"";
      }
      // The default stays on one line, as a copy-paste of it needs.
      std::string text = Wrap("--" + name + " (" + flag->Help() + ");", 4);
      const std::string tail = "default: " + default_value + ";";
      const size_t last_line =
          text.size() -
          (text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
      const size_t column =
          (text.find('\n') == std::string::npos ? 4 : 0) + last_line;
      text += column + 1 + tail.size() > 80 ? "\n      " : " ";
      std::cout << "    " << text << tail << "\n";
    }
  }
}

}  // namespace

std::vector<char*> ParseCommandLineWithHelp(int argc, char** argv) {
  // absl::ParseCommandLine exits 1 after --help (Abseil 20220623); a user
  // asking for help has not failed, so the usage flags are answered here.
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "--help" || arg == "-help" || arg == "--helpshort" ||
        arg == "--helpfull" || arg == "-helpfull") {
      PrintHelp(/*all=*/absl::EndsWith(arg, "full"));
      std::exit(0);
    }
    if (arg == "--version" || arg == "-version") {
      std::cout << (argc > 0 ? argv[0] : "") << "\n";
      std::exit(0);
    }
  }
  return absl::ParseCommandLine(argc, argv);
}

}  // namespace ps

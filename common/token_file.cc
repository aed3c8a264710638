#include "common/token_file.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"

namespace ps {

std::vector<TokenLine> ParseTokenLines(absl::string_view text) {
  std::vector<TokenLine> tokens;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    TokenLine token;
    token.line_number = line_number;
    for (absl::string_view word :
         absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty())) {
      if (token.secret.empty()) {
        token.secret = std::string(word);
      } else {
        token.words.emplace_back(word);
      }
    }
    tokens.push_back(std::move(token));
  }
  return tokens;
}

absl::StatusOr<std::vector<TokenLine>> ReadTokenFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadSmallFile(path, "token file");
  if (!text.ok()) return text.status();
  std::vector<TokenLine> tokens = ParseTokenLines(*text);
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("token file ", path, " holds no token"));
  }
  return tokens;
}

}  // namespace ps

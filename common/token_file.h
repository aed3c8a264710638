// The format of token files, read by ps_server (--worker_tokens_file,
// --admin_tokens_file) and psctl (--token_file): one bearer token per line,
// optionally followed by words that the reader gives a meaning to (a label;
// for ps_server also `workers=PATTERN,...`). Words are separated by spaces
// or tabs; blank lines and lines whose first non-blank character is '#'
// are skipped.
//
//   # the training job
//   s3cret trainer workers=trainer-*
//
// Thread safety: every function is thread-safe.
#ifndef PS_COMMON_TOKEN_FILE_H_
#define PS_COMMON_TOKEN_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ps {

// One token of a token file.
struct TokenLine {
  // Where it is in the file, counting from 1.
  int line_number = 0;
  // The line's first word.
  std::string secret;
  // The words after it, in order.
  std::vector<std::string> words;
};

// The token lines of `text` (a token file's contents), in file order.
std::vector<TokenLine> ParseTokenLines(absl::string_view text);

// Reads the token file at `path` (common/file_util.h) and parses it.
// INVALID_ARGUMENT when it cannot be read or is empty (naming "token file"
// and `path`), or holds no token ("token file PATH holds no token").
absl::StatusOr<std::vector<TokenLine>> ReadTokenFile(const std::string& path);

}  // namespace ps

#endif  // PS_COMMON_TOKEN_FILE_H_

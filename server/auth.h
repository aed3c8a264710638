// Bearer-token checks for the services.
//
// Tokens come from files of one token per line, with an optional label after
// whitespace ("s3cret alice"); blank lines and lines starting with '#' are
// skipped. A word `workers=PATTERN[,PATTERN...]` among the label's words
// limits the worker ids the token may open sessions and push as
// ("s3cret trainer workers=trainer-*"; `*` and `?` match as in a shell).
// Requests carry `authorization: Bearer <token>`. Worker tokens may call
// ParameterService; admin tokens may call both services.
//
// Thread safety: immutable after Load; Check may be called concurrently.
#ifndef PS_SERVER_AUTH_H_
#define PS_SERVER_AUTH_H_

#include <grpcpp/server_context.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ps {

enum class Role { kWorker, kAdmin };

// Who made a call.
struct Caller {
  std::string label;  // the token's label ("anonymous" without tokens)
  // Patterns of the worker ids it may push as; empty = any.
  std::vector<std::string> workers;

  // PERMISSION_DENIED unless the caller may open sessions and push as
  // `worker_id`.
  absl::Status CheckWorker(const std::string& worker_id) const;
};

class Authenticator {
 public:
  // No tokens: every call is let in (Check answers "anonymous").
  Authenticator() = default;

  // Reads the token files; an empty path contributes no tokens.
  // INVALID_ARGUMENT for an unreadable or empty file.
  static absl::StatusOr<Authenticator> Load(const std::string& worker_file,
                                            const std::string& admin_file);

  // True when any token is configured.
  bool enabled() const { return !tokens_.empty(); }

  // The caller: its token's label (the token's line number when it has
  // none) and worker ids; or UNAUTHENTICATED (no or unknown token) or
  // PERMISSION_DENIED (a worker token where an admin one is needed).
  // Compares in constant time.
  absl::StatusOr<Caller> Check(const grpc::ServerContextBase& context,
                               Role needed) const;

 private:
  struct Token {
    std::string secret;
    Caller caller;
    Role role;
  };
  std::vector<Token> tokens_;
};

}  // namespace ps

#endif  // PS_SERVER_AUTH_H_

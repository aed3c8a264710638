// Bearer-token checks for the services.
//
// Tokens come from files of one token per line, with an optional label after
// whitespace ("s3cret alice"); blank lines and lines starting with '#' are
// skipped. Requests carry `authorization: Bearer <token>`. Worker tokens may
// call ParameterService; admin tokens may call both services.
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

  // The label of the caller's token (the token's line number when it has
  // none), or UNAUTHENTICATED (no or unknown token) or PERMISSION_DENIED (a
  // worker token where an admin one is needed). Compares in constant time.
  absl::StatusOr<std::string> Check(const grpc::ServerContextBase& context,
                                    Role needed) const;

 private:
  struct Token {
    std::string secret;
    std::string label;
    Role role;
  };
  std::vector<Token> tokens_;
};

}  // namespace ps

#endif  // PS_SERVER_AUTH_H_

#include "server/auth.h"

#include <fnmatch.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/token_file.h"

namespace ps {
namespace {

constexpr absl::string_view kBearer = "Bearer ";

// Equal contents and length, in time that depends only on the lengths.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0;
    const unsigned char y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

absl::Status ReadTokens(const std::string& path, Role role,
                        std::vector<std::pair<std::string, Caller>>* out) {
  absl::StatusOr<std::vector<TokenLine>> lines = ReadTokenFile(path);
  if (!lines.ok()) return lines.status();
  for (TokenLine& line : *lines) {
    Caller caller;
    std::vector<absl::string_view> label;
    for (absl::string_view word : line.words) {
      if (!absl::ConsumePrefix(&word, "workers=")) {
        label.push_back(word);
        continue;
      }
      for (absl::string_view pattern :
           absl::StrSplit(word, ',', absl::SkipEmpty())) {
        caller.workers.emplace_back(pattern);
      }
      if (caller.workers.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("token file ", path, " line ", line.line_number,
                         ": workers= names no worker id pattern"));
      }
    }
    caller.label = label.empty()
                       ? absl::StrCat(role == Role::kAdmin ? "admin" : "worker",
                                      " token on line ", line.line_number)
                       : absl::StrJoin(label, " ");
    out->emplace_back(std::move(line.secret), std::move(caller));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Authenticator> Authenticator::Load(
    const std::string& worker_file, const std::string& admin_file) {
  Authenticator auth;
  for (const auto& [path, role] :
       // Admin first: a token listed in both files is an admin token.
       {std::pair{admin_file, Role::kAdmin}, {worker_file, Role::kWorker}}) {
    if (path.empty()) continue;
    std::vector<std::pair<std::string, Caller>> read;
    if (absl::Status status = ReadTokens(path, role, &read); !status.ok()) {
      return status;
    }
    for (auto& [secret, caller] : read) {
      auth.tokens_.push_back(Token{std::move(secret), std::move(caller), role});
    }
  }
  return auth;
}

absl::Status Caller::CheckWorker(const std::string& worker_id) const {
  if (workers.empty()) return absl::OkStatus();
  for (const std::string& pattern : workers) {
    if (::fnmatch(pattern.c_str(), worker_id.c_str(), 0) == 0) {
      return absl::OkStatus();
    }
  }
  return absl::PermissionDeniedError(
      absl::StrCat("token '", label, "' may push as workers ",
                   absl::StrJoin(workers, ", "), ", not as '", worker_id, "'"));
}

absl::StatusOr<Caller> Authenticator::Check(
    const grpc::ServerContextBase& context, Role needed) const {
  if (!enabled()) return Caller{"anonymous", {}};
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        "no token: send metadata 'authorization: Bearer <token>'");
  }
  absl::string_view value(it->second.data(), it->second.size());
  if (!absl::StartsWith(value, kBearer)) {
    return absl::UnauthenticatedError(
        "the authorization metadata must read 'Bearer <token>'");
  }
  value.remove_prefix(kBearer.size());
  const Token* match = nullptr;
  for (const Token& token : tokens_) {
    // Every token is compared, so the time does not tell which matched.
    if (ConstantTimeEquals(value, token.secret) && match == nullptr) {
      match = &token;
    }
  }
  if (match == nullptr) {
    return absl::UnauthenticatedError("unknown token");
  }
  if (needed == Role::kAdmin && match->role != Role::kAdmin) {
    return absl::PermissionDeniedError(
        absl::StrCat("token '", match->caller.label,
                     "' is a worker token; AdminService needs an "
                     "admin token"));
  }
  return match->caller;
}

}  // namespace ps

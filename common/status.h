// Status helpers shared by every layer, and the one conversion from
// absl::Status to grpc::Status (used only by the service layer).
#ifndef PS_COMMON_STATUS_H_
#define PS_COMMON_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define PS_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status ps_status_ = (expr);      \
    if (!ps_status_.ok()) return ps_status_; \
  } while (0)

#define PS_STATUS_CONCAT_INNER_(a, b) a##b
#define PS_STATUS_CONCAT_(a, b) PS_STATUS_CONCAT_INNER_(a, b)

// `lhs = value of expr` (an absl::StatusOr<T>), or return its status.
#define PS_ASSIGN_OR_RETURN(lhs, expr)                                      \
  PS_ASSIGN_OR_RETURN_IMPL_(PS_STATUS_CONCAT_(ps_statusor_, __LINE__), lhs, \
                            expr)
#define PS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).status();  \
  lhs = std::move(tmp).value()

namespace ps {

// The same code and message as a grpc::Status.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The same code and message as an absl::Status.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Sync mode's whole-cluster roll-back (docs/checkpoints.md): a push or a
// session of a worker from before it is refused with FAILED_PRECONDITION
// and a message that begins with this; the client opens a new session and
// resumes from the step the shards collect.
inline constexpr char kRolledBackPrefix[] = "rolled back to checkpoint ";

// Whether `status` is such a refusal.
bool IsRolledBack(const absl::Status& status);

}  // namespace ps

#endif  // PS_COMMON_STATUS_H_

// Exactly-once records of a part that pushes update (a block, a table): per
// worker, its session epoch and the seqs of it applied to the part
// (DESIGN.md, "Worker sessions").
//
// Thread safety: the caller holds the lock of the part that owns `applied`.
#ifndef PS_SERVER_EXACTLY_ONCE_H_
#define PS_SERVER_EXACTLY_ONCE_H_

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "server/dense_variable.h"
#include "server/push.h"

namespace ps {

using AppliedTable = absl::flat_hash_map<std::string, Block::AppliedSeqs>;

// True when the push asks for exactly-once and the part already applied it.
inline bool AlreadyApplied(const PreparedPush& push,
                           const AppliedTable& applied) {
  if (!push.exactly_once()) return false;
  auto it = applied.find(push.worker_id);
  return it != applied.end() && it->second.epoch == push.epoch &&
         it->second.seqs.Seen(push.seq);
}

// FAILED_PRECONDITION when a push of a newer session of the worker reached
// the part (`what`, e.g. "block 3 of 'w'") first: the session was reopened
// while this push was on its way.
inline absl::Status CheckNotFenced(const PreparedPush& push,
                                   const AppliedTable& applied,
                                   absl::string_view what) {
  if (!push.exactly_once()) return absl::OkStatus();
  auto it = applied.find(push.worker_id);
  if (it == applied.end() || it->second.epoch <= push.epoch) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(
      absl::StrCat("fenced: ", what,
                   " took pushes of a newer session of "
                   "worker '",
                   push.worker_id, "' (epoch ", it->second.epoch, " > ",
                   push.epoch, "); this push is not applied"));
}

// Records the push as applied to the part. Returns true when that made a
// new record (the worker's first push to the part).
inline bool MarkApplied(const PreparedPush& push, AppliedTable& applied) {
  if (!push.exactly_once()) return false;
  auto [it, inserted] = applied.try_emplace(push.worker_id);
  Block::AppliedSeqs& seqs = it->second;
  if (seqs.epoch != push.epoch) seqs = {push.epoch, SeqWindow()};
  seqs.seqs.Mark(push.seq);
  return inserted;
}

}  // namespace ps

#endif  // PS_SERVER_EXACTLY_ONCE_H_

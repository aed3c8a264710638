#include "server/sessions.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace ps {

absl::StatusOr<WorkerSessions::Session*> WorkerSessions::Get(
    absl::string_view worker) {
  auto it = sessions_.find(worker);
  if (it != sessions_.end()) return &it->second;
  if (max_workers_ > 0 && sessions_.size() >= max_workers_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "shard ", shard_index_, " holds sessions of ", sessions_.size(),
        " workers, its limit (ps_server --max_workers); worker '", worker,
        "' cannot open one"));
  }
  return &sessions_[worker];
}

absl::Status WorkerSessions::CheckEpoch(absl::string_view worker,
                                        uint64_t epoch, uint64_t now_micros) {
  if (epoch <= now_micros || epoch - now_micros <= kMaxEpochAheadMicros) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("session epoch ", epoch, " of worker '", worker,
                   "' lies more than a day past this shard's clock (",
                   now_micros, " us); epochs come from OpenSession"));
}

absl::StatusOr<uint64_t> WorkerSessions::Open(absl::string_view worker,
                                              uint64_t epoch,
                                              uint64_t now_micros) {
  if (worker.empty()) {
    return absl::InvalidArgumentError("a session needs a worker_id");
  }
  PS_RETURN_IF_ERROR(CheckEpoch(worker, epoch, now_micros));
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Session*> found = Get(worker);
  if (!found.ok()) return found.status();
  Session& session = **found;
  if (epoch != 0 && epoch <= session.rolled_back_through) {
    return absl::AbortedError(RolledBack(worker, epoch).message());
  }
  if (epoch == 0) {
    epoch = std::max(session.epoch + 1, now_micros);
  } else if (epoch < session.epoch) {
    return absl::AbortedError(absl::StrCat(
        "worker '", worker, "' has a newer session on shard ", shard_index_,
        " (epoch ", session.epoch, " > ", epoch,
        "): another process opened it with the same worker id; open the "
        "session again"));
  } else if (epoch == session.epoch) {
    return epoch;  // the same open, repeated
  }
  session.epoch = epoch;
  session.highest_seq = 0;
  return epoch;
}

absl::Status WorkerSessions::Admit(absl::string_view worker, uint64_t epoch,
                                   uint64_t seq, uint64_t now_micros) {
  if (epoch == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "push of worker '", worker, "' with seq ", seq,
        " has no session epoch: open a session (OpenSession) and send its "
        "epoch, or push with seq 0 to opt out of exactly-once"));
  }
  PS_RETURN_IF_ERROR(CheckEpoch(worker, epoch, now_micros));
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Session*> found = Get(worker);
  if (!found.ok()) return found.status();
  Session& session = **found;
  if (epoch <= session.rolled_back_through) return RolledBack(worker, epoch);
  if (epoch < session.epoch) {
    return absl::FailedPreconditionError(absl::StrCat(
        "fenced: worker '", worker, "' pushed with session epoch ", epoch,
        ", but a newer session (epoch ", session.epoch,
        ") replaced it on shard ", shard_index_,
        "; this process was restarted elsewhere or its session reopened, "
        "so this push is not applied"));
  }
  if (epoch > session.epoch) {
    session.epoch = epoch;
    session.highest_seq = 0;
  }
  if (seq > session.highest_seq && seq - session.highest_seq > kMaxSeqAhead) {
    return absl::InvalidArgumentError(absl::StrCat(
        "push of worker '", worker, "' has seq ", seq, ", more than ",
        kMaxSeqAhead, " past the highest seq of its session on shard ",
        shard_index_, " (", session.highest_seq,
        "); seqs count from 1 in each session"));
  }
  session.highest_seq = std::max(session.highest_seq, seq);
  return absl::OkStatus();
}

uint64_t WorkerSessions::EpochOf(absl::string_view worker) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(worker);
  return it == sessions_.end() ? 0 : it->second.epoch;
}

void WorkerSessions::Snapshot(
    google::protobuf::RepeatedPtrField<storage::v1::SessionRecord>* out) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [worker, session] : sessions_) {
    storage::v1::SessionRecord* record = out->Add();
    record->set_worker_id(worker);
    record->set_epoch(session.epoch);
    record->set_highest_seq(session.highest_seq);
  }
}

void WorkerSessions::Restore(
    const google::protobuf::RepeatedPtrField<storage::v1::SessionRecord>&
        records) {
  absl::MutexLock lock(&mu_);
  sessions_.clear();
  for (const storage::v1::SessionRecord& record : records) {
    sessions_[record.worker_id()] = {record.epoch(), record.highest_seq()};
  }
}

void WorkerSessions::RollBack(uint64_t checkpoint, uint64_t step) {
  absl::MutexLock lock(&mu_);
  rollback_checkpoint_ = checkpoint;
  rollback_step_ = step;
  for (auto& [worker, session] : sessions_) {
    session.rolled_back_through = session.epoch;
  }
}

absl::Status WorkerSessions::RolledBack(absl::string_view worker,
                                        uint64_t epoch) const {
  return absl::FailedPreconditionError(absl::StrCat(
      kRolledBackPrefix, rollback_checkpoint_, ": shard ", shard_index_,
      " and the cluster went back to the state before step ", rollback_step_,
      ", so the pushes of worker '", worker, "' in session ", epoch,
      " after it are undone; open a new session and resume from step ",
      rollback_step_, " (ps::Client and psclient do this)"));
}

size_t WorkerSessions::size() const {
  absl::MutexLock lock(&mu_);
  return sessions_.size();
}

}  // namespace ps

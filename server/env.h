// The file system as the checkpoint code sees it: every file and folder
// operation it makes goes through an Env, so that tests can put one in front
// of the disk that fails writes (ENOSPC), fsyncs (EIO) or renames, or cuts
// writes short, without editing the code under test (as LevelDB's Env and
// its fault-injection test do).
//
// Errors are absl::Status values with the path and the system's reason:
// NOT_FOUND for a missing file or folder, RESOURCE_EXHAUSTED for a full disk
// (ENOSPC, EDQUOT), PERMISSION_DENIED for EACCES, EPERM and EROFS, INTERNAL
// for the rest.
//
// Thread safety: Env methods may be called concurrently; a file object is
// used by one thread at a time.
#ifndef PS_SERVER_ENV_H_
#define PS_SERVER_ENV_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ps {

// A file written front to back.
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends all of `data` (retrying short writes) or fails.
  virtual absl::Status Append(absl::string_view data) = 0;
  // Flushes what was appended to the disk (fsync).
  virtual absl::Status Sync() = 0;
  // Closes the file; the destructor closes it too, ignoring errors.
  virtual absl::Status Close() = 0;
};

// A file read front to back.
class SequentialFile {
 public:
  virtual ~SequentialFile() = default;
  // Reads up to `size` bytes into `out`; returns how many (0 at the end).
  virtual absl::StatusOr<size_t> Read(char* out, size_t size) = 0;
};

class Env {
 public:
  virtual ~Env() = default;

  // The real file system. Never deleted.
  static Env* Default();

  // Creates (or truncates) `path` for writing.
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path) = 0;
  // Opens `path` for reading.
  virtual absl::StatusOr<std::unique_ptr<SequentialFile>> NewSequentialFile(
      const std::string& path) = 0;
  // Creates `path` and any missing parents; OK when it exists as a folder.
  virtual absl::Status CreateDirs(const std::string& path) = 0;
  // The names (not paths) of the entries of folder `path`.
  virtual absl::StatusOr<std::vector<std::string>> ListDir(
      const std::string& path) = 0;
  // Removes `path` and, for a folder, everything in it; OK when missing.
  virtual absl::Status RemoveAll(const std::string& path) = 0;
  // Renames `from` to `to` (rename(2): atomic, replaces an empty folder).
  virtual absl::Status Rename(const std::string& from,
                              const std::string& to) = 0;
  // Makes the entries of folder `path` durable (fsync of the folder).
  virtual absl::Status SyncDir(const std::string& path) = 0;
};

// The whole contents of `path`.
absl::StatusOr<std::string> ReadWholeFile(Env* env, const std::string& path);

// The status for a failed system call on `path` with `error` (an errno).
absl::Status ErrnoStatus(absl::string_view what, const std::string& path,
                         int error);

}  // namespace ps

#endif  // PS_SERVER_ENV_H_

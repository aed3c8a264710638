// A program run as a child process (by the tests and bench/ps_load), with its
// stdout on a pipe read line by line, its stderr on a pipe, in a file or
// shared with this process, and signals, SIGKILL and waiting for the exit
// with a timeout.
//
// Thread safety: a ChildProcess is used from one thread at a time. Start only
// from a thread that outlives the child, such as the test's main thread: the
// child gets SIGKILL when the thread that started it exits (PR_SET_PDEATHSIG).
#ifndef PS_TESTS_TESTING_CHILD_PROCESS_H_
#define PS_TESTS_TESTING_CHILD_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ps {

// Where a child's stderr goes.
struct StderrTo {
  // A pipe, read with ChildProcess::ReadAllStderr.
  static StderrTo Pipe() { return StderrTo(); }
  // The file at `path`, created or truncated at the start.
  static StderrTo File(std::string path) {
    return StderrTo{.path = std::move(path), .inherit = false};
  }
  // This process's own stderr.
  static StderrTo Inherit() { return StderrTo{.path = "", .inherit = true}; }

  // Empty (and not inherit): a pipe.
  std::string path;
  bool inherit = false;
};

// One child process. stdout is a pipe; stderr is a pipe, a file or this
// process's. The
// destructor SIGKILLs and reaps it if it still runs; it also dies with the
// test process.
class ChildProcess {
 public:
  using Clock = std::chrono::steady_clock;

  // Runs `binary` with `args` (argv[1..]). Returns nullptr when the process
  // could not be started, or the stderr file not opened; a binary that
  // cannot be executed exits with status 127.
  static std::unique_ptr<ChildProcess> Start(
      const std::string& binary, const std::vector<std::string>& args,
      StderrTo stderr_to);

  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // The next line of stdout (without its '\n'); nullopt at EOF or the
  // timeout.
  std::optional<std::string> ReadLine(Clock::duration timeout);
  // Everything on stdout not yet returned by ReadLine, read until stdout
  // closes or the timeout.
  std::string ReadAllStdout(Clock::duration timeout);
  // Everything on stderr, read until it closes or the timeout.
  // REQUIRES: started with StderrTo::Pipe() (otherwise returns "").
  std::string ReadAllStderr(Clock::duration timeout);

  // Sends `signal_number`, unless the process has been reaped.
  void Signal(int signal_number);
  // Sends SIGKILL and reaps the process.
  void Kill();
  // The wait status once the process has exited (also when it was reaped
  // before); nullopt at the timeout.
  std::optional<int> WaitForExit(Clock::duration timeout);

  // Whether the process has not been reaped yet.
  bool running() const { return !reaped_; }
  pid_t pid() const { return pid_; }

 private:
  // `stderr_fd` is -1 when stderr goes to a file.
  ChildProcess(pid_t pid, int stdout_fd, int stderr_fd)
      : pid_(pid), stdout_(stdout_fd), stderr_(stderr_fd) {}

  const pid_t pid_;
  const int stdout_;
  const int stderr_;
  std::string stdout_buffer_;
  std::string stderr_buffer_;
  bool reaped_ = false;
  // Set when reaped with a known status.
  std::optional<int> wait_status_;
};

}  // namespace ps

#endif  // PS_COMMON_CHILD_PROCESS_H_

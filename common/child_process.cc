#include "common/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

namespace ps {
namespace {

using Clock = ChildProcess::Clock;

// Appends what `fd` has to `buffer`, waiting until `deadline`; false at EOF,
// error or the deadline, true after data or an interrupted wait.
bool ReadSome(int fd, std::string& buffer, Clock::time_point deadline) {
  if (fd < 0) return false;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - Clock::now());
  if (left.count() <= 0) return false;
  pollfd poll_fd{.fd = fd, .events = POLLIN, .revents = 0};
  const int ready = ::poll(&poll_fd, 1, static_cast<int>(left.count()));
  if (ready < 0 && errno == EINTR) return true;
  if (ready <= 0) return false;
  char chunk[4096];
  const ssize_t n = ::read(fd, chunk, sizeof(chunk));
  if (n < 0 && errno == EINTR) return true;
  if (n <= 0) return false;
  buffer.append(chunk, static_cast<size_t>(n));
  return true;
}

// Reads `fd` into `buffer` until EOF or `timeout`; returns the buffer.
std::string ReadAll(int fd, std::string& buffer, Clock::duration timeout) {
  const auto deadline = Clock::now() + timeout;
  while (ReadSome(fd, buffer, deadline)) {
  }
  return buffer;
}

void CloseBoth(const int fds[2]) {
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace

std::unique_ptr<ChildProcess> ChildProcess::Start(
    const std::string& binary, const std::vector<std::string>& args,
    StderrTo stderr_to) {
  // Everything the child needs is built before fork: between fork and exec
  // only async-signal-safe calls are allowed.
  std::vector<std::string> storage = {binary};
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : storage) argv.push_back(arg.data());
  argv.push_back(nullptr);

  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return nullptr;
  // err[0] is the parent's end (-1 for a file), err[1] the child's (-1 to
  // leave stderr as it is).
  int err[2] = {-1, -1};
  if (stderr_to.inherit) {
    // Nothing to set up.
  } else if (stderr_to.path.empty()) {
    if (::pipe2(err, O_CLOEXEC) != 0) {
      CloseBoth(out);
      return nullptr;
    }
  } else {
    err[1] = ::open(stderr_to.path.c_str(),
                    O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (err[1] < 0) {
      CloseBoth(out);
      return nullptr;
    }
  }

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(out[1], STDOUT_FILENO);
    if (err[1] >= 0) ::dup2(err[1], STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  if (err[1] >= 0) ::close(err[1]);
  if (pid < 0) {
    ::close(out[0]);
    if (err[0] >= 0) ::close(err[0]);
    return nullptr;
  }
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, out[0], err[0]));
}

ChildProcess::~ChildProcess() {
  Kill();
  ::close(stdout_);
  if (stderr_ >= 0) ::close(stderr_);
}

std::optional<std::string> ChildProcess::ReadLine(Clock::duration timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    const size_t newline = stdout_buffer_.find('\n');
    if (newline != std::string::npos) {
      std::string line = stdout_buffer_.substr(0, newline);
      stdout_buffer_.erase(0, newline + 1);
      return line;
    }
    if (!ReadSome(stdout_, stdout_buffer_, deadline)) return std::nullopt;
  }
}

std::string ChildProcess::ReadAllStdout(Clock::duration timeout) {
  return ReadAll(stdout_, stdout_buffer_, timeout);
}

std::string ChildProcess::ReadAllStderr(Clock::duration timeout) {
  return ReadAll(stderr_, stderr_buffer_, timeout);
}

void ChildProcess::Signal(int signal_number) {
  if (!reaped_) ::kill(pid_, signal_number);
}

void ChildProcess::Kill() {
  if (reaped_) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  pid_t done;
  do {
    done = ::waitpid(pid_, &status, 0);
  } while (done < 0 && errno == EINTR);
  reaped_ = true;
  if (done == pid_) wait_status_ = status;
}

std::optional<int> ChildProcess::WaitForExit(Clock::duration timeout) {
  if (reaped_) return wait_status_;
  const auto deadline = Clock::now() + timeout;
  while (true) {
    int status = 0;
    const pid_t done = ::waitpid(pid_, &status, WNOHANG);
    if (done == pid_) {
      reaped_ = true;
      wait_status_ = status;
      return status;
    }
    if (done < 0 && errno != EINTR) return std::nullopt;
    if (Clock::now() >= deadline) return std::nullopt;
    // There is no descriptor to wait on for a child's exit.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace ps

// Makes the synchronization of Debian's Abseil and gRPC visible to
// ThreadSanitizer. Linked into every program of the ThreadSanitizer build
// only (scripts/sanitize.sh tsan, through tsan_sync.cmake).
//
// Debian builds both without ThreadSanitizer, so what orders their threads
// (atomics and futexes) tells it nothing. The definitions below interpose
// on the libraries' functions (the program exports them, so calls from
// libgrpc and from Abseil itself bind here too), call the real function
// found with dlsym(RTLD_NEXT), and tell ThreadSanitizer what the call
// orders.
//
// absl::Mutex, CondVar and Notification (gRPC's own locks are absl::Mutex
// too), annotated as Abseil annotates itself when built with
// ThreadSanitizer (absl/synchronization/mutex.cc, "delicate annotation
// dance"):
//   - ThreadSanitizer's view of the lock is taken just after the real lock
//     and given up just before the real unlock, so that during every real
//     call this thread does not hold it in ThreadSanitizer's view.
//   - A Condition is evaluated by whichever thread holds the lock at the
//     time, often the one unlocking on behalf of a waiter: Condition::Eval
//     takes and gives up the lock in ThreadSanitizer's view around it.
//   - Notification's fast paths read an atomic flag inside the library:
//     Notify releases, and a wait that saw the notification acquires.
// absl::BlockingCounter and absl::Barrier are not covered (nothing here
// uses them).
//
// gRPC's completion queue: everything a thread did before it started an
// operation (grpc_cq_begin_op, which every call batch, server request and
// alarm goes through) happens before the thread that takes the operation's
// completion from the queue (grpc_completion_queue_next or _pluck; the
// C++ callback API's threads use _next) runs its callback.
//
// A callback server call is destroyed (and its reactor's OnDone run) by
// the thread that drops the last of its references, which may do so in
// libgrpc++: ServerCallbackCall::ScheduleOnDone acquires the count that
// every other thread released when it dropped its reference.
//
// The interposed functions are those of Abseil 20220623 and gRPC 1.51
// (Debian 12).

#include <dlfcn.h>
#include <grpc/grpc.h>
#include <grpcpp/support/server_callback.h>
#include <sanitizer/tsan_interface.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/base/options.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace {

// The lock operation this thread is inside, for Condition::Eval.
struct Operation {
  void* mu = nullptr;
  unsigned flags = 0;  // __tsan_mutex_read_lock for a reader
};
thread_local Operation current;

class InOperation {
 public:
  InOperation(void* mu, unsigned flags) : saved_(current) {
    current = {mu, flags};
  }
  ~InOperation() { current = saved_; }

 private:
  Operation saved_;
};

void Acquired(void* mu, unsigned flags) {
  __tsan_mutex_pre_lock(mu, flags);
  __tsan_mutex_post_lock(mu, flags, 0);
}

void Releasing(void* mu, unsigned flags) {
  __tsan_mutex_pre_unlock(mu, flags);
  __tsan_mutex_post_unlock(mu, flags);
}

// How the calling thread holds `mu` (which it must hold): Mutex's first
// word has kMuWriter (0x8 in mutex.cc) set while a writer holds it.
unsigned HeldFlags(const absl::Mutex* mu) {
  static_assert(sizeof(absl::Mutex) == sizeof(intptr_t));
  intptr_t word = reinterpret_cast<const std::atomic<intptr_t>*>(mu)->load(
      std::memory_order_relaxed);
  return (word & 0x8) != 0 ? 0 : __tsan_mutex_read_lock;
}

#if !ABSL_OPTION_USE_INLINE_NAMESPACE
#error "the mangled names below assume Abseil's inline namespace"
#endif
#define PS_STR2(x) #x
#define PS_STR(x) PS_STR2(x)

// The next definition of `name` after this program's, in the libraries.
void* Real(const std::string& name) {
  void* f = dlsym(RTLD_NEXT, name.c_str());
  if (f == nullptr) {
    std::fprintf(stderr, "tsan_sync: %s not found\n", name.c_str());
    std::abort();
  }
  return f;
}

// The mangled name of absl::<tail>, where `tail` is the mangled name after
// the namespaces (e.g. "5Mutex4LockEv"; "S0_" in it is absl::<inline
// namespace>); `konst` for a const member function.
std::string Absl(const char* tail, bool konst = false) {
  const std::string ns = PS_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  return std::string(konst ? "_ZNK" : "_ZN") + "4absl" +
         std::to_string(ns.size()) + ns + tail;
}

// REAL(type, name) is the libraries' function `name`, looked up once
// (relaxed: a function's address needs no ordering, and ThreadSanitizer
// must not see one here).
#define REAL(type, name)                         \
  ([]() -> type {                                \
    static std::atomic<void*> f{nullptr};        \
    void* p = f.load(std::memory_order_relaxed); \
    if (p == nullptr) {                          \
      p = Real(name);                            \
      f.store(p, std::memory_order_relaxed);     \
    }                                            \
    return reinterpret_cast<type>(p);            \
  }())

using MutexFn = void (*)(absl::Mutex*);
using TryFn = bool (*)(absl::Mutex*);
using CondFn = void (*)(absl::Mutex*, const absl::Condition&);
using CondTimeoutFn = bool (*)(absl::Mutex*, const absl::Condition&,
                               absl::Duration);
using CondDeadlineFn = bool (*)(absl::Mutex*, const absl::Condition&,
                                absl::Time);
using WaitFn = void (*)(absl::CondVar*, absl::Mutex*);
using WaitTimeoutFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Duration);
using WaitDeadlineFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Time);
using EvalFn = bool (*)(const absl::Condition*);
using NotifyFn = void (*)(absl::Notification*);
using NotifiedFn = void (*)(const absl::Notification*);
using NotifiedTimeoutFn = bool (*)(const absl::Notification*, absl::Duration);
using NotifiedDeadlineFn = bool (*)(const absl::Notification*, absl::Time);

// Whether this thread is inside one of the operations below on `mu`: the
// library's *WithTimeout functions call their *WithDeadline counterparts,
// and only the outer call annotates.
bool Nested(const absl::Mutex* mu) { return current.mu == mu; }

// A function that waits with `mu` held, giving it up meanwhile.
template <typename F>
auto WhileWaiting(absl::Mutex* mu, F wait) {
  if (Nested(mu)) return wait();
  const unsigned flags = HeldFlags(mu);
  Releasing(mu, flags);
  struct Reacquire {
    absl::Mutex* mu;
    unsigned flags;
    ~Reacquire() { Acquired(mu, flags); }
  } reacquire{mu, flags};
  InOperation op(mu, flags);
  return wait();
}

// A function that takes `mu` (as a reader when `flags` says so).
template <typename F>
auto Taking(absl::Mutex* mu, unsigned flags, F take) {
  if (Nested(mu)) return take();
  struct Acquire {
    absl::Mutex* mu;
    unsigned flags;
    ~Acquire() { Acquired(mu, flags); }
  } acquire{mu, flags};
  InOperation op(mu, flags);
  return take();
}

// The flag of a Notification: its second member, after its Mutex.
void* NotifiedFlag(const absl::Notification* n) {
  static_assert(sizeof(absl::Notification) == 2 * sizeof(absl::Mutex));
  return const_cast<char*>(reinterpret_cast<const char*>(n) +
                           sizeof(absl::Mutex));
}

void Notified(const absl::Notification* n) {
  __tsan_acquire(const_cast<absl::Notification*>(n));
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

// As Abseil's own: a no-op for a lock whose constructor was not annotated
// (one of gRPC's, built in a library), which gRPC may destroy on another
// thread than the last to hold it, ordered by reference counts
// ThreadSanitizer does not see.
Mutex::~Mutex() {
  __tsan_mutex_destroy(this, __tsan_mutex_not_static);
  REAL(MutexFn, Absl("5MutexD1Ev"))(this);
}

void Mutex::Lock() {
  REAL(MutexFn, Absl("5Mutex4LockEv"))(this);
  Acquired(this, 0);
}

void Mutex::ReaderLock() {
  REAL(MutexFn, Absl("5Mutex10ReaderLockEv"))(this);
  Acquired(this, __tsan_mutex_read_lock);
}

bool Mutex::TryLock() {
  if (!REAL(TryFn, Absl("5Mutex7TryLockEv"))(this)) return false;
  Acquired(this, __tsan_mutex_try_lock);
  return true;
}

bool Mutex::ReaderTryLock() {
  if (!REAL(TryFn, Absl("5Mutex13ReaderTryLockEv"))(this)) return false;
  Acquired(this, __tsan_mutex_try_read_lock);
  return true;
}

void Mutex::Unlock() {
  Releasing(this, 0);
  InOperation op(this, 0);
  REAL(MutexFn, Absl("5Mutex6UnlockEv"))(this);
}

void Mutex::ReaderUnlock() {
  Releasing(this, __tsan_mutex_read_lock);
  InOperation op(this, __tsan_mutex_read_lock);
  REAL(MutexFn, Absl("5Mutex12ReaderUnlockEv"))(this);
}

void Mutex::LockWhen(const Condition& cond) {
  Taking(this, 0, [&] {
    REAL(CondFn, Absl("5Mutex8LockWhenERKNS0_9ConditionE"))(this, cond);
  });
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  Taking(this, __tsan_mutex_read_lock, [&] {
    REAL(CondFn, Absl("5Mutex14ReaderLockWhenERKNS0_9ConditionE"))(this, cond);
  });
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  return Taking(this, 0, [&] {
    return REAL(
        CondTimeoutFn,
        Absl("5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE"))(
        this, cond, timeout);
  });
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  return Taking(this, __tsan_mutex_read_lock, [&] {
    return REAL(CondTimeoutFn, Absl("5Mutex25ReaderLockWhenWithTimeoutERKNS0_"
                                    "9ConditionENS0_8DurationE"))(this, cond,
                                                                  timeout);
  });
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  return Taking(this, 0, [&] {
    return REAL(
        CondDeadlineFn,
        Absl("5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE"))(
        this, cond, deadline);
  });
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  return Taking(this, __tsan_mutex_read_lock, [&] {
    return REAL(
        CondDeadlineFn,
        Absl("5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE"))(
        this, cond, deadline);
  });
}

void Mutex::Await(const Condition& cond) {
  WhileWaiting(this, [&] {
    REAL(CondFn, Absl("5Mutex5AwaitERKNS0_9ConditionE"))(this, cond);
  });
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  return WhileWaiting(this, [&] {
    return REAL(
        CondTimeoutFn,
        Absl("5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE"))(
        this, cond, timeout);
  });
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  return WhileWaiting(this, [&] {
    return REAL(CondDeadlineFn,
                Absl("5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE"))(
        this, cond, deadline);
  });
}

void CondVar::Wait(Mutex* mu) {
  WhileWaiting(mu, [&] {
    REAL(WaitFn, Absl("7CondVar4WaitEPNS0_5MutexE"))(this, mu);
  });
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  return WhileWaiting(mu, [&] {
    return REAL(WaitTimeoutFn,
                Absl("7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE"))(
        this, mu, timeout);
  });
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  return WhileWaiting(mu, [&] {
    return REAL(WaitDeadlineFn,
                Absl("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE"))(
        this, mu, deadline);
  });
}

// Called by the thread that holds the lock, inside one of the operations
// above, in which this thread does not hold it in ThreadSanitizer's view.
bool Condition::Eval() const {
  const Operation op = current;
  if (op.mu == nullptr) {
    return REAL(EvalFn, Absl("9Condition4EvalEv", true))(this);
  }
  Acquired(op.mu, op.flags);
  const bool result = REAL(EvalFn, Absl("9Condition4EvalEv", true))(this);
  Releasing(op.mu, op.flags);
  return result;
}

void Notification::Notify() {
  __tsan_release(this);
  __tsan_release(NotifiedFlag(this));  // for HasBeenNotified(), inline
  REAL(NotifyFn, Absl("12Notification6NotifyEv"))(this);
}

void Notification::WaitForNotification() const {
  REAL(NotifiedFn, Absl("12Notification19WaitForNotificationEv", true))(this);
  Notified(this);
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  const bool notified =
      REAL(NotifiedTimeoutFn,
           Absl("12Notification30WaitForNotificationWithTimeoutENS0_8DurationE",
                true))(this, timeout);
  if (notified) Notified(this);
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  const bool notified = REAL(
      NotifiedDeadlineFn,
      Absl("12Notification31WaitForNotificationWithDeadlineENS0_4TimeE", true))(
      this, deadline);
  if (notified) Notified(this);
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl

// gRPC's completion queue. grpc_cq_begin_op is a C++ function of gRPC's
// core (the library exports it for libgrpc++ and calls it through its own
// PLT); the others are its C API.

using BeginOpFn = bool (*)(grpc_completion_queue*, void*);
using NextFn = grpc_event (*)(grpc_completion_queue*, gpr_timespec, void*);
using PluckFn = grpc_event (*)(grpc_completion_queue*, void*, gpr_timespec,
                               void*);

bool grpc_cq_begin_op(grpc_completion_queue* cq, void* tag) {
  __tsan_release(tag);
  return REAL(BeginOpFn, "_Z16grpc_cq_begin_opP21grpc_completion_queuePv")(cq,
                                                                           tag);
}

extern "C" {

grpc_event grpc_completion_queue_next(grpc_completion_queue* cq,
                                      gpr_timespec deadline, void* reserved) {
  const grpc_event event =
      REAL(NextFn, "grpc_completion_queue_next")(cq, deadline, reserved);
  if (event.type == GRPC_OP_COMPLETE) __tsan_acquire(event.tag);
  return event;
}

grpc_event grpc_completion_queue_pluck(grpc_completion_queue* cq, void* tag,
                                       gpr_timespec deadline, void* reserved) {
  const grpc_event event =
      REAL(PluckFn, "grpc_completion_queue_pluck")(cq, tag, deadline, reserved);
  if (event.type == GRPC_OP_COMPLETE) __tsan_acquire(event.tag);
  return event;
}

}  // extern "C"

// Called by the thread that dropped the call's last reference.
void grpc::internal::ServerCallbackCall::ScheduleOnDone(bool inline_ondone) {
  __tsan_acquire(&callbacks_outstanding_);
  using Fn = void (*)(ServerCallbackCall*, bool);
  REAL(Fn, "_ZN4grpc8internal18ServerCallbackCall14ScheduleOnDoneEb")
  (this, inline_ondone);
}

// Minimal stackful fibers for the interpreter: a context is a saved stack pointer; a switch
// saves the callee-saved registers (and the SSE/x87 control words) on the current stack and
// restores them from the other one. x86-64 uses a 20-instruction assembly switch (glibc's
// swapcontext makes a sigprocmask system call per switch, ~50x slower); other targets fall
// back to ucontext.
#pragma once

#include <cstddef>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace tandem::interp {

struct FiberContext {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  // AddressSanitizer bookkeeping (unused otherwise): the stack, and ASan's fake stack.
  const void* stack_bottom = nullptr;
  size_t stack_size = 0;
  void* fake_stack = nullptr;
};

// Prepares `ctx` to run `entry()` on [stack, stack + size) at its first SwitchFiber. `entry`
// must never return (it switches away for the last time instead).
void MakeFiber(FiberContext* ctx, void* stack, size_t size, void (*entry)());

// Saves the running context in `from` and resumes `to`. `final` marks the last switch away
// from a fiber that finished (its ASan fake stack is released).
void SwitchFiber(FiberContext* from, FiberContext* to, bool final = false);

// First thing a new fiber does: completes the switch into it and records the stack it came
// from in `from` (under ASan; no-op otherwise).
void FiberStarted(FiberContext* from);

}  // namespace tandem::interp

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
};

// Prepares `ctx` to run `entry()` on [stack, stack + size) at its first SwitchFiber. `entry`
// must never return (it switches away for the last time instead).
void MakeFiber(FiberContext* ctx, void* stack, size_t size, void (*entry)());

// Saves the running context in `from` and resumes `to`.
void SwitchFiber(FiberContext* from, FiberContext* to);

}  // namespace tandem::interp

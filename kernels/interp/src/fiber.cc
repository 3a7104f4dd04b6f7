#include "fiber.h"

#include <cstdint>
#include <cstring>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define TANDEM_INTERP_ASAN 1
#endif

namespace tandem::interp {
namespace {

// A reused stack still carries the shadow of frames that never returned (the previous
// fiber's entry frame): clear it.
void ResetStackShadow(void* stack, size_t size) {
#ifdef TANDEM_INTERP_ASAN
  __asan_unpoison_memory_region(stack, size);
#else
  (void)stack, (void)size;
#endif
}

void BeforeSwitch(FiberContext* from, FiberContext* to, bool final) {
#ifdef TANDEM_INTERP_ASAN
  __sanitizer_start_switch_fiber(final ? nullptr : &from->fake_stack, to->stack_bottom,
                                 to->stack_size);
#else
  (void)from, (void)to, (void) final;
#endif
}

void AfterSwitch(FiberContext* self) {
#ifdef TANDEM_INTERP_ASAN
  __sanitizer_finish_switch_fiber(self->fake_stack, nullptr, nullptr);
#else
  (void)self;
#endif
}

}  // namespace

void FiberStarted(FiberContext* from) {
#ifdef TANDEM_INTERP_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &from->stack_bottom, &from->stack_size);
#else
  (void)from;
#endif
}

}  // namespace tandem::interp

#if defined(__x86_64__)

// void tandem_interp_swap(void** save_sp, void* load_sp)   (System V AMD64)
asm(R"(
  .pushsection .text
  .globl tandem_interp_swap
  .hidden tandem_interp_swap
  .type tandem_interp_swap,@function
tandem_interp_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size tandem_interp_swap,.-tandem_interp_swap
  .popsection
)");

extern "C" void tandem_interp_swap(void** save_sp, void* load_sp);

namespace tandem::interp {

void MakeFiber(FiberContext* ctx, void* stack, size_t size, void (*entry)()) {
  ResetStackShadow(stack, size);
  auto top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15};
  // Frame popped by the first switch: control words, r15..rbp, return address = entry. After
  // `ret`, rsp = top - 8, as right after a call (rsp + 8 16-byte aligned).
  auto* frame = reinterpret_cast<uint64_t*>(top - 72);
  const uint32_t mxcsr = 0x1f80;
  const uint16_t fpcw = 0x037f;
  std::memset(frame, 0, 72);
  std::memcpy(frame, &mxcsr, sizeof(mxcsr));
  std::memcpy(reinterpret_cast<char*>(frame) + 4, &fpcw, sizeof(fpcw));
  frame[7] = reinterpret_cast<uint64_t>(entry);
  frame[8] = 0;  // fake return address of entry (it never returns)
  ctx->sp = frame;
  ctx->stack_bottom = stack;
  ctx->stack_size = size;
  ctx->fake_stack = nullptr;
}

void SwitchFiber(FiberContext* from, FiberContext* to, bool final) {
  BeforeSwitch(from, to, final);
  tandem_interp_swap(&from->sp, to->sp);
  AfterSwitch(from);
}

}  // namespace tandem::interp

#else

namespace tandem::interp {

void MakeFiber(FiberContext* ctx, void* stack, size_t size, void (*entry)()) {
  ResetStackShadow(stack, size);
  getcontext(&ctx->uc);
  ctx->uc.uc_stack.ss_sp = stack;
  ctx->uc.uc_stack.ss_size = size;
  ctx->uc.uc_link = nullptr;
  makecontext(&ctx->uc, entry, 0);
  ctx->stack_bottom = stack;
  ctx->stack_size = size;
  ctx->fake_stack = nullptr;
}

void SwitchFiber(FiberContext* from, FiberContext* to, bool final) {
  BeforeSwitch(from, to, final);
  swapcontext(&from->uc, &to->uc);
  AfterSwitch(from);
}

}  // namespace tandem::interp

#endif

#include "fiber.h"

#include <cstdint>
#include <cstring>

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
}

void SwitchFiber(FiberContext* from, FiberContext* to) { tandem_interp_swap(&from->sp, to->sp); }

}  // namespace tandem::interp

#else

namespace tandem::interp {

void MakeFiber(FiberContext* ctx, void* stack, size_t size, void (*entry)()) {
  getcontext(&ctx->uc);
  ctx->uc.uc_stack.ss_sp = stack;
  ctx->uc.uc_stack.ss_size = size;
  ctx->uc.uc_link = nullptr;
  makecontext(&ctx->uc, entry, 0);
}

void SwitchFiber(FiberContext* from, FiberContext* to) { swapcontext(&from->uc, &to->uc); }

}  // namespace tandem::interp

#endif

#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <ucontext.h>
#include <unistd.h>
static void where(const char* what, void* pc) {
  Dl_info info;
  if (dladdr(pc, &info) && info.dli_fname) {
    fprintf(stderr, "  %s %p in %s (%s) offset %#lx\n", what, pc, info.dli_fname,
            info.dli_sname ? info.dli_sname : "?", (unsigned long)((char*)pc - (char*)info.dli_fbase));
  } else {
    fprintf(stderr, "  %s %p (no object)\n", what, pc);
  }
}
static void handler(int sig, siginfo_t* si, void* ctx) {
  ucontext_t* uc = (ucontext_t*)ctx;
  fprintf(stderr, "SEGV-DIAG signal %d at address %p\n", sig, si->si_addr);
  where("rip", (void*)uc->uc_mcontext.gregs[REG_RIP]);
  void** sp = (void**)uc->uc_mcontext.gregs[REG_RSP];
  for (int i = 0; i < 48; ++i) {  // return-address candidates on the stack
    Dl_info info;
    if (dladdr(sp[i], &info) && info.dli_fname && info.dli_sname) where("stack", sp[i]);
  }
  fflush(stderr);
  _exit(139);
}
__attribute__((constructor)) static void install(void) {
  static char stack[1 << 16];
  stack_t ss = {.ss_sp = stack, .ss_size = sizeof stack};
  sigaltstack(&ss, 0);
  struct sigaction sa = {0};
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, 0);
}

// The core's clock and the vector rates the CPU kernels' bound rests on (AVX2, one thread):
// a chain of dependent integer adds (1 cycle each: the clock), 10 independent 256-bit FMA
// chains (their throughput), one dependent FMA chain (their latency), 8 independent 256-bit
// divisions (the divider's throughput).
// gcc -O2 pipe_probe.c -o pipe_probe && ./pipe_probe
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#define REPEAT8(s) s s s s s s s s

int main(void) {
  const long n = 100000000;
  double t0 = now();
  __asm__ volatile("mov %0, %%rcx\n1:\n" REPEAT8("add $1, %%rax\n") "dec %%rcx\n jnz 1b\n"
                   :: "r"(n) : "rcx", "rax");
  const double add_ns = (now() - t0) / (n * 8.0) * 1e9;
  const double ghz = 1.0 / add_ns;

  t0 = now();
  __asm__ volatile(
      "vxorps %%ymm0,%%ymm0,%%ymm0\n vxorps %%ymm1,%%ymm1,%%ymm1\n vxorps %%ymm2,%%ymm2,%%ymm2\n"
      "vxorps %%ymm3,%%ymm3,%%ymm3\n vxorps %%ymm4,%%ymm4,%%ymm4\n vxorps %%ymm5,%%ymm5,%%ymm5\n"
      "vxorps %%ymm6,%%ymm6,%%ymm6\n vxorps %%ymm7,%%ymm7,%%ymm7\n vxorps %%ymm8,%%ymm8,%%ymm8\n"
      "vxorps %%ymm9,%%ymm9,%%ymm9\n vxorps %%ymm14,%%ymm14,%%ymm14\n vxorps %%ymm15,%%ymm15,%%ymm15\n"
      "mov %0, %%rcx\n2:\n"
      "vfmadd231ps %%ymm14,%%ymm15,%%ymm0\n vfmadd231ps %%ymm14,%%ymm15,%%ymm1\n"
      "vfmadd231ps %%ymm14,%%ymm15,%%ymm2\n vfmadd231ps %%ymm14,%%ymm15,%%ymm3\n"
      "vfmadd231ps %%ymm14,%%ymm15,%%ymm4\n vfmadd231ps %%ymm14,%%ymm15,%%ymm5\n"
      "vfmadd231ps %%ymm14,%%ymm15,%%ymm6\n vfmadd231ps %%ymm14,%%ymm15,%%ymm7\n"
      "vfmadd231ps %%ymm14,%%ymm15,%%ymm8\n vfmadd231ps %%ymm14,%%ymm15,%%ymm9\n"
      "dec %%rcx\n jnz 2b\n" :: "r"(n)
      : "rcx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm14", "xmm15");
  const double fma_ns = (now() - t0) / (n * 10.0) * 1e9;

  t0 = now();
  __asm__ volatile("vxorps %%ymm0,%%ymm0,%%ymm0\n mov %0, %%rcx\n3:\n"
                   "vfmadd231ps %%ymm14,%%ymm15,%%ymm0\n vfmadd231ps %%ymm14,%%ymm15,%%ymm0\n"
                   "vfmadd231ps %%ymm14,%%ymm15,%%ymm0\n vfmadd231ps %%ymm14,%%ymm15,%%ymm0\n"
                   "dec %%rcx\n jnz 3b\n" :: "r"(n) : "rcx", "xmm0", "xmm14", "xmm15");
  const double fma_lat_ns = (now() - t0) / (n * 4.0) * 1e9;

  const long nd = n / 5;
  t0 = now();
  __asm__ volatile(
      "vpcmpeqd %%ymm15,%%ymm15,%%ymm15\n vpsrld $2,%%ymm15,%%ymm15\n"  // 0x3fffffff: ~2.0
      "vmovaps %%ymm15,%%ymm0\n vmovaps %%ymm15,%%ymm1\n vmovaps %%ymm15,%%ymm2\n"
      "vmovaps %%ymm15,%%ymm3\n vmovaps %%ymm15,%%ymm4\n vmovaps %%ymm15,%%ymm5\n"
      "vmovaps %%ymm15,%%ymm6\n vmovaps %%ymm15,%%ymm7\n mov %0, %%rcx\n4:\n"
      "vdivps %%ymm15,%%ymm15,%%ymm0\n vdivps %%ymm15,%%ymm15,%%ymm1\n"
      "vdivps %%ymm15,%%ymm15,%%ymm2\n vdivps %%ymm15,%%ymm15,%%ymm3\n"
      "vdivps %%ymm15,%%ymm15,%%ymm4\n vdivps %%ymm15,%%ymm15,%%ymm5\n"
      "vdivps %%ymm15,%%ymm15,%%ymm6\n vdivps %%ymm15,%%ymm15,%%ymm7\n"
      "dec %%rcx\n jnz 4b\n" :: "r"(nd)
      : "rcx", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm15");
  const double div_ns = (now() - t0) / (nd * 8.0) * 1e9;

  printf("clock %.2f GHz (dependent integer adds)\n", ghz);
  printf("256-bit FMA: %.3f ns each independent = %.2f per cycle; latency %.2f cycles\n", fma_ns,
         add_ns / fma_ns, fma_lat_ns / add_ns);
  printf("256-bit vdivps: %.3f ns each independent = %.2f cycles\n", div_ns, div_ns / add_ns);
  return 0;
}

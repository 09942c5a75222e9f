// Which Zen pipes do these share with the FMAs? 8 independent FMA chains plus 4 independent ops of one kind per iteration.
#include <stdio.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define FMAS "vfmadd231ps %%ymm14,%%ymm15,%%ymm0\n vfmadd231ps %%ymm14,%%ymm15,%%ymm1\n vfmadd231ps %%ymm14,%%ymm15,%%ymm2\n vfmadd231ps %%ymm14,%%ymm15,%%ymm3\n vfmadd231ps %%ymm14,%%ymm15,%%ymm4\n vfmadd231ps %%ymm14,%%ymm15,%%ymm5\n vfmadd231ps %%ymm14,%%ymm15,%%ymm6\n vfmadd231ps %%ymm14,%%ymm15,%%ymm7\n"
#define RUN(name, body) { double t0=now(); __asm__ volatile("vxorps %%ymm0,%%ymm0,%%ymm0\n vxorps %%ymm1,%%ymm1,%%ymm1\n vxorps %%ymm2,%%ymm2,%%ymm2\n vxorps %%ymm3,%%ymm3,%%ymm3\n vxorps %%ymm4,%%ymm4,%%ymm4\n vxorps %%ymm5,%%ymm5,%%ymm5\n vxorps %%ymm6,%%ymm6,%%ymm6\n vxorps %%ymm7,%%ymm7,%%ymm7\n vxorps %%ymm14,%%ymm14,%%ymm14\n vxorps %%ymm15,%%ymm15,%%ymm15\n vxorps %%ymm13,%%ymm13,%%ymm13\n mov %0, %%rcx\n 1:\n" body "dec %%rcx\n jnz 1b\n" :: "r"(n) : "rcx","xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15"); double c=(now()-t0)/n*2.75e9; printf("%-10s %.2f cycles/iter\n", name, c);}
int main(void){ const long n=50000000;
for(int k=0;k<2;k++){
RUN("fma8", FMAS)
RUN("+4 add", FMAS "vaddps %%ymm13,%%ymm15,%%ymm8\n vaddps %%ymm13,%%ymm15,%%ymm9\n vaddps %%ymm13,%%ymm15,%%ymm10\n vaddps %%ymm13,%%ymm15,%%ymm11\n")
RUN("+4 max", FMAS "vmaxps %%ymm13,%%ymm15,%%ymm8\n vmaxps %%ymm13,%%ymm15,%%ymm9\n vmaxps %%ymm13,%%ymm15,%%ymm10\n vmaxps %%ymm13,%%ymm15,%%ymm11\n")
RUN("+4 cmp", FMAS "vcmpltps %%ymm13,%%ymm15,%%ymm8\n vcmpltps %%ymm13,%%ymm15,%%ymm9\n vcmpltps %%ymm13,%%ymm15,%%ymm10\n vcmpltps %%ymm13,%%ymm15,%%ymm11\n")
RUN("+4 blendv", FMAS "vblendvps %%ymm13,%%ymm15,%%ymm14,%%ymm8\n vblendvps %%ymm13,%%ymm15,%%ymm14,%%ymm9\n vblendvps %%ymm13,%%ymm15,%%ymm14,%%ymm10\n vblendvps %%ymm13,%%ymm15,%%ymm14,%%ymm11\n")
RUN("+4 andps", FMAS "vandps %%ymm13,%%ymm15,%%ymm8\n vandps %%ymm13,%%ymm15,%%ymm9\n vandps %%ymm13,%%ymm15,%%ymm10\n vandps %%ymm13,%%ymm15,%%ymm11\n")
RUN("+4 pslld", FMAS "vpslld $23,%%ymm15,%%ymm8\n vpslld $23,%%ymm15,%%ymm9\n vpslld $23,%%ymm15,%%ymm10\n vpslld $23,%%ymm15,%%ymm11\n")
RUN("+4 paddd", FMAS "vpaddd %%ymm13,%%ymm15,%%ymm8\n vpaddd %%ymm13,%%ymm15,%%ymm9\n vpaddd %%ymm13,%%ymm15,%%ymm10\n vpaddd %%ymm13,%%ymm15,%%ymm11\n")
RUN("+4 permps", FMAS "vpermps %%ymm13,%%ymm15,%%ymm8\n vpermps %%ymm13,%%ymm15,%%ymm9\n vpermps %%ymm13,%%ymm15,%%ymm10\n vpermps %%ymm13,%%ymm15,%%ymm11\n")
RUN("+4 rcpps", FMAS "vrcpps %%ymm15,%%ymm8\n vrcpps %%ymm15,%%ymm9\n vrcpps %%ymm15,%%ymm10\n vrcpps %%ymm15,%%ymm11\n")
RUN("+4 roundps", FMAS "vroundps $0,%%ymm15,%%ymm8\n vroundps $0,%%ymm15,%%ymm9\n vroundps $0,%%ymm15,%%ymm10\n vroundps $0,%%ymm15,%%ymm11\n")
RUN("+4 cvtps2dq", FMAS "vcvtps2dq %%ymm15,%%ymm8\n vcvtps2dq %%ymm15,%%ymm9\n vcvtps2dq %%ymm15,%%ymm10\n vcvtps2dq %%ymm15,%%ymm11\n")
RUN("+1 divps", FMAS "vdivps %%ymm13,%%ymm15,%%ymm8\n")
}}

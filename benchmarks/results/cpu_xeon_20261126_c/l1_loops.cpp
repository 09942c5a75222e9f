// Cycles per 16 elements of the header's sigmoid, of one softmax weight (exp2_in_range) and
// of a division alone, on 2048 floats in L1 (figures in README.md; not built by the project).
//   g++ -O3 -march=x86-64-v4 -mprefer-vector-width=512 -fopenmp-simd -Icsrc \
//       benchmarks/results/cpu_xeon_20261126_c/l1_loops.cpp -o /tmp/l1_loops && /tmp/l1_loops
// Cycles are counted at 3.0 GHz, the clock a chain of dependent integer adds showed on this VM.
#include "dr_loss_math.h"
#include <cstdio>
#include <chrono>
using namespace drloss;
static double now(){return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();}
alignas(64) float x[2048], p[2048], w[2048];
__attribute__((noinline)) void sig(){
#pragma omp simd
  for(int i=0;i<2048;i++) p[i]=sigmoid(x[i]);}
__attribute__((noinline)) void wt(float s2, float m){
#pragma omp simd
  for(int i=0;i<2048;i++) w[i]=exp2_in_range(s2*p[i]-m);}
__attribute__((noinline)) void rcp(){
#pragma omp simd
  for(int i=0;i<2048;i++) w[i]=1.0f/(1.0f+x[i]*x[i]);}
__attribute__((noinline)) void fmas(){
#pragma omp simd
  for(int i=0;i<2048;i++) {float a=x[i]; float b=a*a+0.5f; b=b*a+0.25f; b=b*a+0.125f; b=b*a+0.1f; b=b*a+0.3f; b=b*a+0.7f; b=b*a+0.9f; b=b*a+0.2f; w[i]=b*a+0.4f;}}
int main(){ for(int i=0;i<2048;i++) x[i]=(i%200-100)*0.05f;
 for(int r=0;r<3;r++){
 double t=now(); for(int k=0;k<100000;k++) sig(); double t1=now(); for(int k=0;k<100000;k++) wt(14.4f,14.4f); double t2=now();
 for(int k=0;k<100000;k++) rcp(); double t3=now(); for(int k=0;k<100000;k++) fmas(); double t4=now();
 double v=100000.0*128; printf("cycles/vector @3GHz: sigmoid %.1f  weight %.1f  div-only %.1f  9fma %.1f\n",(t1-t)/v*3e9,(t2-t1)/v*3e9,(t3-t2)/v*3e9,(t4-t3)/v*3e9);}}

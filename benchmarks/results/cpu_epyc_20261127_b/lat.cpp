#include <cstdio>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <cmath>
#include "dr_loss_math.h"  // -I csrc
using namespace drloss;
static double now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
constexpr int N=2048;
alignas(64) float x[N], p[N];
__attribute__((noinline)) void sig(){
#pragma omp simd
  for(int i=0;i<N;i++) p[i]=sigmoid(x[i]);
}
__attribute__((noinline)) void exp_only(){
#pragma omp simd
  for(int i=0;i<N;i++) p[i]=exp2_in_range(x[i]*float(-kLog2e));
}
__attribute__((noinline)) void sig_nodiv(){
#pragma omp simd
  for(int i=0;i<N;i++) p[i]=(1.0f+exp2_approx(x[i]*float(-kLog2e)))*0.37f;
}
__attribute__((noinline)) void sig_div_only(){
#pragma omp simd
  for(int i=0;i<N;i++) p[i]=1.0f/(1.0f+x[i]);
}
__attribute__((noinline)) void sig_half(){ // the division on half the elements' worth: two sigmoids, one division (wrong values)
#pragma omp simd
  for(int i=0;i<N/2;i++){ float a=1.0f+exp2_approx(x[i]*float(-kLog2e)), b=1.0f+exp2_approx(x[i+N/2]*float(-kLog2e)); float r=1.0f/(a*b); p[i]=b*r; p[i+N/2]=a*r;}
}
template<class F> double timeit(F f){
  double best=1e9; for(int k=0;k<30;k++){double t0=now(); for(int r=0;r<100;r++) f(); double t=(now()-t0)/100/N*1e9; if(t<best)best=t;}
  return best*8*2.75;
}
int main(){
  for(int i=0;i<N;i++){x[i]=(i%97)*0.1f-5;}
  for(int k=0;k<4;k++) printf("exp2_in_range %.1f sig %.1f nodiv %.1f div_only %.1f shared_div %.1f cycles/8\n", timeit(exp_only), timeit(sig), timeit(sig_nodiv), timeit(sig_div_only), timeit(sig_half));
}

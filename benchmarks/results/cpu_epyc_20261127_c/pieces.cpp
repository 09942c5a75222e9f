#include <cstdio>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <cmath>
#include "dr_loss_math.h"
using namespace drloss;
static double now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
constexpr int N=2048;
alignas(64) float x[N], p[N];
#define LOOP(name, expr) __attribute__((noinline)) void name(){ _Pragma("omp simd") for(int i=0;i<N;i++) p[i]=expr; }
const float c = float(-kLog2e);
LOOP(a_in_range, exp2_in_range(x[i]*c))
LOOP(b_approx, exp2_approx(x[i]*c))
LOOP(c_plus1, 1.0f+exp2_in_range(x[i]*c))
LOOP(d_div_norange, 1.0f/(1.0f+exp2_in_range(x[i]*c)))
LOOP(e_sigmoid, sigmoid(x[i]))
LOOP(f_div_only, 1.0f/(1.0f+x[i]))
LOOP(g_copy, x[i]*c)
template<class F> double timeit(F f){
  double best=1e9; for(int k=0;k<30;k++){double t0=now(); for(int r=0;r<100;r++) f(); double t=(now()-t0)/100/N*1e9; if(t<best)best=t;}
  return best*8*2.75;
}
int main(){
  for(int i=0;i<N;i++){x[i]=(i%97)*0.1f-5;}
  for(int k=0;k<4;k++) printf("in_range %.1f approx %.1f plus1 %.1f div_norange %.1f sigmoid %.1f div_only %.1f mul_only %.1f\n",
    timeit(a_in_range),timeit(b_approx),timeit(c_plus1),timeit(d_div_norange),timeit(e_sigmoid),timeit(f_div_only),timeit(g_copy));
}

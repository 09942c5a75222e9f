#include <cstdio>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <cmath>
#include "dr_loss_math.h"  // -I csrc
using namespace drloss;
static double now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
constexpr int N=2048;
alignas(64) float x[N], p[N], g[N]; alignas(64) int32_t neg[N];
Hyper<float> h; GroupGrad<float> gg;
float zs[16],ws[16];
__attribute__((noinline)) void sig(){
#pragma omp simd
  for(int i=0;i<N;i++) p[i]=sigmoid(x[i]);
}
__attribute__((noinline)) void grad_only(){
#pragma omp simd
  for(int i=0;i<N;i++){ float v=negative_grad<true>(p[i],gg,h); g[i]=neg[i]?v:0.0f; }
}
// One 128-element block's weights and sums, as the forward kernel folds them (p given).
static inline void weights_block(int base){
  float z[16],w[16];
  for(int j=0;j<16;j++) z[j]=w[j]=0;
  for(int r=0;r<8;r++){
#pragma omp simd
    for(int j=0;j<16;j++){ int i=base+r*16+j; float pi=p[i]; float we=exp2_in_range(h.s2_neg*pi-h.shift_neg); bool n=neg[i]!=0; z[j]=n?z[j]+we:z[j]; w[j]=n?w[j]+pi*we:w[j];}
  }
  for(int j=0;j<16;j++){zs[j]+=z[j];ws[j]+=w[j];}
}
__attribute__((noinline)) void weights_only(){
  for(int base=0;base<N;base+=128) weights_block(base);
}
__attribute__((noinline)) void bwd_blocks(){
  for(int base=0;base<N;base+=128){
#pragma omp simd
    for(int i=base;i<base+128;i++) p[i]=sigmoid(x[i]);
#pragma omp simd
    for(int i=base;i<base+128;i++){ float v=negative_grad<true>(p[i],gg,h); g[i]=neg[i]?v:0.0f; }
  }
}
__attribute__((noinline)) void fwd_blocks(){
  for(int base=0;base<N;base+=128){
#pragma omp simd
    for(int i=base;i<base+128;i++) p[i]=sigmoid(x[i]);
    weights_block(base);
  }
}
template<class F> double timeit(F f){
  double best=1e9; for(int k=0;k<30;k++){double t0=now(); for(int r=0;r<100;r++) f(); double t=(now()-t0)/100/N*1e9; if(t<best)best=t;}
  return best*8*2.75;
}
int main(){
  h=make_hyper<float>(1.0,0.1,6.0,4.0,0.5);
  float stats[6]={h.shift_neg,300.f,0.3f,0,5.f,0.7f};
  gg=make_group_grad<float>(1.0f,stats,h,make_hyper<double>(1.0,0.1,6.0,4.0,0.5));
  for(int i=0;i<N;i++){x[i]=(i%97)*0.1f-5; neg[i]=(i%13)!=0;}
  sig();
  for(int k=0;k<4;k++) printf("sig %.1f grad_only %.1f weights_only %.1f | bwd_blocks %.1f fwd_blocks %.1f cycles/8\n", timeit(sig), timeit(grad_only), timeit(weights_only), timeit(bwd_blocks), timeit(fwd_blocks));
}

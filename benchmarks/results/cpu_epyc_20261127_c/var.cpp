#include <cstdio>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <cmath>
#include <algorithm>
#include "dr_loss_math.h"  // -I csrc
using namespace drloss;
static double now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
constexpr int N=2048;
alignas(64) float x[N], p[N], g[N]; alignas(64) int32_t neg[N]; alignas(64) int32_t negm[N];
Hyper<float> h; GroupGrad<float> gg;
float zs[16],ws[16];

static inline float two_pow_n(float biased){ uint32_t b; std::memcpy(&b,&biased,4); b<<=23; float r; std::memcpy(&r,&b,4); return r; }
static inline float poly6(float f){
  float poly = 1.5353350e-04f;
  poly = poly * f + 1.3398875e-03f; poly = poly * f + 9.6184374e-03f; poly = poly * f + 5.5503325e-02f;
  poly = poly * f + 2.4022648e-01f; poly = poly * f + 6.9314720e-01f; poly = poly * f + 1.0f; return poly; }
static inline float poly6_estrin(float f){
  const float f2=f*f;
  const float a = std::fma(f, 6.9314720e-01f, 1.0f);
  const float b = std::fma(f, 5.5503325e-02f, 2.4022648e-01f);
  const float c = std::fma(f, 1.3398875e-03f, 9.6184374e-03f);
  const float d = 1.5353350e-04f;
  const float f4=f2*f2;
  const float hi = std::fma(f2, d, c);
  return std::fma(f4, hi, std::fma(f2, b, a));
}
// 2^(x*c) with the product folded into the rounding (one multiply fewer, and no rounded product)
template<bool estrin>
static inline float exp2_prod(float x, float c){
  const float shifter = 12583039.0f;
  const float biased = std::fma(x, c, shifter);
  const float f = std::fma(x, c, -(biased - shifter));
  return (estrin?poly6_estrin(f):poly6(f)) * two_pow_n(biased);
}
// s1/s2: range selects on x (off the exponential's chain), Horner or Estrin; s3: x clamped at 64 instead of one select
template<bool estrin>
static inline float sigmoid1(float x){
  // y = -x log2e; y < -126 <=> x > 87.3365 (e = 0, p = 1); y > 126 <=> x < -87.3365 (p = 0)
  float e = exp2_prod<estrin>(x, float(-kLog2e));
  e = x > 87.336f ? 0.0f : e;
  float pp = 1.0f/(1.0f+e);
  return x < -87.336f ? 0.0f : pp;
}

#define SIGLOOP(name, expr) __attribute__((noinline)) void name(){ _Pragma("omp simd") for(int i=0;i<N;i++) p[i]=expr; }
SIGLOOP(s0, sigmoid(x[i]))
SIGLOOP(s1, sigmoid1<false>(x[i]))
SIGLOOP(s2, sigmoid1<true>(x[i]))
static inline float sigmoid3(float x){
  const float xc = x > 64.0f ? 64.0f : x;
  float e = exp2_prod<false>(xc, float(-kLog2e));
  float pp = 1.0f/(1.0f+e);
  return x < -87.3365447f ? 0.0f : pp;
}
SIGLOOP(s3, sigmoid3(x[i]))

// w0: the kernels' sums (blends on the negatives' lanes); w1: masked with ands, one multiply-add for W
template<int V> static inline void wterm(int i, float& z, float& w){
  float pi=p[i]; float we=exp2_in_range(h.s2_neg*pi-h.shift_neg);
  if (V==0){ bool n=neg[i]!=0; z=n?z+we:z; w=n?w+pi*we:w; }
  else { uint32_t m=(uint32_t)negm[i]; uint32_t wb,pb; std::memcpy(&wb,&we,4); std::memcpy(&pb,&pi,4); wb&=m; pb&=m; float wm,pm; std::memcpy(&wm,&wb,4); std::memcpy(&pm,&pb,4); z+=wm; w=std::fma(pm,wm,w);}  
}
// One 128-element block's weights and sums, as the forward kernel folds them (-1: no sigmoid first).
template<int S> static inline float sig_of(float v){
  return S==0? sigmoid(v) : S==1? sigmoid1<false>(v) : S==3? sigmoid3(v) : sigmoid1<true>(v);
}
template<int S,int V> static inline void fwd_block(int base){
  if (S>=0){
#pragma omp simd
    for(int i=base;i<base+128;i++) p[i]=sig_of<S>(x[i]);
  }
  float z[16],w[16];
  for(int j=0;j<16;j++) z[j]=w[j]=0;
  for(int r=0;r<8;r++){
#pragma omp simd
    for(int j=0;j<16;j++) wterm<V>(base+r*16+j, z[j], w[j]);
  }
  for(int j=0;j<16;j++){zs[j]+=z[j];ws[j]+=w[j];}
}
template<int V> __attribute__((noinline)) void weights(){ for(int base=0;base<N;base+=128) fwd_block<-1,V>(base); }
template<int S,int V> __attribute__((noinline)) void fwd(){ for(int base=0;base<N;base+=128) fwd_block<S,V>(base); }
template<int S> __attribute__((noinline)) void bwd(){
  for(int base=0;base<N;base+=128){
#pragma omp simd
    for(int i=base;i<base+128;i++) p[i]=sig_of<S>(x[i]);
#pragma omp simd
    for(int i=base;i<base+128;i++){ float v=negative_grad<true>(p[i],gg,h); g[i]=neg[i]?v:0.0f; }
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
  for(int i=0;i<N;i++){x[i]=(i%97)*0.1f-5; neg[i]=(i%13)!=0; negm[i]=neg[i]?-1:0;}
  s0();
  for(int k=0;k<4;k++){ printf("s3 %.1f fwd30 %.1f bwd3 %.1f | ", timeit(s3), timeit(fwd<3,0>), timeit(bwd<3>)); printf("s0 %.1f s1 %.1f s2 %.1f | w0 %.1f w1 %.1f | fwd00 %.1f fwd01 %.1f fwd11 %.1f fwd21 %.1f | bwd0 %.1f bwd1 %.1f bwd2 %.1f\n",
    timeit(s0),timeit(s1),timeit(s2),timeit(weights<0>),timeit(weights<1>),timeit(fwd<0,0>),timeit(fwd<0,1>),timeit(fwd<1,1>),timeit(fwd<2,1>),timeit(bwd<0>),timeit(bwd<1>),timeit(bwd<2>));}
}

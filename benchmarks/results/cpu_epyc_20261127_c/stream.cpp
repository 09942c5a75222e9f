#include <initializer_list>
// The backward's block loop (sigmoid of 128, then the negatives' gradient) over a whole array:
// logits streamed from memory, gradient written to memory (or to one L1-resident chunk).
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <cmath>
#include <cstdlib>
#include <immintrin.h>
#include "dr_loss_math.h"
using namespace drloss;
static double now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
constexpr int64_t C=2048;
alignas(64) float p[C], gl1[C]; alignas(64) int32_t neg[C];
Hyper<float> h; GroupGrad<float> gg;
template<int MODE> __attribute__((noinline)) void chunk(const float* __restrict x, float* __restrict out){
  for(int64_t base=0;base<C;base+=128){
    for(int64_t a=(int64_t)(x+base+C);a<(int64_t)(x+base+C+128);a+=64) __builtin_prefetch((void*)a,0,3);
#pragma omp simd
    for(int64_t i=base;i<base+128;i++) p[i]=sigmoid(x[i]);
    if (MODE==2){
      alignas(32) float g[128];
#pragma omp simd
      for(int64_t i=0;i<128;i++){ float v=negative_grad<true>(p[base+i],gg,h); g[i]=neg[base+i]?v:0.0f; }
      for(int i=0;i<128;i+=8) _mm256_stream_ps(out+base+i,_mm256_load_ps(g+i));
    } else {
#pragma omp simd
      for(int64_t i=base;i<base+128;i++){ float v=negative_grad<true>(p[i],gg,h); (MODE==0?gl1:out)[i]=neg[i]?v:0.0f; }
    }
  }
}
int main(int argc,char**argv){
  h=make_hyper<float>(1.0,0.1,6.0,4.0,0.5);
  float stats[6]={h.shift_neg,300.f,0.3f,0,5.f,0.7f};
  gg=make_group_grad<float>(1.0f,stats,h,make_hyper<double>(1.0,0.1,6.0,4.0,0.5));
  for(int i=0;i<C;i++) neg[i]=(i%13)!=0;
  for(int64_t n : {int64_t(320000), int64_t(8000000)}){
    float* x=(float*)aligned_alloc(4096,n*4); float* out=(float*)aligned_alloc(4096,n*4);
    for(int64_t i=0;i<n;i++){x[i]=(i%97)*0.1f-5; out[i]=0;}
    for(int rep=0;rep<3;rep++){
      double t[3];
      for(int mode=0;mode<3;mode++){
        double best=1e9;
        for(int k=0;k<(n>1000000?8:40);k++){ double t0=now();
          for(int64_t c=0;c<n;c+=C){ if(mode==0) chunk<0>(x+c,out+c); else if(mode==1) chunk<1>(x+c,out+c); else chunk<2>(x+c,out+c);} 
          _mm_sfence(); double dt=now()-t0; if(dt<best)best=dt; }
        t[mode]=best/n*1e9*8*2.75;
      }
      printf("%8lld elements: out in L1 %.1f, out in memory %.1f, non-temporal %.1f cycles/8\n",(long long)n,t[0],t[1],t[2]);
    }
  }
}

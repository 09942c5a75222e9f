#include <cstdio>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <cmath>
#include <immintrin.h>
#include "dr_loss_math.h"  // -I csrc
using namespace drloss;
static double now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
constexpr int N=2048;
alignas(64) float x[N], p[N], q[N], o[N];
inline float exp2_est(float x){
  const float shifter = 12583039.0f; const float biased = x + shifter; const float f = x - (biased - shifter);
  const float f2=f*f;
  const float a = 6.9314720e-01f + f*2.4022648e-01f;
  const float b = 5.5503325e-02f + f*9.6184374e-03f;
  const float c = 1.3398875e-03f + f*1.5353350e-04f;
  const float poly = 1.0f + f*(a + f2*(b + f2*c));
  uint32_t bb; std::memcpy(&bb,&biased,4); const uint32_t tb=bb<<23; float two_n; std::memcpy(&two_n,&tb,4);
  return poly*two_n;
}
inline float sig_est(float x){
  const float y=x*float(-kLog2e);
  const float e=exp2_est(y);
  const float above = y < -126.0f ? 0.0f : e;
  const float d = y > 126.0f ? std::numeric_limits<float>::infinity() : above;
  return 1.0f/(1.0f+d);
}
// AVX2 table exp2: 2^y = 2^n * T[j] * 2^(r/8), degree-4 polynomial in r in [-1/2, 1/2]
alignas(32) static const float kT[8]={1.0f,1.0905077326652577f,1.189207115002721f,1.2968395546510096f,1.4142135623730951f,1.5422108254079407f,1.681792830507429f,1.8340080864093424f};
__attribute__((target("avx2,fma"))) inline __m256 exp2_tab8(__m256 y8){ // y8 = 8*y, y in [-126,126]
  const __m256 shifter=_mm256_set1_ps(12583928.0f);
  const __m256 biased=_mm256_add_ps(y8,shifter);
  const __m256 r=_mm256_sub_ps(y8,_mm256_sub_ps(biased,shifter));
  const __m256i bb=_mm256_castps_si256(biased);
  const __m256 t=_mm256_permutevar8x32_ps(_mm256_load_ps(kT),bb);
  const __m256i sb=_mm256_add_epi32(_mm256_castps_si256(t), _mm256_and_si256(_mm256_slli_epi32(bb,20),_mm256_set1_epi32(0xff800000u)));
  const __m256i sb2=_mm256_sub_epi32(sb,_mm256_set1_epi32(127<<23));
  // 2^(r/8): coefficients (ln2/8)^k/k!
  const float l=0.086643397569993164f;
  __m256 poly=_mm256_set1_ps(l*l*l*l/24);
  poly=_mm256_fmadd_ps(poly,r,_mm256_set1_ps(l*l*l/6));
  poly=_mm256_fmadd_ps(poly,r,_mm256_set1_ps(l*l/2));
  poly=_mm256_fmadd_ps(poly,r,_mm256_set1_ps(l));
  poly=_mm256_mul_ps(poly,r);
  const __m256 s=_mm256_castsi256_ps(sb2);
  return _mm256_fmadd_ps(s,poly,s);
}
__attribute__((noinline,target("avx2,fma"))) void sig_tab(){
  const __m256 c=_mm256_set1_ps(float(-8*kLog2e)); const __m256 one=_mm256_set1_ps(1.0f);
  const __m256 lo=_mm256_set1_ps(-127*8.0f), hi=_mm256_set1_ps(126*8.0f);
  for(int i=0;i<N;i+=8){
    __m256 y8=_mm256_mul_ps(_mm256_load_ps(x+i),c);
    __m256 yc=_mm256_min_ps(_mm256_max_ps(y8,lo),hi);
    __m256 e=exp2_tab8(yc);
    e=_mm256_blendv_ps(e,_mm256_set1_ps(INFINITY),_mm256_cmp_ps(y8,hi,_CMP_GT_OQ));
    _mm256_store_ps(o+i,_mm256_div_ps(one,_mm256_add_ps(one,e)));
  }
}
__attribute__((noinline)) void sig(){
#pragma omp simd
  for(int i=0;i<N;i++) p[i]=sigmoid(x[i]);
}
__attribute__((noinline)) void sigE(){
#pragma omp simd
  for(int i=0;i<N;i++) q[i]=sig_est(x[i]);
}
template<class F> double timeit(F f){
  double best=1e9; for(int k=0;k<30;k++){double t0=now(); for(int r=0;r<100;r++) f(); double t=(now()-t0)/100/N*1e9; if(t<best)best=t;}
  return best*8*2.75;
}
int main(){
  for(int i=0;i<N;i++){x[i]=(i%997)*0.02f-10;}
  for(int k=0;k<4;k++) printf("sig %.1f estrin %.1f table %.1f cycles/8\n", timeit(sig), timeit(sigE), timeit(sig_tab));
  double m1=0,m2=0,m3=0; for(int i=0;i<N;i++){double r=1/(1+std::exp(-(double)x[i])); m1=fmax(m1,fabs(p[i]-r)/r); m2=fmax(m2,fabs(q[i]-r)/r); m3=fmax(m3,fabs(o[i]-r)/r);} printf("max rel err %.3g %.3g %.3g\n",m1,m2,m3);
}

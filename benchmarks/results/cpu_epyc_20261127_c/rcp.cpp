#include <cstdio>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <cmath>
#include <immintrin.h>
#include "dr_loss_math.h"
using namespace drloss;
static double now(){timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
constexpr int N=2048;
alignas(64) float x[N], p[N], q[N];
const float c = float(-kLog2e);
__attribute__((noinline)) void sig(){
#pragma omp simd
  for(int i=0;i<N;i++) p[i]=sigmoid(x[i]); }
__attribute__((noinline)) void exp_plus1(){
#pragma omp simd
  for(int i=0;i<N;i++) q[i]=1.0f+exp2_approx(x[i]*c); }
// the same sigmoid with the division done as vrcpps + one Newton step (AVX2 intrinsics)
__attribute__((noinline)) void sig_rcp(){
  exp_plus1();
  for(int i=0;i<N;i+=8){
    __m256 d=_mm256_load_ps(q+i); __m256 r=_mm256_rcp_ps(d);
    __m256 e=_mm256_fnmadd_ps(d,r,_mm256_set1_ps(1.0f)); r=_mm256_fmadd_ps(r,e,r);
    _mm256_store_ps(p+i,r);
  } }
__attribute__((noinline)) void sig_rcp_fused(){
  const __m256 cc=_mm256_set1_ps(c), sh=_mm256_set1_ps(12583039.0f), one=_mm256_set1_ps(1.0f);
  const __m256 lo=_mm256_set1_ps(-126.0f), hi=_mm256_set1_ps(126.0f);
  for(int i=0;i<N;i+=8){
    __m256 y=_mm256_mul_ps(_mm256_load_ps(x+i),cc);
    __m256 b=_mm256_add_ps(y,sh); __m256 f=_mm256_sub_ps(y,_mm256_sub_ps(b,sh));
    __m256 po=_mm256_set1_ps(1.5353350e-04f);
    po=_mm256_fmadd_ps(po,f,_mm256_set1_ps(1.3398875e-03f)); po=_mm256_fmadd_ps(po,f,_mm256_set1_ps(9.6184374e-03f));
    po=_mm256_fmadd_ps(po,f,_mm256_set1_ps(5.5503325e-02f)); po=_mm256_fmadd_ps(po,f,_mm256_set1_ps(2.4022648e-01f));
    po=_mm256_fmadd_ps(po,f,_mm256_set1_ps(6.9314720e-01f)); po=_mm256_fmadd_ps(po,f,one);
    __m256 e=_mm256_mul_ps(po,_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(b),23)));
    e=_mm256_and_ps(e,_mm256_cmp_ps(y,lo,_CMP_NLT_UQ));
    __m256 d=_mm256_add_ps(one,e); __m256 r=_mm256_rcp_ps(d);
    __m256 t=_mm256_fnmadd_ps(d,r,one); r=_mm256_fmadd_ps(r,t,r);
    r=_mm256_and_ps(r,_mm256_cmp_ps(y,hi,_CMP_NGT_UQ));
    _mm256_store_ps(p+i,r);
  } }
template<class F> double timeit(F f){
  double best=1e9; for(int k=0;k<30;k++){double t0=now(); for(int r=0;r<100;r++) f(); double t=(now()-t0)/100/N*1e9; if(t<best)best=t;}
  return best*8*2.75;
}
int main(){
  for(int i=0;i<N;i++){x[i]=(i%97)*0.1f-5;}
  for(int k=0;k<4;k++) printf("sigmoid %.1f | exp+1 alone %.1f, then rcp+Newton pass %.1f | fused rcp sigmoid %.1f\n", timeit(sig), timeit(exp_plus1), timeit(sig_rcp), timeit(sig_rcp_fused));
  // accuracy of the rcp form against double
  double worst=0; for(int i=0;i<N;i++){ double e=1/(1+std::exp(-(double)x[i])); double u=std::ldexp(1.0,std::ilogb((float)e)-23); worst=std::fmax(worst,std::fabs(p[i]-e)/u);} printf("rcp sigmoid worst %.2f ulp over the test inputs\n",worst);
}

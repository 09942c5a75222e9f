// The sigmoid's reciprocal on the CPU, alone in L1, one thread: the division the header uses
// against AVX-512 rcp14 + one Newton step (the infinite denominator selected to 0), and the
// exponential alone for scale; then the largest error of each against a float64 sigmoid.
//   g++ -O3 -fno-trapping-math -fopenmp-simd -std=c++17 -I csrc benchmarks/results/cpu_xeon_20261127_d/rcp_probe.cpp -o probe
//   ./probe 3000
#include "dr_loss_math.h"
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <algorithm>
using namespace drloss;
constexpr int B = 128;
#define V4 __attribute__((target("arch=x86-64-v4"),noinline))
V4 void sig_div(const float* __restrict x, float* __restrict p) {
#pragma omp simd
  for (int i = 0; i < B; ++i) p[i] = sigmoid(x[i]);
}
// rcp14 + one Newton step, d = inf selected to 0.
V4 void sig_rcp14(const float* __restrict x, float* __restrict p) {
  float d[B];
#pragma omp simd
  for (int i = 0; i < B; ++i) d[i] = 1.0f + exp2_approx(x[i] * float(-kLog2e));
  for (int i = 0; i < B; i += 16) {
    __m512 v = _mm512_loadu_ps(d + i);
    __m512 r = _mm512_rcp14_ps(v);
    __m512 e = _mm512_fnmadd_ps(v, r, _mm512_set1_ps(1.0f));
    __m512 r1 = _mm512_fmadd_ps(r, e, r);
    __mmask16 fin = _mm512_cmp_ps_mask(v, _mm512_set1_ps(INFINITY), _CMP_NEQ_UQ);
    _mm512_storeu_ps(p + i, _mm512_mask_mov_ps(r, fin, r1));
  }
}
V4 void sig_rcp14_fused(const float* __restrict x, float* __restrict p) {
  for (int i = 0; i < B; i += 16) {
    float d[16];
#pragma omp simd
    for (int j = 0; j < 16; ++j) d[j] = 1.0f + exp2_approx(x[i + j] * float(-kLog2e));
    __m512 v = _mm512_loadu_ps(d);
    __m512 r = _mm512_rcp14_ps(v);
    __m512 e = _mm512_fnmadd_ps(v, r, _mm512_set1_ps(1.0f));
    __m512 r1 = _mm512_fmadd_ps(r, e, r);
    __mmask16 fin = _mm512_cmp_ps_mask(v, _mm512_set1_ps(INFINITY), _CMP_NEQ_UQ);
    _mm512_storeu_ps(p + i, _mm512_mask_mov_ps(r, fin, r1));
  }
}
V4 void exp_only(const float* __restrict x, float* __restrict p) {
#pragma omp simd
  for (int i = 0; i < B; ++i) p[i] = 1.0f + exp2_approx(x[i] * float(-kLog2e));
}
static double now(){ return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
typedef void (*fn)(const float*, float*);
int main(int argc, char** argv) {
  const int iters = atoi(argv[1]);
  const int chunk = 2048;
  std::vector<float> x(chunk), p(chunk);
  for (int i = 0; i < chunk; ++i) x[i] = (i % 97) * 0.05f - 4.0f;
  fn fns[4] = {sig_div, sig_rcp14, sig_rcp14_fused, exp_only};
  const char* names[4] = {"div", "rcp14+NR split", "rcp14+NR per16", "exp only"};
  for (int rep = 0; rep < 5; ++rep) {
    double best[4] = {1e9, 1e9, 1e9, 1e9};
    for (int k = 0; k < 5; ++k)
      for (int f = 0; f < 4; ++f) {
        double t0 = now();
        for (int it = 0; it < iters; ++it) for (int b = 0; b < chunk; b += B) { fns[f](&x[b], &p[b]); asm volatile("" ::: "memory"); }
        best[f] = std::min(best[f], now() - t0);
      }
    const double n = double(iters) * chunk;
    for (int f = 0; f < 4; ++f) printf("%s %.3f  ", names[f], best[f] / n * 1e9);
    printf("ns/elt\n");
  }
  double worst[2] = {0, 0};
  for (int k = 0; k < 20000; ++k) {
    float xv[B], pv[B], pr[B];
    for (int j = 0; j < B; ++j) xv[j] = -90.0f + 110.0f * float((k * B + j) % 1000003) / 1000003.0f;
    sig_div(xv, pv); sig_rcp14_fused(xv, pr);
    for (int j = 0; j < B; ++j) {
      double ref = 1.0 / (1.0 + std::exp(-(double)xv[j]));
      if (ref < 1.2e-38) continue;
      double ulp = std::ldexp(1.0, std::ilogb(ref) - 23);
      worst[0] = std::max(worst[0], std::fabs(pv[j] - ref) / ulp);
      worst[1] = std::max(worst[1], std::fabs(pr[j] - ref) / ulp);
    }
  }
  printf("max ulp vs double: div %.2f rcp14 %.2f\n", worst[0], worst[1]);
  float inf_in[B]; for (int j = 0; j < B; ++j) inf_in[j] = (j % 3 == 0) ? -INFINITY : (j % 3 == 1 ? INFINITY : NAN);
  float o[B]; sig_rcp14_fused(inf_in, o); printf("-inf %g inf %g nan %g\n", o[0], o[1], o[2]);
}

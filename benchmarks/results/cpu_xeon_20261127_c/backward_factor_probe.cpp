// The backward's gradient loop with its factor 1 + s (p - E) in the plain form (a subtraction
// and a multiply-add) and as s p + (1 - s E) (one multiply-add), next to the sigmoid and the
// forward's terms for scale: 128-element blocks in L1, one thread, the header's exp2 and sigmoid.
// Built against the header of 133c27d (since ae5966b make_group_grad also takes the
// hyperparameters in double):
//   g++ -O3 -fopenmp-simd -std=c++17 -I csrc benchmarks/results/cpu_xeon_20261127_c/backward_factor_probe.cpp -o probe
//   ./probe 3000
#include "dr_loss_math.h"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
using namespace drloss;
constexpr int B = 128;
#define V4 __attribute__((target("arch=x86-64-v4"),noinline))
V4 void sig(const float* __restrict x, float* __restrict p) {
#pragma omp simd
  for (int i = 0; i < B; ++i) p[i] = sigmoid(x[i]);
}
V4 void fwd(const float* __restrict p, const int* __restrict neg, const Hyper<float>& h, float* zs, float* ws) {
  float z[16], w[16];
  for (int j = 0; j < 16; ++j) z[j] = w[j] = 0;
  for (int r = 0; r < 8; ++r) {
#pragma omp simd
    for (int j = 0; j < 16; ++j) {
      const float pi = p[r * 16 + j];
      const float wt = shifted_weight<true>(h.s2_neg * pi - h.shift_neg);
      const bool is_neg = neg[r * 16 + j] != 0;
      z[j] = is_neg ? z[j] + wt : z[j];
      w[j] = is_neg ? w[j] + pi * wt : w[j];
    }
  }
  for (int j = 0; j < 16; ++j) { zs[j] += z[j]; ws[j] += w[j]; }
}
V4 void bwd(const float* __restrict p, const int* __restrict neg, const GroupGrad<float>& gg, const Hyper<float>& h, float mean, float* __restrict out) {
#pragma omp simd
  for (int i = 0; i < B; ++i) {
    const float pi = p[i];
    const float wt = shifted_weight<true>(h.s2_neg * pi - gg.neg_max);
    const float g = gg.neg_coef * wt * (1.0f + h.s_neg * (pi - mean)) * (pi * (1.0f - pi));
    out[i] = neg[i] ? g : 0.0f;
  }
}
V4 void bwd2(const float* __restrict p, const int* __restrict neg, const GroupGrad<float>& gg, const Hyper<float>& h, float* __restrict out) {
#pragma omp simd
  for (int i = 0; i < B; ++i) {
    const float pi = p[i];
    const float wt = shifted_weight<true>(h.s2_neg * pi - gg.neg_max);
    const float g = gg.neg_coef * wt * (h.s_neg * pi + gg.neg_offset) * (pi * (1.0f - pi));
    out[i] = neg[i] ? g : 0.0f;
  }
}
static double now(){ return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int main(int argc, char** argv) {
  const int iters = atoi(argv[1]);
  const int chunk = 2048;
  std::vector<float> x(chunk), p(chunk), out(chunk), zs(16), ws(16);
  std::vector<int> neg(chunk, 1);
  for (int i = 0; i < chunk; ++i) x[i] = (i % 97) * 0.05f - 4.0f;
  Hyper<float> h = make_hyper<float>(1.0, 0.1 / 1.252763, 6.0, 4.0, 0.5);
  float stats[6] = {h.shift_neg, 3.0f, 0.05f, 0.0f, 1.0f, 0.5f};
  GroupGrad<float> gg = make_group_grad(1.0f, stats, h);
  for (int rep = 0; rep < 5; ++rep) {
    double best[4] = {1e9, 1e9, 1e9, 1e9};
    for (int k = 0; k < 5; ++k) {
      double t0 = now();
      for (int it = 0; it < iters; ++it) for (int b = 0; b < chunk; b += B) { sig(&x[b], &p[b]); asm volatile("" ::: "memory"); }
      best[0] = std::min(best[0], now() - t0);
      t0 = now();
      for (int it = 0; it < iters; ++it) for (int b = 0; b < chunk; b += B) { fwd(&p[b], &neg[b], h, zs.data(), ws.data()); asm volatile("" ::: "memory"); }
      best[1] = std::min(best[1], now() - t0);
      t0 = now();
      for (int it = 0; it < iters; ++it) for (int b = 0; b < chunk; b += B) { bwd(&p[b], &neg[b], gg, h, stats[2], &out[b]); asm volatile("" ::: "memory"); }
      best[2] = std::min(best[2], now() - t0);
      t0 = now();
      for (int it = 0; it < iters; ++it) for (int b = 0; b < chunk; b += B) { bwd2(&p[b], &neg[b], gg, h, &out[b]); asm volatile("" ::: "memory"); }
      best[3] = std::min(best[3], now() - t0);
    }
    const double n = double(iters) * chunk;
    printf("ns/elt: sigmoid %.3f  forward terms %.3f  backward grad, plain factor %.3f  s p + offset %.3f\n", best[0]/n*1e9, best[1]/n*1e9, best[2]/n*1e9, best[3]/n*1e9);
  }
  printf("%g %g %g\n", zs[0], ws[0], out[5]);
}

// How unevenly two threads progress through the same work within one call: a static 2-way split
// of the header's sigmoid over an array in L1 (pure arithmetic), each thread's finishing time per
// call. Prints the single- and two-thread rates, then the slower/faster ratio over the calls.
//   g++ -O3 -fopenmp -std=c++17 -I csrc benchmarks/results/cpu_xeon_20261127_c/thread_imbalance_probe.cpp -o imbalance
//   ./imbalance CALLS PASSES_PER_CALL
#include "dr_loss_math.h"
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
using namespace drloss;
constexpr int N = 2048;
__attribute__((target("arch=x86-64-v4"),noinline)) void sigmoid_block(const float* __restrict x, float* __restrict y){
#pragma omp simd
  for(int i=0;i<N;++i) y[i]=sigmoid(x[i]); }
static double now(){ return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int main(int argc, char** argv){
  int rounds = atoi(argv[1]); int iters = atoi(argv[2]);
  for (int nt : {1, 2, 1, 2}) {
    double best = 1e9;
    for (int k = 0; k < 5; ++k) {
      double t0 = now();
#pragma omp parallel num_threads(nt)
      { std::vector<float> x(N), y(N); for(int i=0;i<N;i++) x[i]=(i%97)*0.05f-2.0f;
        for(int it=0;it<iters;it++){ sigmoid_block(x.data(), y.data()); asm volatile(""::"r"(y.data()):"memory"); } }
      best = std::min(best, now() - t0);
    }
    printf("threads %d: %.3f ns per element per thread, wall per call %.2f ms\n", nt, best/(iters*double(N))*1e9, best*1e3);
  }
  std::vector<double> ratio;
  for(int r=0;r<rounds;r++){
    double t[2]; double t0 = now();
#pragma omp parallel num_threads(2)
    { std::vector<float> x(N), y(N); for(int i=0;i<N;i++) x[i]=(i%97)*0.05f-2.0f;
      for(int it=0;it<iters;it++){ sigmoid_block(x.data(), y.data()); asm volatile(""::"r"(y.data()):"memory"); }
      t[omp_get_thread_num()] = now() - t0; }
    double mx = std::max(t[0], t[1]), mn = std::min(t[0], t[1]);
    ratio.push_back(mx / mn);
  }
  std::sort(ratio.begin(), ratio.end());
  auto q=[&](double f){return ratio[size_t(f*(ratio.size()-1))];};
  printf("slower/faster thread time per call over %d calls: p20 %.3f median %.3f p80 %.3f p95 %.3f max %.3f\n", rounds, q(.2), q(.5), q(.8), q(.95), q(1));
  double sum=0; for(double v: ratio) sum += 1 - 2/(1+v);
  printf("mean wall fraction a perfect balance would save: %.3f\n", sum/ratio.size());
}

// How the machine's vector arithmetic rate and its copy bandwidth each vary over time.
// Every ~2 s: the header's sigmoid over a 2048-float array in L1 (both threads, 4000 passes
// each) and a 256 MiB memcpy split over both threads; each the best of 5. Prints one line a
// round: sigmoid ns per element (wall, both threads) and copy GB/s (read + write counted).
//   g++ -O3 -fopenmp -std=c++17 -I csrc benchmarks/results/cpu_xeon_20261127/vector_rate_probe.cpp -o probe
//   ./probe 60
#include "dr_loss_math.h"
#include <omp.h>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>
#include <thread>
#include <algorithm>
using namespace drloss;
constexpr int N = 2048;
__attribute__((target("arch=x86-64-v4"),noinline)) void sigmoid_block(const float* __restrict x, float* __restrict y){
#pragma omp simd
  for(int i=0;i<N;++i) y[i]=sigmoid(x[i]); }
static double now(){ return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int main(int argc, char** argv){
  int rounds = atoi(argv[1]);
  size_t n = (256u<<20)/4; std::vector<float> src(n, 1.0f), dst(n, 0.0f);
  double t_start = now();
  for(int r=0;r<rounds;r++){
    double comp=1e9, copy=1e9;
    for(int k=0;k<5;k++){
      double t0=now();
#pragma omp parallel num_threads(2)
      { std::vector<float> x(N), y(N); for(int i=0;i<N;i++) x[i]=(i%97)*0.05f-2.0f;
        for(int it=0;it<4000;it++){ sigmoid_block(x.data(), y.data()); asm volatile(""::"r"(y.data()):"memory"); } }
      comp=std::min(comp, (now()-t0)/(4000.0*N*2)*1e9);
      t0=now();
#pragma omp parallel num_threads(2)
      { int t=omp_get_thread_num(); memcpy(dst.data()+t*n/2, src.data()+t*n/2, n/2*4); }
      copy=std::min(copy, now()-t0);
    }
    printf("t=%6.1f s  sigmoid %.3f ns/elt  copy %.1f GB/s (read+write)\n", now()-t_start, comp, 2.0*n*4/copy/1e9);
    fflush(stdout);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  }
}

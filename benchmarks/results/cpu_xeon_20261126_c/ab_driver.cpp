// In-process A/B driver for the CPU kernels (used for the figures in README.md; not built by
// the project). It calls drloss::forward_cpu and drloss::backward_cpu directly, the backward
// once into an output kept from the first call ("warm") and once into a fresh at::empty_like
// ("fresh"), and runs the variants named on the command line call by call in turn, so that the
// shared host's speed changes touch every variant alike. The variant is read by the kernels
// from the global drloss_exp_flags, which only a patched build has (ab_switch_classify.patch).
//
// Build (from the repository root at commit c27a3ba, which the patch is written against; torch
// 2.13.0 CPU venv active):
//   git apply benchmarks/results/cpu_xeon_20261126_c/ab_switch_classify.patch
//   MAX_JOBS=2 DRLOSS_CPU_ONLY=1 python setup.py build_ext --inplace && git apply -R <same patch>
//   TP=$(python -c "import torch, os; print(os.path.dirname(torch.__file__))")
//   PYLIB=$(python -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
//   g++ -O2 -std=c++20 -Icsrc -I$TP/include -I$TP/include/torch/csrc/api/include \
//       benchmarks/results/cpu_xeon_20261126_c/ab_driver.cpp drloss_cuda/_C.*.so \
//       -L$TP/lib -L$PYLIB -Wl,-rpath,$TP/lib -Wl,-rpath,$PYLIB \
//       -lc10 -ltorch -ltorch_cpu -lpython3.11 -o /tmp/ab_driver
// Run: /tmp/ab_driver THREADS N A REPEATS f32|bf16|f16 VARIANT...   (C = 80)
//   e.g. /tmp/ab_driver 2 2 100000 20 f32 0 1
// Prints per variant the minimum and median ns per element of each pass, and whether its
// per-group statistics are bitwise those of the first variant.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <string>
#include "dr_loss.h"
int drloss_exp_flags = 0;
using namespace drloss;
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int main(int argc, char** argv) {
  int threads = atoi(argv[1]); int64_t N = atoll(argv[2]), A = atoll(argv[3]), C = 80; int reps = atoi(argv[4]);
  std::vector<int> flags; for (int i = 6; i < argc; ++i) flags.push_back(atoi(argv[i]));
  std::string dt = argv[5];
  auto dtype = dt == "bf16" ? at::kBFloat16 : dt == "f16" ? at::kHalf : at::kFloat;
  at::set_num_threads(threads);
  at::manual_seed(0);
  at::Tensor x = at::randn({N, A, C}).to(dtype);
  at::Tensor u = at::rand({N, A});
  at::Tensor cls = at::randint(0, C, {N, A});
  at::Tensor y = at::full({N, A}, C, at::kLong);
  y = at::where(u < 0.01, cls, y); y = at::where((u >= 0.01) & (u < 0.03), at::full({}, -1, at::kLong), y);
  LossOptions opt; opt.pos_lambda = 1.0; opt.neg_lambda = 0.1; opt.L = 6.0; opt.tau = 4.0; opt.margin = 0.5; opt.first_label = 0;
  Problem pr = check_forward_args(x, y, opt);
  at::Tensor losses = at::empty({N}), stats = at::empty({N, 6});
  at::Tensor go = at::ones({N});
  at::Tensor g = at::zeros_like(x);
  size_t F = flags.size();
  std::vector<std::vector<double>> tf(F), tb(F), tbf(F);
  std::vector<at::Tensor> ref_stats(F);
  for (int r = 0; r < reps + 1; ++r) for (size_t k = 0; k < F; ++k) {
    drloss_exp_flags = flags[k];
    double a = now(); forward_cpu(x, y, pr, opt, losses, stats); double b = now();
    backward_cpu(go, x, y, stats, pr, opt, g); double c = now();
    at::Tensor gf = at::empty_like(x); backward_cpu(go, x, y, stats, pr, opt, gf); double d = now();
    if (r == 0) { ref_stats[k] = stats.clone(); continue; }
    tf[k].push_back(b - a); tb[k].push_back(c - b); tbf[k].push_back(d - c);
  }
  double e = double(N * A * C) * 1e-9;
  for (size_t k = 0; k < F; ++k) {
    auto st = [&](std::vector<double> v) { std::sort(v.begin(), v.end()); return std::make_pair(v[0] / e, v[v.size() / 2] / e); };
    auto f = st(tf[k]), b = st(tb[k]), bf = st(tbf[k]);
    bool same = at::equal(ref_stats[k], ref_stats[0]);
    printf("flags %d: ns/elem min/med  fwd %.3f/%.3f  bwd warm %.3f/%.3f  bwd fresh %.3f/%.3f  stats==flags0 %d\n", flags[k], f.first, f.second, b.first, b.second, bf.first, bf.second, same);
  }
}

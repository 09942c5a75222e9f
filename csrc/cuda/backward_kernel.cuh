// The backward kernel (dr_loss_kernels.cu includes this).
#pragma once

#include "kernel_common.cuh"

namespace drloss {
namespace cuda {
namespace {

// Steps of the backward's walk (two vectors each) whose logits a thread asks the L2 to fetch
// ahead of its loads: a prefetch holds no register, so more DRAM reads stay in flight at the
// register cap's occupancy. Only where the backward loads whole 16-byte vectors of float, half
// or bfloat16: elsewhere (double, misaligned logits) it adds register spills. The forward,
// bound by its issue rate rather than its loads, prefetches nothing (docs/performance.md).
constexpr int kBackwardPrefetchSteps = 1;

// ---------------------------------------------------------------------------------------------
// Backward.

template <typename scalar_t, typename label_t, int N, int kPiece>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    backward_kernel(const typename AccOf<scalar_t>::type* __restrict__ grad_losses,
                    const scalar_t* __restrict__ logits, const label_t* __restrict__ labels,
                    const typename AccOf<scalar_t>::type* __restrict__ stats, int64_t groups,
                    int64_t anchors, int64_t classes, int64_t blocks_per_group,
                    int64_t per_block, int64_t first_label,
                    Hyper<typename AccOf<scalar_t>::type> h, Hyper<double> hd,
                    scalar_t* __restrict__ grad_logits) {
  using acc_t = typename AccOf<scalar_t>::type;
  const int64_t elements = anchors * classes;
  const int64_t items = groups * blocks_per_group;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const Range r = item_range(item, blocks_per_group, per_block, elements);
    if (r.lo >= r.hi) continue;
    const GroupGrad<acc_t> gg =
        make_group_grad(grad_losses[r.group], stats + r.group * kNumStats, h, hd);
    scalar_t* gout = grad_logits + r.group * elements;
    auto on_vector = [&](int64_t e, const acc_t(&x)[N], VectorKinds kinds) {
      acc_t p[N];
      scalar_t out[N];
#pragma unroll
      for (int k = 0; k < N; ++k) {
        p[k] = sigmoid(x[k]);
        const acc_t g = negative_grad(p[k], gg, h);
        out[k] = FromAcc<scalar_t>::apply(((kinds.counted >> k) & 1u) ? g : acc_t(0));
      }
      if (kinds.positive != 0u) {  // cold: only a vector that holds a positive
#pragma unroll
        for (int k = 0; k < N; ++k) {
          if ((kinds.positive >> k) & 1u) out[k] = FromAcc<scalar_t>::apply(positive_grad(p[k], gg, h));
        }
      }
      store_pack<N>(gout + e, out);
    };
    auto on_element = [&](int64_t e, acc_t x, int kind) {
      gout[e] = FromAcc<scalar_t>::apply(element_grad(sigmoid(x), kind, gg, h));
    };
    constexpr int kPrefetch = kPiece == 16 && sizeof(scalar_t) < 8 ? kBackwardPrefetchSteps : 0;
    walk_range<N, kPiece, kPrefetch>(
        logits + r.group * elements, gout, labels + r.group * anchors, static_cast<int>(classes),
        first_label, r.lo, r.hi, on_vector, on_element);
  }
}

}  // namespace
}  // namespace cuda
}  // namespace drloss

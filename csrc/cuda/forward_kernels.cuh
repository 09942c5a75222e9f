// The forward kernels (dr_loss_kernels.cu includes this): the general walk, the anchor-aligned
// walks, and the kernel that merges each group's partials into its loss and statistics.
#pragma once

#include "kernel_common.cuh"

namespace drloss {
namespace cuda {
namespace {

constexpr int kFinalizeThreads = 128;          // one warp per group
constexpr int kFinalizeWarps = kFinalizeThreads / 32;
constexpr int kFinalizeBatch = 8;              // partials a lane loads before merging them

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename acc_t>
struct ForwardSums {
  RunningMaxSums<acc_t> neg;
  RunningMaxSums<acc_t> pos;
  Hyper<acc_t> h;

  // One element of either kind, for the head and tail and for temperatures below 1/64.
  __device__ __forceinline__ void add(acc_t p, int kind) {
    if (kind == kNegative) neg.add(p, h.s2_neg * p);
    if (kind == kPositive) pos.add(p, h.s2_pos * p);
  }

  // Plain sums of negatives' terms (at most kMaxPlainTerms of them), added with compensation.
  __device__ __forceinline__ void add_negatives_plain(acc_t z, acc_t w) {
    compensated_add(neg.z_hi, neg.z_lo, z);
    compensated_add(neg.w_hi, neg.w_lo, w);
  }
};

// A vector with both shifts fixed: p of each element, and the negatives' terms added to the
// plain sums (z, w), which the caller adds with compensation (policy 2) before they cover more
// than kMaxPlainTerms terms.
template <int N, typename acc_t>
__device__ __forceinline__ void add_negatives_fixed(const Hyper<acc_t>& h, acc_t& z, acc_t& w,
                                                    const acc_t (&x)[N], acc_t (&p)[N],
                                                    uint32_t negative) {
#pragma unroll
  for (int k = 0; k < N; ++k) {
    p[k] = sigmoid(x[k]);
    const acc_t weight = exp2_approx(h.s2_neg * p[k] - h.shift_neg);
    // Predicated adds, not a multiplication by a mask: a NaN of an ignored element must not
    // get in (and two predicated instructions are cheaper than selects).
    if (negative & (1u << k)) {
      z += weight;
      w += p[k] * weight;
    }
  }
}

// The vector's positive, if any, straight into the compensated sums.
template <int N, typename acc_t>
__device__ __forceinline__ void add_positives_fixed(ForwardSums<acc_t>& s, const acc_t (&p)[N],
                                                    uint32_t positive) {
  if (positive != 0u) {  // cold: only a vector that holds a positive
    acc_t zp = 0, wp = 0;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if ((positive >> k) & 1u) {
        const acc_t weight = exp2_approx(s.h.s2_pos * p[k] - s.h.shift_pos);
        zp += weight;
        wp += p[k] * weight;
      }
    }
    compensated_add(s.pos.z_hi, s.pos.z_lo, zp);
    compensated_add(s.pos.w_hi, s.pos.w_lo, wp);
  }
}

// One vector with both shifts fixed, its plain sums compensated at once.
template <int N, typename acc_t>
__device__ __forceinline__ void fold_fixed(ForwardSums<acc_t>& s, const acc_t (&x)[N],
                                           VectorKinds kinds) {
  static_assert(N <= kMaxPlainTerms, "a plain sum covers one vector at most");
  acc_t p[N];
  acc_t z = 0, w = 0;
  add_negatives_fixed<N>(s.h, z, w, x, p, kinds.counted & ~kinds.positive);
  s.add_negatives_plain(z, w);
  add_positives_fixed<N>(s, p, kinds.positive);
}

template <int N, typename acc_t>
__device__ __forceinline__ void fold_running(ForwardSums<acc_t>& s, const acc_t (&x)[N],
                                             VectorKinds kinds) {
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const int kind = !((kinds.counted >> k) & 1u)  ? kIgnored
                     : ((kinds.positive >> k) & 1u) ? kPositive
                                                    : kNegative;
    s.add(sigmoid(x[k]), kind);
  }
}

// Merges the triples of lanes [0, kWidth) of a warp into lane 0, in a fixed tree order.
template <int kWidth>
__device__ __forceinline__ void warp_merge(SoftmaxTriple<double>& t) {
#pragma unroll
  for (int offset = kWidth / 2; offset > 0; offset /= 2) {
    SoftmaxTriple<double> other;
    other.m = __shfl_down_sync(kFullMask, t.m, offset);
    other.z = __shfl_down_sync(kFullMask, t.z, offset);
    other.w = __shfl_down_sync(kFullMask, t.w, offset);
    t.merge(other);
  }
}

// Merges one triple per thread of the block into thread 0, in a fixed order.
__device__ __forceinline__ SoftmaxTriple<double> block_merge(SoftmaxTriple<double> t,
                                                             double (*shared)[kWarps]) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  warp_merge<32>(t);
  if (lane == 0) {
    shared[0][warp] = t.m;
    shared[1][warp] = t.z;
    shared[2][warp] = t.w;
  }
  __syncthreads();
  t = SoftmaxTriple<double>::empty();
  if (warp == 0) {
    if (lane < kWarps) {
      t.m = shared[0][lane];
      t.z = shared[1][lane];
      t.w = shared[2][lane];
    }
    warp_merge<kWarps>(t);
  }
  __syncthreads();  // `shared` is reused by the next merge
  return t;
}

// Merges the block's sums and writes them as the item's partials (thread 0).
template <typename acc_t>
__device__ __forceinline__ void write_block_partials(const ForwardSums<acc_t>& sums,
                                                     double (*shared)[kWarps], double* out) {
  const SoftmaxTriple<double> neg = block_merge(sums.neg.triple(), shared);
  const SoftmaxTriple<double> pos = block_merge(sums.pos.triple(), shared);
  if (threadIdx.x == 0) {
    out[0] = neg.m;
    out[1] = neg.z;
    out[2] = neg.w;
    out[3] = pos.m;
    out[4] = pos.z;
    out[5] = pos.w;
  }
}

template <typename scalar_t, typename label_t, int N, bool kFixed>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
    forward_partials_kernel(const scalar_t* __restrict__ logits,
                            const label_t* __restrict__ labels, int64_t groups, int64_t anchors,
                            int64_t classes, int64_t blocks_per_group, int64_t per_block,
                            int64_t first_label, Hyper<typename AccOf<scalar_t>::type> h,
                            double* __restrict__ partials) {
  using acc_t = typename AccOf<scalar_t>::type;
  __shared__ double shared[3][kWarps];
  const int64_t elements = anchors * classes;
  const int64_t items = groups * blocks_per_group;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const Range r = item_range(item, blocks_per_group, per_block, elements);
    ForwardSums<acc_t> sums{RunningMaxSums<acc_t>::start_negatives(h),
                            RunningMaxSums<acc_t>::start_positives(h), h};
    auto on_vector = [&](int64_t, const acc_t(&x)[N], VectorKinds kinds) {
      if (kFixed) {
        fold_fixed<N>(sums, x, kinds);
      } else {
        fold_running<N>(sums, x, kinds);
      }
    };
    auto on_element = [&](int64_t, acc_t x, int kind) { sums.add(sigmoid(x), kind); };
    const scalar_t* gx = logits + r.group * elements;
    walk_range<N, N * sizeof(scalar_t), 0>(gx, gx, labels + r.group * anchors,
                                           static_cast<int>(classes), first_label, r.lo, r.hi,
                                           on_vector, on_element);
    write_block_partials(sums, shared, partials + item * kPartialDoubles);
  }
}

// The anchor-aligned forward (ForwardWalk::kAligned and kPipelined, dr_loss_kernels.h). The
// launcher runs it only with both shifts fixed, classes a multiple of N, the logits on a 16-byte
// boundary and fewer than 2^30 elements per group. Then every group starts on a 16-byte
// boundary, every range is whole vectors (its ends are multiples of 16 elements, or the
// group's end), each vector lies inside one anchor, and positions fit in 32 bits.

// One vector of the walk: its logits, its anchor's label and its first class column.
template <typename scalar_t, typename label_t>
struct AlignedVector {
  scalar_t x[vec_width<scalar_t>()];
  label_t label;
  int column;
};

// A vector inside one anchor, starting at class column `column`: counted in full or not at
// all, and at most one positive element.
template <int N, typename label_t>
__device__ __forceinline__ VectorKinds classify_aligned(label_t label, int column, int classes,
                                                        int64_t first_label) {
  // positive_column gives a column below 2^30, or -1, which the unsigned compare rejects.
  const int offset = static_cast<int>(positive_column(label, classes, first_label)) - column;
  VectorKinds kinds;
  kinds.counted = label >= 0 ? vector_mask<N>() : 0u;
  kinds.positive = static_cast<unsigned>(offset) < unsigned(N) ? 1u << offset : 0u;
  return kinds;
}

// The pipelined walk holds a second step's vectors: it gets the registers of 3 blocks per SM.
template <typename scalar_t, typename label_t, bool kPipelined>
__global__ void __launch_bounds__(kThreads, kPipelined ? kMinBlocksPerSM - 1 : kMinBlocksPerSM)
    forward_aligned_kernel(const scalar_t* __restrict__ logits,
                           const label_t* __restrict__ labels, int64_t groups, int64_t anchors,
                           int64_t classes_64, int64_t blocks_per_group, int64_t per_block,
                           int64_t first_label, Hyper<typename AccOf<scalar_t>::type> h,
                           double* __restrict__ partials) {
  using acc_t = typename AccOf<scalar_t>::type;
  using Vector = AlignedVector<scalar_t, label_t>;
  constexpr int N = vec_width<scalar_t>();
  // Vectors whose negatives share one plain sum (policy 2): two of float, one of 16-bit types.
  constexpr int kVectorsPerSum = kMaxPlainTerms / N >= 2 ? 2 : 1;
  __shared__ double shared[3][kWarps];
  const int classes = static_cast<int>(classes_64);
  const int elements = static_cast<int>(anchors * classes_64);
  // A jump of kThreads vectors, in whole anchors and the class columns left over.
  const int jump_anchors = kThreads * N / classes;
  const int jump_columns = kThreads * N - jump_anchors * classes;
  const int64_t items = groups * blocks_per_group;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const Range r = item_range(item, blocks_per_group, per_block, elements);
    ForwardSums<acc_t> sums{RunningMaxSums<acc_t>::start_negatives(h),
                            RunningMaxSums<acc_t>::start_positives(h), h};
    const scalar_t* __restrict__ gx = logits + r.group * elements;
    const label_t* __restrict__ gy = labels + r.group * anchors;
    const int lo = static_cast<int>(r.lo);
    const int vectors = static_cast<int>(r.hi - r.lo) / N;
    // This thread's vectors: t, t + kThreads, ... of the range; `mine` of them.
    const int t = threadIdx.x;
    const int mine = t < vectors ? (vectors - t + kThreads - 1) / kThreads : 0;
    // The next vector to load: its logits, its anchor's label and its first class column.
    const int e = lo + t * N;
    const int anchor = e / classes;
    const scalar_t* x_next = gx + e;
    const label_t* y_next = gy + anchor;
    int column = e - anchor * classes;
    auto fetch = [&](Vector& v) {
      load_pack<N, 16>(x_next, v.x);
      v.label = load_label(y_next);
      v.column = column;
      x_next += kThreads * N;
      y_next += jump_anchors;
      column += jump_columns;  // < 2 * classes
      if (column >= classes) {
        column -= classes;
        ++y_next;
      }
    };
    auto add = [&](const Vector& v, acc_t& z, acc_t& w) {
      acc_t x[N];
#pragma unroll
      for (int k = 0; k < N; ++k) x[k] = to_acc(v.x[k]);
      const VectorKinds kinds = classify_aligned<N>(v.label, v.column, classes, first_label);
      acc_t p[N];
      add_negatives_fixed<N>(h, z, w, x, p, kinds.counted & ~kinds.positive);
      add_positives_fixed<N>(sums, p, kinds.positive);
    };
    // A step adds vectors k and k + 1 of this thread's (cur[0], cur[1]); in the pipelined walk
    // it first loads k + 2 and k + 3 into `next`, else it loads them into `cur` after its adds.
    auto step = [&](int k, Vector (&cur)[2], Vector (&next)[2]) {
      if (kPipelined) {
        if (k + 2 < mine) fetch(next[0]);
        if (k + 3 < mine) fetch(next[1]);
      }
      acc_t z = 0, w = 0;
      add(cur[0], z, w);
      if (kVectorsPerSum == 1) {
        sums.add_negatives_plain(z, w);
        z = 0;
        w = 0;
      }
      if (k + 1 < mine) add(cur[1], z, w);
      sums.add_negatives_plain(z, w);
      if (!kPipelined) {
        if (k + 2 < mine) fetch(cur[0]);
        if (k + 3 < mine) fetch(cur[1]);
      }
    };
    Vector a[2], b[2];
    if (mine > 0) fetch(a[0]);
    if (mine > 1) fetch(a[1]);
    // Unrolled by two steps, so that the pipelined walk alternates between a and b without
    // copying registers.
    for (int k = 0; k < mine; k += 4) {
      step(k, a, b);
      if (k + 2 >= mine) break;
      if (kPipelined) {
        step(k + 2, b, a);
      } else {
        step(k + 2, a, a);
      }
    }
    write_block_partials(sums, shared, partials + item * kPartialDoubles);
  }
}

// One warp per group: lane l merges partials l, l + 32, ... in order, then the lanes merge in
// a fixed tree; everything in double, as the CPU merges its chunks. A lane loads a batch of its
// partials before merging any: a merge branches, and a load written after one waits for it
// (a pooled group has hundreds of partials, each a dependent L2 round trip otherwise).
template <typename acc_t>
__global__ void __launch_bounds__(kFinalizeThreads)
    finalize_kernel(const double* __restrict__ partials, int64_t groups,
                    int64_t blocks_per_group, Hyper<double> h, acc_t* __restrict__ losses,
                    acc_t* __restrict__ stats) {
  const int lane = threadIdx.x % 32;
  const int64_t first = int64_t(blockIdx.x) * kFinalizeWarps + threadIdx.x / 32;
  const int64_t step = int64_t(gridDim.x) * kFinalizeWarps;
  for (int64_t g = first; g < groups; g += step) {  // uniform across the warp
    SoftmaxTriple<double> neg = SoftmaxTriple<double>::empty();
    SoftmaxTriple<double> pos = SoftmaxTriple<double>::empty();
    const double* group_partials = partials + g * blocks_per_group * kPartialDoubles;
    for (int64_t b0 = lane; b0 < blocks_per_group; b0 += 32 * kFinalizeBatch) {
      double part[kFinalizeBatch][kPartialDoubles];
#pragma unroll
      for (int j = 0; j < kFinalizeBatch; ++j) {
        const int64_t b = b0 + 32 * j;
        if (b < blocks_per_group) {
#pragma unroll
          for (int k = 0; k < kPartialDoubles; ++k) {
            part[j][k] = group_partials[b * kPartialDoubles + k];
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kFinalizeBatch; ++j) {
        if (b0 + 32 * j < blocks_per_group) {
          neg.merge(SoftmaxTriple<double>{part[j][0], part[j][1], part[j][2]});
          pos.merge(SoftmaxTriple<double>{part[j][3], part[j][4], part[j][5]});
        }
      }
    }
    warp_merge<32>(neg);
    warp_merge<32>(pos);
    if (lane == 0) {
      double group_stats[kNumStats];
      const double loss = finalize_group(neg, pos, h, group_stats);
      losses[g] = static_cast<acc_t>(loss);
#pragma unroll
      for (int k = 0; k < kNumStats; ++k) {
        stats[g * kNumStats + k] = static_cast<acc_t>(group_stats[k]);
      }
    }
  }
}

}  // namespace
}  // namespace cuda
}  // namespace drloss

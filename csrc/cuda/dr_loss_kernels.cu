// CUDA forward and backward of the sigmoid DR loss.
//
// The per-element math comes from ../dr_loss_math.h, the header the CPU kernels use too. This
// file includes no torch header: plain nvcc compiles it (.ci/check_cuda_compile.sh).
//
// Work split (both passes). Each group's A*C elements are cut into `blocks_per_group`
// contiguous ranges of `per_block` elements (a multiple of 16, so that ranges keep the group's
// alignment). A work item is (group, range); blocks loop over the items (item = blockIdx.x,
// blockIdx.x + gridDim.x, ...), so any number of groups fits in one launch. Inside a range the
// threads read 16-byte vectors (4 float, 2 double, 8 half/bfloat16), starting at the first
// 16-byte aligned element; the few elements before it (head) and after the last whole vector
// (tail) are read one by one. A thread walks its vectors with the (anchor, class) position
// kept incrementally, so there is one 64-bit division per thread and range, not per element.
//
// Forward: every thread folds its elements into a negatives' and a positives' softmax triple;
// the block merges them (warp shuffles, then shared memory) in a fixed tree order and writes
// one partial per item. A second kernel merges the partials of each group in a fixed order
// (one warp per group, in double) and writes the loss and the saved statistics. No atomics:
// the result is bitwise the same from run to run on a given device.
//
// Backward: the same walk; each element recomputes p and its gradient from its group's saved
// statistics and is written in logits' dtype (16-byte stores when logits and the gradient
// share their alignment, which freshly allocated tensors do).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "../dr_loss_math.h"
#include "dr_loss_kernels.h"

namespace drloss {
namespace cuda {
namespace {

constexpr int kThreads = 256;                  // threads of a forward/backward block
constexpr int kWarps = kThreads / 32;
constexpr int kFinalizeThreads = 128;          // one warp per group
constexpr int kFinalizeWarps = kFinalizeThreads / 32;
constexpr int64_t kBlocksPerMultiprocessor = 8;
constexpr int64_t kMinElementsPerBlock = int64_t(kThreads) * 16;
constexpr int64_t kRangeAlign = 16;            // elements; a multiple of every vector width
constexpr int64_t kMaxGrid = 0x7fffffff;
constexpr int64_t kMaxFinalizeGrid = 65535;    // the kernel loops over the rest
constexpr unsigned kFullMask = 0xffffffffu;

static_assert(kThreads % 32 == 0 && kWarps <= 32, "block must be whole warps, at most 32");

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Types.

template <typename scalar_t>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// Elements per 16-byte vector.
template <typename scalar_t>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(scalar_t));
}

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename scalar_t>
struct FromAcc;
template <>
struct FromAcc<float> {
  __device__ __forceinline__ static float apply(float v) { return v; }
};
template <>
struct FromAcc<double> {
  __device__ __forceinline__ static double apply(double v) { return v; }
};
template <>
struct FromAcc<__half> {
  __device__ __forceinline__ static __half apply(float v) { return __float2half_rn(v); }
};
template <>
struct FromAcc<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 apply(float v) {
    return __float2bfloat16_rn(v);
  }
};

// An unsigned integer type of each size a load or store moves.
template <int kBytes>
struct RawOf;
template <>
struct RawOf<2> {
  using type = unsigned short;
};
template <>
struct RawOf<4> {
  using type = unsigned int;
};
template <>
struct RawOf<8> {
  using type = unsigned long long;
};
template <>
struct RawOf<16> {
  using type = uint4;
};

// Loads N consecutive elements in one access (the address must be N * sizeof aligned).
template <int N, typename scalar_t>
__device__ __forceinline__ void load_pack(const scalar_t* ptr, scalar_t (&out)[N]) {
  using raw_t = typename RawOf<N * sizeof(scalar_t)>::type;
  const raw_t raw = __ldg(reinterpret_cast<const raw_t*>(ptr));
  memcpy(&out[0], &raw, sizeof(raw_t));
}

// Stores N consecutive elements in one access (the address must be N * sizeof aligned). The
// store goes through the st.global intrinsic on the raw bits: a plain struct store gets split
// by the compiler into narrower stores.
template <int N, typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* ptr, const scalar_t (&in)[N]) {
  using raw_t = typename RawOf<N * sizeof(scalar_t)>::type;
  raw_t raw;
  memcpy(&raw, &in[0], sizeof(raw_t));
  __stwb(reinterpret_cast<raw_t*>(ptr), raw);
}

__device__ __forceinline__ int32_t load_label(const int32_t* ptr) { return __ldg(ptr); }
__device__ __forceinline__ int64_t load_label(const int64_t* ptr) {
  return static_cast<int64_t>(__ldg(reinterpret_cast<const long long*>(ptr)));
}

// ---------------------------------------------------------------------------------------------
// The walk over one range [lo, hi) of one group.
//
// gx, gy, gout point at the group's first logit, label and gradient. For every element e of
// the range that this thread owns, calls visit(x_e, label of its anchor, class column) and,
// when kStore, writes the returned value to gout[e] in logits' dtype.
template <int N, bool kStore, typename scalar_t, typename label_t, typename Visit>
__device__ __forceinline__ void walk_range(const scalar_t* __restrict__ gx,
                                           scalar_t* __restrict__ gout,
                                           const label_t* __restrict__ gy, int64_t classes,
                                           int64_t lo, int64_t hi, Visit& visit) {
  if (lo >= hi) return;
  const int64_t t = threadIdx.x;

  // Head: elements before the first N-aligned address (none when N == 1).
  int64_t head = 0;
  if (N > 1) {
    const uint64_t misaligned =
        (reinterpret_cast<uintptr_t>(gx + lo) / sizeof(scalar_t)) % static_cast<uint64_t>(N);
    head = misaligned == 0 ? 0 : N - static_cast<int64_t>(misaligned);
    if (head > hi - lo) head = hi - lo;
  }
  const int64_t body_lo = lo + head;
  const int64_t vectors = (hi - body_lo) / N;
  const int64_t body_hi = body_lo + vectors * N;

  // Head and tail (fewer than N elements each): one element per thread.
  const int64_t tail = hi - body_hi;
  if (t < head || t < tail) {
    const int64_t edge[2] = {lo + t, body_hi + t};
    const bool in_edge[2] = {t < head, t < tail};
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      if (!in_edge[k]) continue;
      const int64_t e = edge[k];
      const int64_t anchor = e / classes;
      const scalar_t value[1] = {gx[e]};
      const auto result = visit(to_acc(value[0]), load_label(gy + anchor), e - anchor * classes);
      if (kStore) gout[e] = FromAcc<scalar_t>::apply(result);
    }
  }

  // Body: thread t reads vectors t, t + kThreads, ...
  int64_t v = t;
  if (v >= vectors) return;
  int64_t e = body_lo + v * N;
  int64_t anchor = e / classes;
  int64_t cls = e - anchor * classes;
  // From the end of one of this thread's vectors to the start of its next one.
  const int64_t jump = int64_t(kThreads - 1) * N;
  const int64_t jump_anchors = jump / classes;
  const int64_t jump_classes = jump - jump_anchors * classes;
  for (; v < vectors; v += kThreads) {
    scalar_t x[N];
    load_pack<N>(gx + e, x);
    label_t label = load_label(gy + anchor);
    scalar_t out[N];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      const auto result = visit(to_acc(x[k]), label, cls);
      if (kStore) out[k] = FromAcc<scalar_t>::apply(result);
      ++cls;
      // The next element (inside this vector, so it exists) starts a new anchor.
      if (k + 1 < N && cls == classes) {
        cls = 0;
        ++anchor;
        label = load_label(gy + anchor);
      }
    }
    if (kStore) store_pack<N>(gout + e, out);
    // Here anchor * classes + cls == e + N, with cls <= classes.
    e += int64_t(kThreads) * N;
    anchor += jump_anchors;
    cls += jump_classes;  // < 2 * classes
    if (cls >= classes) {
      cls -= classes;
      ++anchor;
    }
  }
}

// Which range of its group an item covers.
struct Range {
  int64_t group;
  int64_t lo;
  int64_t hi;
};

__device__ __forceinline__ Range item_range(int64_t item, int64_t blocks_per_group,
                                            int64_t per_block, int64_t elements) {
  Range r;
  r.group = item / blocks_per_group;
  const int64_t b = item - r.group * blocks_per_group;
  r.lo = b * per_block;
  if (r.lo > elements) r.lo = elements;
  r.hi = r.lo + per_block;
  if (r.hi > elements) r.hi = elements;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename acc_t, typename label_t>
struct ForwardVisit {
  SoftmaxTriple<acc_t> neg;
  SoftmaxTriple<acc_t> pos;
  Hyper<acc_t> h;
  int64_t first_label;

  __device__ __forceinline__ acc_t operator()(acc_t x, label_t label, int64_t cls) {
    const acc_t p = sigmoid(x);
    const int kind = element_kind(label, cls, first_label);
    if (kind == kNegative) {
      neg.add(p, h.s_neg * p);
    } else if (kind == kPositive) {
      pos.add(p, h.s_pos * p);
    }
    return acc_t(0);
  }
};

// Merges the triples of lanes [0, kWidth) of a warp into lane 0, in a fixed tree order.
template <int kWidth, typename acc_t>
__device__ __forceinline__ void warp_merge(SoftmaxTriple<acc_t>& t) {
#pragma unroll
  for (int offset = kWidth / 2; offset > 0; offset /= 2) {
    SoftmaxTriple<acc_t> other;
    other.m = __shfl_down_sync(kFullMask, t.m, offset);
    other.z = __shfl_down_sync(kFullMask, t.z, offset);
    other.w = __shfl_down_sync(kFullMask, t.w, offset);
    t.merge(other);
  }
}

template <typename scalar_t, typename label_t>
__global__ void __launch_bounds__(kThreads)
    forward_partials_kernel(const scalar_t* __restrict__ logits,
                            const label_t* __restrict__ labels, int64_t groups, int64_t anchors,
                            int64_t classes, int64_t blocks_per_group, int64_t per_block,
                            int64_t first_label, Hyper<typename AccOf<scalar_t>::type> h,
                            typename AccOf<scalar_t>::type* __restrict__ partials) {
  using acc_t = typename AccOf<scalar_t>::type;
  __shared__ acc_t shared[2 * 3][kWarps];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t elements = anchors * classes;
  const int64_t items = groups * blocks_per_group;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const Range r = item_range(item, blocks_per_group, per_block, elements);
    ForwardVisit<acc_t, label_t> visit{SoftmaxTriple<acc_t>::empty(),
                                       SoftmaxTriple<acc_t>::empty(), h, first_label};
    walk_range<vec_width<scalar_t>(), false>(logits + r.group * elements,
                                             static_cast<scalar_t*>(nullptr),
                                             labels + r.group * anchors, classes, r.lo, r.hi,
                                             visit);
    SoftmaxTriple<acc_t> neg = visit.neg;
    SoftmaxTriple<acc_t> pos = visit.pos;
    warp_merge<32>(neg);
    warp_merge<32>(pos);
    if (lane == 0) {
      shared[0][warp] = neg.m;
      shared[1][warp] = neg.z;
      shared[2][warp] = neg.w;
      shared[3][warp] = pos.m;
      shared[4][warp] = pos.z;
      shared[5][warp] = pos.w;
    }
    __syncthreads();
    if (warp == 0) {
      neg = SoftmaxTriple<acc_t>::empty();
      pos = SoftmaxTriple<acc_t>::empty();
      if (lane < kWarps) {
        neg.m = shared[0][lane];
        neg.z = shared[1][lane];
        neg.w = shared[2][lane];
        pos.m = shared[3][lane];
        pos.z = shared[4][lane];
        pos.w = shared[5][lane];
      }
      warp_merge<kWarps>(neg);
      warp_merge<kWarps>(pos);
      if (lane == 0) {
        acc_t* out = partials + item * 6;
        out[0] = neg.m;
        out[1] = neg.z;
        out[2] = neg.w;
        out[3] = pos.m;
        out[4] = pos.z;
        out[5] = pos.w;
      }
    }
    __syncthreads();  // `shared` is reused by the next item
  }
}

// One warp per group: lane l merges partials l, l + 32, ... in order, then the lanes merge in
// a fixed tree; everything in double, as the CPU merges its chunks.
template <typename acc_t>
__global__ void __launch_bounds__(kFinalizeThreads)
    finalize_kernel(const acc_t* __restrict__ partials, int64_t groups,
                    int64_t blocks_per_group, Hyper<double> h, acc_t* __restrict__ losses,
                    acc_t* __restrict__ stats) {
  const int lane = threadIdx.x % 32;
  const int64_t first = int64_t(blockIdx.x) * kFinalizeWarps + threadIdx.x / 32;
  const int64_t step = int64_t(gridDim.x) * kFinalizeWarps;
  for (int64_t g = first; g < groups; g += step) {  // uniform across the warp
    SoftmaxTriple<double> neg = SoftmaxTriple<double>::empty();
    SoftmaxTriple<double> pos = SoftmaxTriple<double>::empty();
    for (int64_t b = lane; b < blocks_per_group; b += 32) {
      const acc_t* part = partials + (g * blocks_per_group + b) * 6;
      SoftmaxTriple<double> t;
      t.m = static_cast<double>(part[0]);
      t.z = static_cast<double>(part[1]);
      t.w = static_cast<double>(part[2]);
      neg.merge(t);
      t.m = static_cast<double>(part[3]);
      t.z = static_cast<double>(part[4]);
      t.w = static_cast<double>(part[5]);
      pos.merge(t);
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

// ---------------------------------------------------------------------------------------------
// Backward.

template <typename acc_t, typename label_t>
struct BackwardVisit {
  GroupGrad<acc_t> gg;
  Hyper<acc_t> h;
  int64_t first_label;

  __device__ __forceinline__ acc_t operator()(acc_t x, label_t label, int64_t cls) const {
    const acc_t p = sigmoid(x);
    return element_grad(p, element_kind(label, cls, first_label), gg, h);
  }
};

template <typename scalar_t, typename label_t, int N>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const typename AccOf<scalar_t>::type* __restrict__ grad_losses,
                    const scalar_t* __restrict__ logits, const label_t* __restrict__ labels,
                    const typename AccOf<scalar_t>::type* __restrict__ stats, int64_t groups,
                    int64_t anchors, int64_t classes, int64_t blocks_per_group,
                    int64_t per_block, int64_t first_label,
                    Hyper<typename AccOf<scalar_t>::type> h, scalar_t* __restrict__ grad_logits) {
  using acc_t = typename AccOf<scalar_t>::type;
  const int64_t elements = anchors * classes;
  const int64_t items = groups * blocks_per_group;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const Range r = item_range(item, blocks_per_group, per_block, elements);
    if (r.lo >= r.hi) continue;
    BackwardVisit<acc_t, label_t> visit{
        make_group_grad(grad_losses[r.group], stats + r.group * kNumStats, h), h, first_label};
    walk_range<N, true>(logits + r.group * elements, grad_logits + r.group * elements,
                        labels + r.group * anchors, classes, r.lo, r.hi, visit);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

struct Split {
  int64_t blocks_per_group;  // 0 when there is no element
  int64_t per_block;         // elements per range, a multiple of kRangeAlign
  int64_t items;
  unsigned grid;
};

Split make_split(const Problem& s, int multiprocessor_count) {
  Split split{0, 0, 0, 0};
  split.blocks_per_group = forward_blocks_per_group(s, multiprocessor_count);
  if (split.blocks_per_group == 0) return split;
  const int64_t elements = s.anchors * s.classes;
  split.per_block =
      ceil_div(ceil_div(elements, split.blocks_per_group), kRangeAlign) * kRangeAlign;
  split.items = s.groups * split.blocks_per_group;
  split.grid = static_cast<unsigned>(split.items < kMaxGrid ? split.items : kMaxGrid);
  return split;
}

template <typename F>
cudaError_t dispatch(LogitsType logits_type, LabelsType labels_type, F&& f) {
  auto with_label = [&](auto scalar_tag) -> cudaError_t {
    using scalar_t = decltype(scalar_tag);
    if (labels_type == LabelsType::kInt32) return f(scalar_t(), int32_t());
    if (labels_type == LabelsType::kInt64) return f(scalar_t(), int64_t());
    return cudaErrorInvalidValue;
  };
  switch (logits_type) {
    case LogitsType::kFloat32:
      return with_label(float());
    case LogitsType::kFloat64:
      return with_label(double());
    case LogitsType::kFloat16:
      return with_label(__half());
    case LogitsType::kBFloat16:
      return with_label(__nv_bfloat16());
  }
  return cudaErrorInvalidValue;
}

}  // namespace

int64_t forward_blocks_per_group(const Problem& s, int multiprocessor_count) {
  if (s.groups <= 0 || s.anchors <= 0 || s.classes <= 0) return 0;
  const int64_t elements = s.anchors * s.classes;
  const int64_t sms = multiprocessor_count > 0 ? multiprocessor_count : 1;
  int64_t blocks = ceil_div(sms * kBlocksPerMultiprocessor, s.groups);
  const int64_t by_size = ceil_div(elements, kMinElementsPerBlock);
  if (blocks > by_size) blocks = by_size;
  return blocks < 1 ? 1 : blocks;
}

int64_t forward_workspace_elements(const Problem& s, int multiprocessor_count) {
  return s.groups * forward_blocks_per_group(s, multiprocessor_count) * 6;
}

cudaError_t launch_forward(LogitsType logits_type, const void* logits, LabelsType labels_type,
                           const void* labels, const Problem& s, const LossOptions& hp,
                           int multiprocessor_count, void* workspace, void* losses, void* stats,
                           cudaStream_t stream) {
  if (s.groups <= 0) return cudaSuccess;
  const Split split = make_split(s, multiprocessor_count);
  return dispatch(logits_type, labels_type, [&](auto scalar_tag, auto label_tag) {
    using scalar_t = decltype(scalar_tag);
    using label_t = decltype(label_tag);
    using acc_t = typename AccOf<scalar_t>::type;
    acc_t* partials = static_cast<acc_t*>(workspace);
    if (split.items > 0) {
      const Hyper<acc_t> h =
          make_hyper<acc_t>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin);
      forward_partials_kernel<scalar_t, label_t><<<split.grid, kThreads, 0, stream>>>(
          static_cast<const scalar_t*>(logits), static_cast<const label_t*>(labels), s.groups,
          s.anchors, s.classes, split.blocks_per_group, split.per_block, hp.first_label, h,
          partials);
      const cudaError_t error = cudaGetLastError();
      if (error != cudaSuccess) return error;
    }
    const Hyper<double> hd =
        make_hyper<double>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin);
    const int64_t finalize_blocks = ceil_div(s.groups, kFinalizeWarps);
    const unsigned grid = static_cast<unsigned>(
        finalize_blocks < kMaxFinalizeGrid ? finalize_blocks : kMaxFinalizeGrid);
    finalize_kernel<acc_t><<<grid, kFinalizeThreads, 0, stream>>>(
        partials, s.groups, split.blocks_per_group, hd, static_cast<acc_t*>(losses),
        static_cast<acc_t*>(stats));
    return cudaGetLastError();
  });
}

cudaError_t launch_backward(LogitsType logits_type, const void* grad_losses, const void* logits,
                            LabelsType labels_type, const void* labels, const void* stats,
                            const Problem& s, const LossOptions& hp, int multiprocessor_count,
                            void* grad_logits, cudaStream_t stream) {
  const Split split = make_split(s, multiprocessor_count);
  if (split.items == 0) return cudaSuccess;  // no element to write
  return dispatch(logits_type, labels_type, [&](auto scalar_tag, auto label_tag) {
    using scalar_t = decltype(scalar_tag);
    using label_t = decltype(label_tag);
    using acc_t = typename AccOf<scalar_t>::type;
    const Hyper<acc_t> h =
        make_hyper<acc_t>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin);
    // 16-byte vectors need logits and gradient to sit at the same offset from a 16-byte
    // boundary (then the head brings both to alignment at once).
    const bool same_alignment =
        reinterpret_cast<uintptr_t>(logits) % 16 == reinterpret_cast<uintptr_t>(grad_logits) % 16;
    const auto* x = static_cast<const scalar_t*>(logits);
    const auto* y = static_cast<const label_t*>(labels);
    const auto* g = static_cast<const acc_t*>(grad_losses);
    const auto* st = static_cast<const acc_t*>(stats);
    auto* out = static_cast<scalar_t*>(grad_logits);
    if (same_alignment) {
      backward_kernel<scalar_t, label_t, vec_width<scalar_t>()>
          <<<split.grid, kThreads, 0, stream>>>(g, x, y, st, s.groups, s.anchors, s.classes,
                                                split.blocks_per_group, split.per_block,
                                                hp.first_label, h, out);
    } else {
      backward_kernel<scalar_t, label_t, 1><<<split.grid, kThreads, 0, stream>>>(
          g, x, y, st, s.groups, s.anchors, s.classes, split.blocks_per_group, split.per_block,
          hp.first_label, h, out);
    }
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace drloss

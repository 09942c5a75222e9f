// CUDA forward and backward of the sigmoid DR loss.
//
// The per-element math and every numerical policy (shifts, summation) come from
// ../dr_loss_math.h, the header the CPU kernels use too. This file includes no torch header:
// plain nvcc compiles it (.ci/check_cuda_compile.sh).
//
// Work split (both passes). Each group's A*C elements are cut into `blocks_per_group`
// contiguous ranges of `per_block` elements (a multiple of 16, so that ranges keep the group's
// alignment). A work item is (group, range); blocks loop over the items (item = blockIdx.x,
// blockIdx.x + gridDim.x, ...), so any number of groups fits in one launch. The grid is one
// wave: the multiprocessor count times the blocks per multiprocessor the occupancy calculator
// gives for the kernel.
//
// Inside a range the threads walk 16-byte vectors of the tensor they must access aligned (the
// logits in the forward, the gradient in the backward), two vectors per step so that two loads
// are in flight. The few elements before the first aligned vector (head) and after the last
// (tail) are taken one by one. When the logits sit at another offset from a 16-byte boundary
// than the gradient (a view with a storage offset), the backward still stores 16-byte vectors
// and loads the logits in the widest pieces their relative offset allows.
//
// Labels are read once per anchor segment of a vector: a vector of N elements covers one or a
// few anchors, and two bit masks (counted, positive) classify its elements. The (anchor, class)
// position advances incrementally: one 64-bit division per thread and range.
//
// Forward: with both shifts fixed (policy 1, every temperature >= 1/64) an element costs one
// sigmoid, one exp2 and two selected adds into a plain per-vector sum, which then goes into the
// thread's compensated sums (policy 2); positives (at most one per anchor) take a branch that is
// rarely taken. Otherwise each element is added to a running-max accumulator. Threads merge in
// double, warp then block, in a fixed tree order; a second kernel merges each group's partials
// in a fixed order and writes the loss and the saved statistics. No atomics: the result is
// bitwise the same from run to run on a given device.
//
// The forward's anchor-aligned walks (forward_aligned_kernel; ForwardWalk in dr_loss_kernels.h)
// do the same arithmetic where every vector lies inside one anchor, with one label per vector
// and 32-bit positions, and in their pipelined form with the next step's loads in flight.
//
// Backward: the same walk; each element recomputes p and its gradient from its group's saved
// statistics and is written in logits' dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>

#include "../dr_loss_math.h"
#include "dr_loss_kernels.h"

namespace drloss {
namespace cuda {
namespace {

constexpr int kThreads = 256;                  // threads of a forward/backward block
constexpr int kWarps = kThreads / 32;
constexpr int kMinBlocksPerSM = 4;             // register cap: at most 64 per thread
// Steps of the backward's walk (two vectors each) whose logits a thread asks the L2 to fetch
// ahead of its loads: a prefetch holds no register, so more DRAM reads stay in flight at the
// register cap's occupancy. Only where the backward loads whole 16-byte vectors of float, half
// or bfloat16: elsewhere (double, misaligned logits) it adds register spills. The forward,
// bound by its issue rate rather than its loads, prefetches nothing (docs/performance.md).
constexpr int kBackwardPrefetchSteps = 1;
constexpr int kFinalizeThreads = 128;          // one warp per group
constexpr int kFinalizeWarps = kFinalizeThreads / 32;
constexpr int64_t kMinElementsPerBlock = int64_t(kThreads) * 16;
constexpr int64_t kRangeAlign = 16;            // elements; a multiple of every vector width
constexpr int64_t kMaxGrid = 0x7fffffff;
constexpr int64_t kMaxFinalizeGrid = 65535;    // the kernel loops over the rest
constexpr unsigned kFullMask = 0xffffffffu;
// A block's partials in the workspace: the negatives' (m, z, w), then the positives'.
constexpr int64_t kPartialDoubles = 6;

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

// Loads N consecutive elements in pieces of kPiece bytes (the address must be kPiece aligned).
template <int N, int kPiece, typename scalar_t>
__device__ __forceinline__ void load_pack(const scalar_t* ptr, scalar_t (&out)[N]) {
  using raw_t = typename RawOf<kPiece>::type;
  constexpr int kPieces = N * static_cast<int>(sizeof(scalar_t)) / kPiece;
  static_assert(kPieces * kPiece == N * static_cast<int>(sizeof(scalar_t)), "whole pieces");
  raw_t raw[kPieces];
#pragma unroll
  for (int k = 0; k < kPieces; ++k) raw[k] = __ldg(reinterpret_cast<const raw_t*>(ptr) + k);
  memcpy(&out[0], &raw[0], sizeof(raw));
}

// Asks the L2 to fetch the line holding ptr (callers keep ptr inside the tensor); it holds no
// register while the line is on its way.
__device__ __forceinline__ void prefetch_l2(const void* ptr) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr));
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
// Classification of a vector: bit k of `counted` is set when element k belongs to a counted
// anchor, bit k of `positive` when it is its anchor's positive class column.
struct VectorKinds {
  uint32_t counted;
  uint32_t positive;
};

// A vector of N elements starting at class column `cls` of the anchor whose label `ya` points
// at. The launcher guarantees classes >= N, so the vector covers its anchor's columns
// [cls, cls + b) and, when b = classes - cls < N, the first N - b columns of the next anchor:
// two labels at most, read without a branch (the second load is predicated).
template <int N, typename label_t>
__device__ __forceinline__ VectorKinds classify_vector(const label_t* ya, int cls, int classes,
                                                       int64_t first_label) {
  constexpr uint32_t kAll = (N == 32) ? 0xffffffffu : ((1u << N) - 1u);
  const int b = classes - cls;  // >= 1
  const bool crosses = b < N;
  const label_t label0 = load_label(ya);
  const label_t label1 = crosses ? load_label(ya + 1) : label_t(-1);
  const uint32_t first = crosses ? (1u << b) - 1u : kAll;
  VectorKinds kinds;
  kinds.counted = (label0 >= 0 ? first : 0u) | (label1 >= 0 ? (kAll & ~first) : 0u);
  // The two anchors' positive columns (dr_loss_math.h's rule; -1 for none) as offsets inside
  // the vector: the range checks reject -1 and every column outside the vector.
  const int64_t offset0 = positive_column(label0, classes, first_label) - cls;
  const int64_t offset1 = positive_column(label1, classes, first_label) + b;
  kinds.positive = 0u;
  if (static_cast<uint64_t>(offset0) < static_cast<uint64_t>(crosses ? b : N)) {
    kinds.positive |= 1u << static_cast<int>(offset0);
  }
  if (crosses && offset1 >= b && offset1 < N) kinds.positive |= 1u << static_cast<int>(offset1);
  return kinds;
}

// ---------------------------------------------------------------------------------------------
// The walk over one range [lo, hi) of one group.
//
// gx points at the group's first logit, gy at its first label; `aligned` is the group's first
// element in the tensor whose 16-byte vectors the walk follows (logits or gradient). For the
// body's vectors calls on_vector(e, x[N], kinds) with e the vector's first element; for the
// head and tail elements on_element(e, x, kind). N == 1 walks element by element.
template <int N, int kPiece, int kPrefetchSteps, typename scalar_t, typename label_t,
          typename OnVector, typename OnElement>
__device__ __forceinline__ void walk_range(const scalar_t* __restrict__ gx, const void* aligned,
                                           const label_t* __restrict__ gy, int classes,
                                           int64_t first_label, int64_t lo, int64_t hi,
                                           OnVector& on_vector, OnElement& on_element) {
  if (lo >= hi) return;
  const int64_t t = threadIdx.x;
  using acc_t = typename AccOf<scalar_t>::type;

  // Head: elements before the first 16-byte aligned address (none when N == 1).
  int64_t head = 0;
  if (N > 1) {
    const uint64_t misaligned =
        (reinterpret_cast<uintptr_t>(static_cast<const scalar_t*>(aligned) + lo) /
         sizeof(scalar_t)) %
        static_cast<uint64_t>(N);
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
      const int kind =
          element_kind(load_label(gy + anchor), e - anchor * classes, classes, first_label);
      on_element(e, to_acc(gx[e]), kind);
    }
  }

  // Body: thread t takes vectors t, t + kThreads, ..., two per step so that two loads are in
  // flight. The position advances incrementally: e (element), ya (its anchor's label), cls.
  int64_t v = t;
  if (v >= vectors) return;
  int64_t e = body_lo + v * N;
  const int64_t first_anchor = e / classes;
  const label_t* ya = gy + first_anchor;
  int cls = static_cast<int>(e - first_anchor * classes);
  const int64_t jump = int64_t(kThreads) * N;
  const int64_t jump_anchors = jump / classes;
  const int jump_classes = static_cast<int>(jump - jump_anchors * classes);
  auto advance = [&]() {
    e += jump;
    ya += jump_anchors;
    cls += jump_classes;  // < 2 * classes
    if (cls >= classes) {
      cls -= classes;
      ++ya;
    }
  };
  for (; v < vectors; v += 2 * kThreads) {
    const bool second = v + kThreads < vectors;
    if (kPrefetchSteps > 0) {  // the two vectors of the step kPrefetchSteps ahead
      constexpr int kAhead = 2 * kPrefetchSteps;  // in jumps of kThreads vectors
      if (v + kAhead * kThreads < vectors) prefetch_l2(gx + e + kAhead * jump);
      if (v + (kAhead + 1) * kThreads < vectors) prefetch_l2(gx + e + (kAhead + 1) * jump);
    }
    scalar_t raw0[N], raw1[N];
    load_pack<N, kPiece>(gx + e, raw0);
    if (second) load_pack<N, kPiece>(gx + e + jump, raw1);
    acc_t x[N];
#pragma unroll
    for (int k = 0; k < N; ++k) x[k] = to_acc(raw0[k]);
    on_vector(e, x, classify_vector<N>(ya, cls, classes, first_label));
    advance();
    if (!second) break;
#pragma unroll
    for (int k = 0; k < N; ++k) x[k] = to_acc(raw1[k]);
    on_vector(e, x, classify_vector<N>(ya, cls, classes, first_label));
    advance();
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
  compensated_add(s.neg.z_hi, s.neg.z_lo, z);
  compensated_add(s.neg.w_hi, s.neg.w_lo, w);
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
  constexpr uint32_t kAll = (N == 32) ? 0xffffffffu : ((1u << N) - 1u);
  // positive_column gives a column below 2^30, or -1, which the unsigned compare rejects.
  const int offset = static_cast<int>(positive_column(label, classes, first_label)) - column;
  VectorKinds kinds;
  kinds.counted = label >= 0 ? kAll : 0u;
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
        compensated_add(sums.neg.z_hi, sums.neg.z_lo, z);
        compensated_add(sums.neg.w_hi, sums.neg.w_lo, w);
        z = 0;
        w = 0;
      }
      if (k + 1 < mine) add(cur[1], z, w);
      compensated_add(sums.neg.z_hi, sums.neg.z_lo, z);
      compensated_add(sums.neg.w_hi, sums.neg.w_lo, w);
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
// a fixed tree; everything in double, as the CPU merges its chunks.
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
    for (int64_t b = lane; b < blocks_per_group; b += 32) {
      const double* part = partials + (g * blocks_per_group + b) * kPartialDoubles;
      neg.merge(SoftmaxTriple<double>{part[0], part[1], part[2]});
      pos.merge(SoftmaxTriple<double>{part[3], part[4], part[5]});
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

// ---------------------------------------------------------------------------------------------
// Host side.

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

// Launches `kernel` and returns the error of this launch alone (cudaLaunchKernelEx reports the
// launch's own error; cudaGetLastError could report an earlier, unrelated one).
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), unsigned grid, unsigned block, cudaStream_t stream,
                   Args... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(block);
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  config.attrs = nullptr;
  config.numAttrs = 0;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

// The widest power of two (up to 16 bytes) by which the two addresses' offsets agree.
int shared_alignment(const void* x, const void* out) {
  const uintptr_t difference = reinterpret_cast<uintptr_t>(x) - reinterpret_cast<uintptr_t>(out);
  for (int piece = 16; piece > 1; piece /= 2) {
    if (difference % piece == 0) return piece;
  }
  return 1;
}

// Vector width of the walk: 16-byte vectors when every vector meets at most two anchors
// (classes >= N), element by element otherwise.
template <typename scalar_t>
int walk_width(int64_t classes) {
  return classes >= vec_width<scalar_t>() ? vec_width<scalar_t>() : 1;
}

template <typename scalar_t, typename label_t, int N>
auto forward_kernel(bool fixed) {
  return fixed ? forward_partials_kernel<scalar_t, label_t, N, true>
               : forward_partials_kernel<scalar_t, label_t, N, false>;
}

// Whether the anchor-aligned walk can take a call (ForwardWalk, dr_loss_kernels.h): the
// conditions forward_aligned_kernel relies on.
template <typename scalar_t>
bool aligned_walk_applies(const void* logits, const Problem& s, bool fixed) {
  constexpr int N = vec_width<scalar_t>();
  return sizeof(scalar_t) < 8 && fixed && s.classes % N == 0 &&
         reinterpret_cast<uintptr_t>(logits) % 16 == 0 &&
         s.anchors * s.classes < (int64_t(1) << 30);
}

// The forward kernel a call runs (the occupancy query and the launch must agree); `walk` is
// the plan's, kGeneral unless aligned_walk_applies.
template <typename scalar_t, typename label_t>
auto forward_kernel_for(const Problem& s, bool fixed, ForwardWalk walk) {
  constexpr int N = vec_width<scalar_t>();
  if constexpr (sizeof(scalar_t) < 8) {
    if (walk == ForwardWalk::kAligned) return forward_aligned_kernel<scalar_t, label_t, false>;
    if (walk == ForwardWalk::kPipelined) return forward_aligned_kernel<scalar_t, label_t, true>;
  }
  return walk_width<scalar_t>(s.classes) == N ? forward_kernel<scalar_t, label_t, N>(fixed)
                                               : forward_kernel<scalar_t, label_t, 1>(fixed);
}

// The grid: one wave of the forward kernel over the current device, its multiprocessor count
// times the blocks per multiprocessor the occupancy calculator gives. Both are asked once per
// device and kernel and the product kept (no query during a CUDA graph capture after the first
// eager call, and no query cost per call; neither query synchronizes with the host).
template <typename scalar_t, typename label_t>
int64_t forward_wave(const Problem& s, bool fixed, ForwardWalk walk) {
  constexpr int kMaxDevices = 64;
  // [device][kernel]: the general walk's four (vectors or not, fixed shifts or not), then the
  // aligned and the pipelined walk.
  static std::atomic<int64_t> cached[kMaxDevices][6];
  const int wide = walk_width<scalar_t>(s.classes) == vec_width<scalar_t>() ? 1 : 0;
  const int kernel = walk == ForwardWalk::kGeneral ? wide * 2 + (fixed ? 1 : 0)
                                                   : 3 + static_cast<int>(walk);
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();  // the query's own error
    device = -1;
  }
  std::atomic<int64_t>* slot =
      device >= 0 && device < kMaxDevices ? &cached[device][kernel] : nullptr;
  int64_t wave = slot != nullptr ? slot->load(std::memory_order_relaxed) : 0;
  if (wave > 0) return wave;
  int multiprocessors = 0;
  int blocks_per_sm = 0;
  if (device < 0 ||
      cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) !=
          cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &blocks_per_sm, forward_kernel_for<scalar_t, label_t>(s, fixed, walk), kThreads, 0) !=
          cudaSuccess ||
      multiprocessors < 1 || blocks_per_sm < 1) {
    // The queries' own error: a grid of one block per launch bound (the launch that follows
    // reports a device that does not work), not kept.
    (void)cudaGetLastError();
    return multiprocessors > 0 ? int64_t(multiprocessors) * kMinBlocksPerSM : kMinBlocksPerSM;
  }
  wave = int64_t(multiprocessors) * blocks_per_sm;
  if (slot != nullptr) slot->store(wave, std::memory_order_relaxed);
  return wave;
}

bool fixed_shifts(const LossOptions& hp) {
  const Hyper<double> h = make_hyper<double>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin);
  return h.fixed_neg && h.fixed_pos;
}

}  // namespace

LaunchPlan plan_launch(LogitsType logits_type, const void* logits, LabelsType labels_type,
                       const Problem& s, const LossOptions& hp, ForwardWalk walk,
                       int64_t blocks_per_group_override) {
  LaunchPlan plan{0, 0, 0, 0, ForwardWalk::kGeneral};
  if (s.groups <= 0 || s.anchors <= 0 || s.classes <= 0) return plan;
  const bool fixed = fixed_shifts(hp);
  int64_t wave = 0;
  dispatch(logits_type, labels_type, [&](auto scalar_tag, auto label_tag) {
    using scalar_t = decltype(scalar_tag);
    if (walk != ForwardWalk::kGeneral && aligned_walk_applies<scalar_t>(logits, s, fixed)) {
      plan.forward_walk = walk;
    }
    wave = forward_wave<scalar_t, decltype(label_tag)>(s, fixed, plan.forward_walk);
    return cudaSuccess;
  });
  const int64_t elements = s.anchors * s.classes;
  int64_t blocks = ceil_div(wave, s.groups);
  const int64_t by_size = ceil_div(elements, kMinElementsPerBlock);
  if (blocks > by_size) blocks = by_size;
  if (blocks_per_group_override > 0) blocks = blocks_per_group_override;
  if (blocks < 1) blocks = 1;
  plan.blocks_per_group = blocks;
  plan.per_block = ceil_div(ceil_div(elements, blocks), kRangeAlign) * kRangeAlign;
  const int64_t items = s.groups * blocks;
  plan.grid = items < wave ? items : wave;
  if (plan.grid > kMaxGrid) plan.grid = kMaxGrid;
  plan.workspace_doubles = items * kPartialDoubles;
  return plan;
}

cudaError_t launch_forward(LogitsType logits_type, const void* logits, LabelsType labels_type,
                           const void* labels, const Problem& s, const LossOptions& hp,
                           const LaunchPlan& plan, double* workspace, void* losses,
                           void* stats, cudaStream_t stream) {
  if (s.groups <= 0) return cudaSuccess;
  return dispatch(logits_type, labels_type, [&](auto scalar_tag, auto label_tag) {
    using scalar_t = decltype(scalar_tag);
    using label_t = decltype(label_tag);
    using acc_t = typename AccOf<scalar_t>::type;
    if (plan.blocks_per_group > 0) {
      const Hyper<acc_t> h =
          make_hyper<acc_t>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin);
      const cudaError_t error =
          launch(forward_kernel_for<scalar_t, label_t>(s, fixed_shifts(hp), plan.forward_walk),
                 static_cast<unsigned>(plan.grid), kThreads, stream,
                 static_cast<const scalar_t*>(logits), static_cast<const label_t*>(labels),
                 s.groups, s.anchors, s.classes, plan.blocks_per_group, plan.per_block,
                 hp.first_label, h, workspace);
      if (error != cudaSuccess) return error;
    }
    const Hyper<double> hd =
        make_hyper<double>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin);
    const int64_t finalize_blocks = ceil_div(s.groups, kFinalizeWarps);
    const unsigned grid = static_cast<unsigned>(
        finalize_blocks < kMaxFinalizeGrid ? finalize_blocks : kMaxFinalizeGrid);
    return launch(finalize_kernel<acc_t>, grid, kFinalizeThreads, stream,
                  static_cast<const double*>(workspace), s.groups, plan.blocks_per_group, hd,
                  static_cast<acc_t*>(losses), static_cast<acc_t*>(stats));
  });
}

cudaError_t launch_backward(LogitsType logits_type, const void* grad_losses, const void* logits,
                            LabelsType labels_type, const void* labels, const void* stats,
                            const Problem& s, const LossOptions& hp, const LaunchPlan& plan,
                            void* grad_logits, cudaStream_t stream) {
  if (plan.blocks_per_group == 0) return cudaSuccess;  // no element to write
  return dispatch(logits_type, labels_type, [&](auto scalar_tag, auto label_tag) {
    using scalar_t = decltype(scalar_tag);
    using label_t = decltype(label_tag);
    using acc_t = typename AccOf<scalar_t>::type;
    constexpr int N = vec_width<scalar_t>();
    constexpr int kElement = static_cast<int>(sizeof(scalar_t));
    // The gradient is stored in 16-byte vectors; the logits are loaded in 16-byte vectors
    // too when they share the gradient's offset from a 16-byte boundary, else element by
    // element (whole elements: offsets are multiples of the element size).
    auto kernel = backward_kernel<scalar_t, label_t, 1, kElement>;
    if (walk_width<scalar_t>(s.classes) == N) {
      kernel = shared_alignment(logits, grad_logits) >= 16
                   ? backward_kernel<scalar_t, label_t, N, 16>
                   : backward_kernel<scalar_t, label_t, N, kElement>;
    }
    return launch(kernel, static_cast<unsigned>(plan.grid), kThreads, stream,
                  static_cast<const acc_t*>(grad_losses), static_cast<const scalar_t*>(logits),
                  static_cast<const label_t*>(labels), static_cast<const acc_t*>(stats),
                  s.groups, s.anchors, s.classes, plan.blocks_per_group, plan.per_block,
                  hp.first_label,
                  make_hyper<acc_t>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin),
                  make_hyper<double>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin),
                  static_cast<scalar_t*>(grad_logits));
  });
}

}  // namespace cuda
}  // namespace drloss

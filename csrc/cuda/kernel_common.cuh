// What both passes of the CUDA kernels share (dr_loss_kernels.cu includes this): block shape,
// element and vector types, loads and stores, the classification of a vector by its labels, the
// walk over one range of a group, and the work items.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "../dr_loss_math.h"

namespace drloss {
namespace cuda {
namespace {

constexpr int kThreads = 256;                  // threads of a forward/backward block
constexpr int kWarps = kThreads / 32;
constexpr int kMinBlocksPerSM = 4;             // register cap: at most 64 per thread
constexpr unsigned kFullMask = 0xffffffffu;
// A block's partials in the workspace: the negatives' (m, z, w), then the positives'.
constexpr int64_t kPartialDoubles = 6;

static_assert(kThreads % 32 == 0 && kWarps <= 32, "block must be whole warps, at most 32");

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

// The bits of a vector's N elements.
template <int N>
constexpr uint32_t vector_mask() {
  return N == 32 ? 0xffffffffu : (1u << N) - 1u;
}

// A vector of N elements starting at class column `cls` of the anchor whose label `ya` points
// at. The launcher guarantees classes >= N, so the vector covers its anchor's columns
// [cls, cls + b) and, when b = classes - cls < N, the first N - b columns of the next anchor:
// two labels at most, read without a branch (the second load is predicated).
template <int N, typename label_t>
__device__ __forceinline__ VectorKinds classify_vector(const label_t* ya, int cls, int classes,
                                                       int64_t first_label) {
  constexpr uint32_t kAll = vector_mask<N>();
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

}  // namespace
}  // namespace cuda
}  // namespace drloss

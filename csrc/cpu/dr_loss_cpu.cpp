// CPU forward and backward of the sigmoid DR loss.
//
// Work is cut into fixed-size chunks of one group's elements (kChunk, independent of the thread
// count), which the threads take in small batches as they go (ChunkQueue). Forward: every
// chunk folds its elements into a negatives' and a positives' softmax triple; the triples of a
// group are then merged in chunk order, so the result is bitwise the same for any number of
// threads and any order in which they took the chunks. Backward: one element-wise pass per
// chunk.
//
// Inside a chunk the elements are first classified anchor by anchor (a label is read once per
// anchor, not once per element), then the dense loops over the chunk run on plain arrays that
// the compiler vectorizes, block by block: each block's sigmoid, then its weights (forward) or
// gradient (backward), while the next chunk's logits are prefetched. The few positives (at
// most one per anchor) are handled one by one.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../dr_loss.h"
#include "../dr_loss_math.h"

// Hot loops get AVX-512 (x86-64-v4) and AVX2+FMA (x86-64-v3) clones next to the baseline build,
// picked once at load time by the CPU it runs on.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DRLOSS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// Block conversions (float16 below) get an F16C version next to the portable one.
#define DRLOSS_CPU_F16C 1
#define DRLOSS_CPU_PORTABLE __attribute__((target("default")))
#include <immintrin.h>
#else
#define DRLOSS_CPU_CLONES
#define DRLOSS_CPU_F16C 0
#define DRLOSS_CPU_PORTABLE
#endif

namespace drloss {
namespace {

constexpr int64_t kChunk = 2048;
constexpr int64_t kMergesPerTask = 1 << 14;
// The backward's per-group constants a task computes: a parallel region costs more than
// thousands of them.
constexpr int64_t kGroupGradsPerTask = 1 << 12;
// Chunks a thread takes at a time, at most: tens of microseconds of work, so a thread that
// runs out waits at most that long for the others, and one atomic add per batch costs nothing
// measurable. Small problems take fewer at a time, so that each thread gets several batches.
constexpr int64_t kMaxChunksPerTake = 16;
constexpr int64_t kMinTakesPerThread = 8;

// Hands out the chunks [0, total) to the threads. Each thread starts on its own contiguous
// range, as with a static split (so each streams through its own memory, and the pages of a
// fresh gradient are mostly first touched by one thread only), and takes it in batches; a
// thread that finishes its range goes on taking batches from the others'. A static split alone
// makes every call as slow as its slower thread, and threads that share their cores with other
// work (data loaders, other processes, the host of a VM) often run at different speeds within
// a call. Which thread takes a chunk changes no result: each chunk's output depends on the
// chunk alone.
class ChunkQueue {
 public:
  explicit ChunkQueue(int64_t total)
      : threads_(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total))),
        take_(std::clamp<int64_t>(total / (threads_ * kMinTakesPerThread), 1, kMaxChunksPerTake)),
        ranges_(threads_) {
    for (int64_t t = 0; t < threads_; ++t) {
      ranges_[t].next.store(total * t / threads_, std::memory_order_relaxed);
      ranges_[t].end = total * (t + 1) / threads_;
    }
  }

  // Runs worker(take) once per thread, where take(first, last) gives the thread's next batch
  // [first, last) and returns false once every chunk has been taken. Where at::parallel_for
  // runs serially (one thread, or inside another parallel region), the first worker takes all.
  template <typename Worker>
  void run(const Worker& worker) {
    at::parallel_for(0, threads_, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        int64_t range = t;  // its own first, then the others in turn
        int64_t visited = 0;
        auto take = [&](int64_t& first, int64_t& last) {
          for (; visited < threads_; ++visited, range = (range + 1) % threads_) {
            Range& r = ranges_[range];
            first = r.next.fetch_add(take_, std::memory_order_relaxed);
            if (first < r.end) {
              last = std::min(first + take_, r.end);
              return true;
            }
          }
          return false;
        };
        worker(take);
      }
    });
  }

 private:
  struct alignas(64) Range {  // one cache line each: the threads' counters do not share one
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };
  const int64_t threads_;
  const int64_t take_;  // chunks per batch
  std::vector<Range> ranges_;
};

// The elements [begin, end) of one group, classified. `neg` is 1 for a negative and 0
// otherwise; `pos_index` lists the positions (relative to begin) of the positives. One
// ChunkKinds serves a thread's consecutive chunks: rather than refilling `neg` with ones for
// every chunk, it keeps the few zeros it wrote (the
// positives and the spans of ignored anchors) and sets only those back to one.
struct ChunkKinds {
  int32_t neg[kChunk];
  int32_t pos_index[kChunk];
  int64_t num_pos = 0;
  int32_t ignored_begin[kChunk], ignored_end[kChunk];
  int64_t num_ignored = 0;

  ChunkKinds() { std::fill(neg, neg + kChunk, 1); }

  // Back to all negatives: sets back the zeros the previous chunk wrote.
  void reset() {
    for (int64_t k = 0; k < num_ignored; ++k) {
      std::fill(neg + ignored_begin[k], neg + ignored_end[k], 1);
    }
    for (int64_t k = 0; k < num_pos; ++k) neg[pos_index[k]] = 1;
    num_pos = 0;
    num_ignored = 0;
  }
};

template <typename label_t>
DRLOSS_CPU_CLONES void classify_chunk(const label_t* group_labels, int64_t begin, int64_t end,
                                      int64_t classes, int64_t first_label, ChunkKinds& kinds) {
  // Every element starts as a negative; the anchor loop then clears the rare ignored anchors
  // and the positives, instead of filling each anchor's short range itself.
  kinds.reset();
  for (int64_t anchor = begin / classes; anchor * classes < end; ++anchor) {
    const label_t label = group_labels[anchor];
    if (label < 0) {
      const int64_t lo = std::max(begin, anchor * classes) - begin;
      const int64_t hi = std::min(end, (anchor + 1) * classes) - begin;
      std::fill(kinds.neg + lo, kinds.neg + hi, 0);
      kinds.ignored_begin[kinds.num_ignored] = static_cast<int32_t>(lo);
      kinds.ignored_end[kinds.num_ignored++] = static_cast<int32_t>(hi);
      continue;
    }
    // The one class column of this anchor that can be positive (if it lies in the chunk).
    const int64_t column = positive_column(label, classes, first_label);
    const int64_t pos = anchor * classes + column;
    if (column >= 0 && pos >= begin && pos < end) {
      kinds.neg[pos - begin] = 0;
      kinds.pos_index[kinds.num_pos++] = static_cast<int32_t>(pos - begin);
    }
  }
}

// Conversions between the logits' storage and the accumulation type, written so that compilers
// vectorize them (c10's scalar conversions do not vectorize): bfloat16 is the high half of a
// float, rounded to nearest even on the way back; half uses c10's branch-free bit conversions
// (c10::Half's own operators go through calls the loops do not vectorize).
template <typename scalar_t>
struct Storage {
  using raw_t = scalar_t;
  template <typename acc_t>
  static acc_t load(raw_t v) {
    return static_cast<acc_t>(v);
  }
  template <typename acc_t>
  static raw_t store(acc_t v) {
    return static_cast<raw_t>(v);
  }
};

template <>
struct Storage<c10::BFloat16> {
  using raw_t = uint16_t;
  template <typename acc_t>
  static float load(raw_t v) {
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  }
  static raw_t store(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return static_cast<raw_t>(f != f ? 0x7fc0u : rounded);  // quiet NaN, as c10 gives
  }
};

template <>
struct Storage<c10::Half> {
  using raw_t = uint16_t;
  template <typename acc_t>
  static float load(raw_t v) {
    return c10::detail::fp16_ieee_to_fp32_value(v);
  }
  static raw_t store(float f) { return c10::detail::fp16_ieee_from_fp32_value(f); }
};

template <typename scalar_t>
using raw_of = typename Storage<scalar_t>::raw_t;

}  // namespace

// float16 <-> float32 for n elements. The portable conversions (Storage<c10::Half>, c10's bit
// manipulations) take many vector instructions per element; where the CPU has F16C (every
// x86-64-v3 CPU) one instruction converts 8 elements. Both round to nearest even, so the results are the same
// bits (NaN payloads aside). The version is picked at load time, like the clones above; the
// logits are converted once per chunk, the gradient once per block.
DRLOSS_CPU_PORTABLE void half_block_to_float(const uint16_t* in, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = Storage<c10::Half>::load<float>(in[i]);
}

DRLOSS_CPU_PORTABLE void float_block_to_half(const float* in, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = Storage<c10::Half>::store(in[i]);
}

#if DRLOSS_CPU_F16C
__attribute__((target("avx,f16c"))) void half_block_to_float(const uint16_t* in, int64_t n,
                                                              float* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) out[i] = Storage<c10::Half>::load<float>(in[i]);
}

__attribute__((target("avx,f16c"))) void float_block_to_half(const float* in, int64_t n,
                                                              uint16_t* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
  for (; i < n; ++i) out[i] = Storage<c10::Half>::store(in[i]);
}
#endif

namespace {

template <typename scalar_t>
constexpr bool kIsHalf = std::is_same<scalar_t, c10::Half>::value;
template <typename scalar_t>
constexpr bool kIs16Bit = kIsHalf<scalar_t> || std::is_same<scalar_t, c10::BFloat16>::value;

// A 16-bit gradient is computed into a float block and converted in a loop of its own. In one
// loop with the gradient, GCC's AVX2 code for bfloat16 narrowed the selects' masks to 16 bits
// and blended there, which cost more than the separate loop.
template <typename scalar_t>
inline void store_block(const float* grad, int64_t n, raw_of<scalar_t>* out) {
  if constexpr (kIsHalf<scalar_t>) {
    float_block_to_half(grad, n, out);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = Storage<scalar_t>::store(grad[i]);
  }
}

// float16 logits are converted to float for a whole chunk at once, into p, before the dense
// loops (one call per chunk: the conversion is a separately compiled function, and each call
// clobbers the vector registers that hold the loops' constants). Other types are read directly.
template <typename scalar_t, typename acc_t>
inline void stage_logits(const raw_of<scalar_t>* x, int64_t n, acc_t* p) {
  if constexpr (kIsHalf<scalar_t>) half_block_to_float(x, n, p);
}

// p = sigmoid(x) for n elements, in the accumulation type (for float16, in place over the
// staged logits). Inlined into the dense loops below, block by block: the logits then stream
// in from memory during all of a chunk's arithmetic, not only during a sigmoid pass of its own
// (one long loop per element would instead tie the sigmoid and what follows into a dependency
// chain too long for the core to overlap).
template <typename scalar_t, typename acc_t>
inline void sigmoid_block(const raw_of<scalar_t>* x, int64_t n, acc_t* p) {
  if constexpr (kIsHalf<scalar_t>) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) p[i] = sigmoid(p[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      p[i] = sigmoid(Storage<scalar_t>::template load<acc_t>(x[i]));
    }
  }
}

// Compensated sums kept per SIMD lane (policy 2 of dr_loss_math.h), then added up in double in
// lane order.
constexpr int kLanes = 16;
// The dense loops' block: each lane's plain partial sum (policy 2), and the unit in which the
// loops take the sigmoid and prefetch.
constexpr int64_t kBlock = kLanes * kMaxPlainTerms;

template <typename acc_t>
struct LaneSums {
  acc_t z_hi[kLanes], z_lo[kLanes], w_hi[kLanes], w_lo[kLanes];

  LaneSums() {
    for (int j = 0; j < kLanes; ++j) z_hi[j] = z_lo[j] = w_hi[j] = w_lo[j] = acc_t(0);
  }

  SoftmaxTriple<double> triple(acc_t m) const {
    double z = 0, w = 0;
    for (int j = 0; j < kLanes; ++j) {
      z += compensated_value(z_hi[j], z_lo[j]);
      w += compensated_value(w_hi[j], w_lo[j]);
    }
    return SoftmaxTriple<double>::from_sums(static_cast<double>(m), z, 0.0, w, 0.0);
  }
};

// Software prefetch one chunk ahead. The dense loops below go block by block; before each
// block they ask for the logits at the same place in the next chunk, so that memory keeps
// working while the arithmetic runs: the hardware prefetcher alone overlaps the two only in
// part. `end` bounds the requests to the logits.
template <typename raw_t>
inline void prefetch_next_chunk(const raw_t* block, int64_t n, const raw_t* end) {
  constexpr uintptr_t kLine = 64;
  const uintptr_t first = reinterpret_cast<uintptr_t>(block) + kChunk * sizeof(raw_t);
  const uintptr_t last = std::min(first + static_cast<uintptr_t>(n) * sizeof(raw_t),
                                  reinterpret_cast<uintptr_t>(end));
  for (uintptr_t a = first; a < last; a += kLine) {
    __builtin_prefetch(reinterpret_cast<const void*>(a), 0, 3);
  }
}

// The negatives' triple of a chunk against shift m (policy 1: fixed, or the chunk's max).
// Writes p = sigmoid(x) for the chunk (the positives read it afterwards).
template <bool kFixedShift, typename scalar_t, typename acc_t>
DRLOSS_CPU_CLONES SoftmaxTriple<double> negative_triple(const raw_of<scalar_t>* x, acc_t* p,
                                                        const int32_t* neg, int64_t n,
                                                        const Hyper<acc_t>& h,
                                                        const raw_of<scalar_t>* x_end) {
  stage_logits<scalar_t>(x, n, p);
  acc_t m = h.shift_neg;
  if (!kFixedShift) {  // the shift is the max over the chunk: every p first
    sigmoid_block<scalar_t>(x, n, p);
    m = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; ++i) {
      const acc_t t = neg[i] ? h.s2_neg * p[i] : -std::numeric_limits<acc_t>::infinity();
      m = t > m ? t : m;
    }
    // No negative (or only NaN ones): every term below is selected away (or NaN, which must
    // reach the sums); m = -inf keeps that so.
  }
  LaneSums<acc_t> sums;
  // The weight is computed for every lane and the sums are updated only in the negatives'
  // lanes: one masked add each (adding a selected 0 instead would cost an add per lane, since
  // -0 + 0 is not -0). Policy 2: each lane adds kMaxPlainTerms terms plainly, then that
  // partial with compensation.
  auto term = [&](int64_t i, acc_t& z, acc_t& w) {
    const acc_t pi = p[i];
    const acc_t weight = shifted_weight<kFixedShift>(h.s2_neg * pi - m);
    const bool is_neg = neg[i] != 0;
    z = is_neg ? z + weight : z;
    w = is_neg ? w + pi * weight : w;
  };
  int64_t base = 0;
  for (; base + kBlock <= n; base += kBlock) {
    if (kFixedShift) {
      prefetch_next_chunk(x + base, kBlock, x_end);
      sigmoid_block<scalar_t>(x + base, kBlock, p + base);
    }
    acc_t z[kLanes], w[kLanes];
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) z[j] = w[j] = acc_t(0);
    for (int r = 0; r < kMaxPlainTerms; ++r) {
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) term(base + r * kLanes + j, z[j], w[j]);
    }
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      compensated_add(sums.z_hi[j], sums.z_lo[j], z[j]);
      compensated_add(sums.w_hi[j], sums.w_lo[j], w[j]);
    }
  }
  if (kFixedShift) sigmoid_block<scalar_t>(x + base, n - base, p + base);
  for (int64_t i = base; i < n; ++i) {  // the chunk's last, partial block: one term at a time
    acc_t z = 0, w = 0;
    term(i, z, w);
    const int j = static_cast<int>(i % kLanes);
    compensated_add(sums.z_hi[j], sums.z_lo[j], z);
    compensated_add(sums.w_hi[j], sums.w_lo[j], w);
  }
  return sums.triple(m);
}

// The positives' triple of a chunk (at most one per anchor: a short scalar loop).
template <typename acc_t>
SoftmaxTriple<double> positive_triple(const acc_t* p, const int32_t* pos_index, int64_t num_pos,
                                      const Hyper<acc_t>& h) {
  RunningMaxSums<acc_t> sums = RunningMaxSums<acc_t>::start_positives(h);
  for (int64_t k = 0; k < num_pos; ++k) {
    const acc_t pk = p[pos_index[k]];
    sums.add(pk, h.s2_pos * pk);
  }
  return sums.triple();
}

// The negatives' gradient of one chunk, written straight into the output in its storage type
// (0 for every other element: the positives are overwritten afterwards, from the p it leaves).
template <bool kFixedShift, typename scalar_t, typename acc_t>
DRLOSS_CPU_CLONES void negative_grad_chunk(const raw_of<scalar_t>* x, acc_t* p,
                                           const int32_t* neg, int64_t n,
                                           const GroupGrad<acc_t>& gg, const Hyper<acc_t>& h,
                                           const raw_of<scalar_t>* x_end,
                                           raw_of<scalar_t>* out) {
  stage_logits<scalar_t>(x, n, p);
  for (int64_t base = 0; base < n; base += kBlock) {
    const int64_t count = std::min(kBlock, n - base);
    prefetch_next_chunk(x + base, count, x_end);
    sigmoid_block<scalar_t>(x + base, count, p + base);
    if constexpr (kIs16Bit<scalar_t>) {  // through a float block, converted all at once
      float grad[kBlock];
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) {
        const acc_t g = negative_grad<kFixedShift>(p[base + i], gg, h);
        grad[i] = neg[base + i] ? g : acc_t(0);
      }
      store_block<scalar_t>(grad, count, out + base);
    } else {
#pragma omp simd
      for (int64_t i = base; i < base + count; ++i) {
        const acc_t g = negative_grad<kFixedShift>(p[i], gg, h);
        out[i] = Storage<scalar_t>::store(neg[i] ? g : acc_t(0));
      }
    }
  }
}

// A freshly allocated multi-MiB gradient is mapped in 4 KiB pages, and faulting them in costs
// more than computing the gradient. Asking for transparent huge pages on its 2 MiB-aligned interior removes most of
// them. It is only a hint: where it is refused or unsupported nothing changes.
void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  if (bytes < static_cast<int64_t>(4 * kHugePage)) return;
  const uintptr_t first = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (first + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (first + static_cast<uintptr_t>(bytes)) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// A group's chunks: [chunk * kChunk, min((chunk + 1) * kChunk, elements)).
struct Chunking {
  int64_t per_group;
  int64_t elements;  // per group
  int64_t total;
  Chunking(const Problem& pr)
      : per_group((pr.anchors * pr.classes + kChunk - 1) / kChunk),
        elements(pr.anchors * pr.classes),
        total(pr.groups * per_group) {}
};

// Runs body(c, g, begin, n, kinds, p) for every chunk c, the elements [begin, begin + n) of
// group g, on the intra-op threads (ChunkQueue); `kinds` and `p` (kChunk values) are the
// calling thread's scratch, reused from one of its chunks to the next.
template <typename acc_t, typename Body>
void for_each_chunk(const Chunking& ch, const Body& body) {
  ChunkQueue queue(ch.total);
  queue.run([&](auto& take) {
    ChunkKinds kinds;
    acc_t p[kChunk];
    int64_t first = 0, last = 0;
    while (take(first, last)) {
      for (int64_t c = first; c < last; ++c) {
        const int64_t begin = (c % ch.per_group) * kChunk;
        body(c, c / ch.per_group, begin, std::min(kChunk, ch.elements - begin), kinds, p);
      }
    }
  });
}

template <typename scalar_t, typename label_t>
void forward_impl(const at::Tensor& logits, const at::Tensor& labels, const Problem& pr,
                  const LossOptions& opt, at::Tensor& losses, at::Tensor& stats) {
  using acc_t = at::opmath_type<scalar_t>;
  const Hyper<acc_t> h =
      make_hyper<acc_t>(opt.pos_lambda, opt.neg_lambda, opt.L, opt.tau, opt.margin);
  const auto* x = reinterpret_cast<const raw_of<scalar_t>*>(logits.data_ptr<scalar_t>());
  const raw_of<scalar_t>* x_end = x + logits.numel();
  const label_t* y = labels.data_ptr<label_t>();
  const Chunking ch(pr);

  // Partial triples per chunk, in double so the in-order merge adds no visible error.
  std::vector<SoftmaxTriple<double>> neg_parts(ch.total), pos_parts(ch.total);
  for_each_chunk<acc_t>(ch, [&](int64_t c, int64_t g, int64_t begin, int64_t n,
                               ChunkKinds& kinds, acc_t* p) {
    classify_chunk(y + g * pr.anchors, begin, begin + n, pr.classes, opt.first_label, kinds);
    const raw_of<scalar_t>* x_chunk = x + g * ch.elements + begin;
    neg_parts[c] = h.fixed_neg
                       ? negative_triple<true, scalar_t>(x_chunk, p, kinds.neg, n, h, x_end)
                       : negative_triple<false, scalar_t>(x_chunk, p, kinds.neg, n, h, x_end);
    pos_parts[c] = positive_triple(p, kinds.pos_index, kinds.num_pos, h);
  });

  const Hyper<double> hd =
      make_hyper<double>(opt.pos_lambda, opt.neg_lambda, opt.L, opt.tau, opt.margin);
  acc_t* loss_out = losses.data_ptr<acc_t>();
  acc_t* stats_out = stats.data_ptr<acc_t>();
  // A parallel region costs more than a few thousand merges: only many groups get one.
  const int64_t merge_grain = std::max<int64_t>(1, kMergesPerTask / std::max<int64_t>(1, ch.per_group));
  at::parallel_for(0, pr.groups, merge_grain, [&](int64_t first, int64_t last) {
    for (int64_t g = first; g < last; ++g) {
      SoftmaxTriple<double> neg = SoftmaxTriple<double>::empty();
      SoftmaxTriple<double> pos = SoftmaxTriple<double>::empty();
      for (int64_t c = g * ch.per_group; c < (g + 1) * ch.per_group; ++c) {
        neg.merge(neg_parts[c]);
        pos.merge(pos_parts[c]);
      }
      double group_stats[kNumStats];
      loss_out[g] = static_cast<acc_t>(finalize_group(neg, pos, hd, group_stats));
      for (int k = 0; k < kNumStats; ++k) {
        stats_out[g * kNumStats + k] = static_cast<acc_t>(group_stats[k]);
      }
    }
  });
}

template <typename scalar_t, typename label_t>
void backward_impl(const at::Tensor& grad_losses, const at::Tensor& logits,
                   const at::Tensor& labels, const at::Tensor& stats, const Problem& pr,
                   const LossOptions& opt, at::Tensor& grad_logits) {
  using acc_t = at::opmath_type<scalar_t>;
  const Hyper<acc_t> h =
      make_hyper<acc_t>(opt.pos_lambda, opt.neg_lambda, opt.L, opt.tau, opt.margin);
  const auto* x = reinterpret_cast<const raw_of<scalar_t>*>(logits.data_ptr<scalar_t>());
  const raw_of<scalar_t>* x_end = x + logits.numel();
  const label_t* y = labels.data_ptr<label_t>();
  const acc_t* g_in = grad_losses.data_ptr<acc_t>();
  const acc_t* st = stats.data_ptr<acc_t>();
  auto* out = reinterpret_cast<raw_of<scalar_t>*>(grad_logits.data_ptr<scalar_t>());
  advise_huge_pages(out, grad_logits.numel() * static_cast<int64_t>(sizeof(scalar_t)));
  const Chunking ch(pr);

  // Each group's constants once, not once per chunk (a group has thousands of chunks).
  const Hyper<double> hd =
      make_hyper<double>(opt.pos_lambda, opt.neg_lambda, opt.L, opt.tau, opt.margin);
  std::vector<GroupGrad<acc_t>> group_grads(pr.groups);
  at::parallel_for(0, pr.groups, kGroupGradsPerTask, [&](int64_t first, int64_t last) {
    for (int64_t g = first; g < last; ++g) {
      group_grads[g] = make_group_grad(g_in[g], st + g * kNumStats, h, hd);
    }
  });
  for_each_chunk<acc_t>(ch, [&](int64_t, int64_t g, int64_t begin, int64_t n,
                               ChunkKinds& kinds, acc_t* p) {
    const GroupGrad<acc_t>& gg = group_grads[g];
    classify_chunk(y + g * pr.anchors, begin, begin + n, pr.classes, opt.first_label, kinds);
    const raw_of<scalar_t>* x_chunk = x + g * ch.elements + begin;
    raw_of<scalar_t>* out_chunk = out + g * ch.elements + begin;
    if (h.fixed_neg) {
      negative_grad_chunk<true, scalar_t>(x_chunk, p, kinds.neg, n, gg, h, x_end, out_chunk);
    } else {
      negative_grad_chunk<false, scalar_t>(x_chunk, p, kinds.neg, n, gg, h, x_end, out_chunk);
    }
    for (int64_t k = 0; k < kinds.num_pos; ++k) {
      const int32_t i = kinds.pos_index[k];
      out_chunk[i] = Storage<scalar_t>::store(positive_grad(p[i], gg, h));
    }
  });
}

}  // namespace

void forward_cpu(const at::Tensor& logits, const at::Tensor& labels, const Problem& problem,
                 const LossOptions& options, at::Tensor& losses, at::Tensor& stats) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "sigmoid_dr_loss_forward_cpu", [&] {
        if (labels.scalar_type() == at::kInt) {
          forward_impl<scalar_t, int32_t>(logits, labels, problem, options, losses, stats);
        } else {
          forward_impl<scalar_t, int64_t>(logits, labels, problem, options, losses, stats);
        }
      });
}

void backward_cpu(const at::Tensor& grad_losses, const at::Tensor& logits,
                  const at::Tensor& labels, const at::Tensor& stats, const Problem& problem,
                  const LossOptions& options, at::Tensor& grad_logits) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "sigmoid_dr_loss_backward_cpu", [&] {
        if (labels.scalar_type() == at::kInt) {
          backward_impl<scalar_t, int32_t>(grad_losses, logits, labels, stats, problem, options,
                                           grad_logits);
        } else {
          backward_impl<scalar_t, int64_t>(grad_losses, logits, labels, stats, problem, options,
                                           grad_logits);
        }
      });
}

}  // namespace drloss

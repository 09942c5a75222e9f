// CPU forward and backward of the sigmoid DR loss.
//
// Work is cut into fixed-size chunks of one group's elements (kChunk, independent of the thread
// count). Forward: every chunk folds its elements into a negatives' and a positives' softmax
// triple; the triples of a group are then merged in chunk order, so the result is bitwise the
// same for any number of threads. Backward: one element-wise pass per chunk.
//
// Inside a chunk the elements are first classified anchor by anchor (a label is read once per
// anchor, not once per element), then the dense loops over the chunk run on plain arrays that
// the compiler vectorizes; the few positives (at most one per anchor) are handled one by one.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
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
#else
#define DRLOSS_CPU_CLONES
#endif

namespace drloss {
namespace {

constexpr int64_t kChunk = 2048;
constexpr int64_t kMergesPerTask = 1 << 14;

// The elements [begin, end) of one group, classified. `neg` is 1 for a negative and 0
// otherwise; `pos_index` lists the positions (relative to begin) of the positives.
struct ChunkKinds {
  int32_t neg[kChunk];
  int32_t pos_index[kChunk];
  int64_t num_pos;
};

template <typename label_t>
void classify_chunk(const label_t* group_labels, int64_t begin, int64_t end, int64_t classes,
                    int64_t first_label, ChunkKinds& kinds) {
  kinds.num_pos = 0;
  for (int64_t anchor = begin / classes; anchor * classes < end; ++anchor) {
    const int64_t lo = std::max(begin, anchor * classes);
    const int64_t hi = std::min(end, (anchor + 1) * classes);
    const label_t label = group_labels[anchor];
    const int32_t counted = element_kind(label, 0, first_label) != kIgnored;
    std::fill(kinds.neg + (lo - begin), kinds.neg + (hi - begin), counted);
    if (!counted) continue;
    // The one class column of this anchor that can be positive (if it lies in the chunk).
    const int64_t pos = anchor * classes + (static_cast<int64_t>(label) - first_label);
    if (static_cast<int64_t>(label) - first_label < classes && pos >= lo && pos < hi &&
        element_kind(label, pos - anchor * classes, first_label) == kPositive) {
      kinds.neg[pos - begin] = 0;
      kinds.pos_index[kinds.num_pos++] = static_cast<int32_t>(pos - begin);
    }
  }
}

// p = sigmoid(x) for n elements, converted to the accumulation type.
template <typename scalar_t, typename acc_t>
DRLOSS_CPU_CLONES void sigmoid_chunk(const scalar_t* x, int64_t n, acc_t* p) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) p[i] = sigmoid(static_cast<acc_t>(x[i]));
}

// Exponent scales up to this shift every negative's exponent by s_neg itself rather than by
// the chunk's max: as p <= 1, s_neg * p - s_neg lies in [-s_neg, 0], so each term is at least
// e^-64, a normal float, and the sums are as exact as with the max. That saves the max pass.
constexpr double kFixedShiftLimit = 64.0;

// The negatives' triple of a chunk: the shift (the chunk's max, or s_neg), then the sums.
template <typename acc_t>
DRLOSS_CPU_CLONES SoftmaxTriple<acc_t> negative_triple(const acc_t* p, const int32_t* neg,
                                                       int64_t n, acc_t s_neg) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  if (static_cast<double>(s_neg) <= kFixedShiftLimit) {
    for (int64_t i = 0; i < n; ++i) {
      if (neg[i]) {
        m = s_neg;
        break;
      }
    }
  } else {
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; ++i) {
      const acc_t e_all = s_neg * p[i];
      const acc_t e = neg[i] ? e_all : -std::numeric_limits<acc_t>::infinity();
      m = e > m ? e : m;
    }
  }
  acc_t z = 0, w = 0;
  if (m == -std::numeric_limits<acc_t>::infinity()) {
    // No negative, or only NaN ones: NaN must still reach the sums.
    for (int64_t i = 0; i < n; ++i) {
      if (neg[i] && p[i] != p[i]) z = w = p[i];
    }
    SoftmaxTriple<acc_t> t = SoftmaxTriple<acc_t>::empty();
    t.z = z;
    t.w = w;
    return t;
  }
#pragma omp simd reduction(+ : z, w)
  for (int64_t i = 0; i < n; ++i) {
    // Both operands are computed for every lane and then selected, so the loop has no
    // branch and no masked load (it vectorizes on every x86-64 level).
    const acc_t pi = p[i];
    const acc_t weight = exp_approx(s_neg * pi - m);
    const bool is_neg = neg[i] != 0;
    z += is_neg ? weight : acc_t(0);
    w += is_neg ? pi * weight : acc_t(0);
  }
  SoftmaxTriple<acc_t> t;
  t.m = m;
  t.z = z;
  t.w = w;
  return t;
}

// The negatives' gradient, written straight into the output in its type (0 for every other
// element: the positives are overwritten afterwards).
template <typename scalar_t, typename acc_t>
DRLOSS_CPU_CLONES void negative_grad_chunk(const acc_t* p, const int32_t* neg, int64_t n,
                                           acc_t s_neg, const GroupGrad<acc_t>& gg,
                                           scalar_t* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const acc_t g = element_grad(p[i], s_neg, gg.neg_coef, gg.neg_max, gg.neg_mean);
    out[i] = static_cast<scalar_t>(neg[i] ? g : acc_t(0));
  }
}

// A freshly allocated multi-MiB gradient is mapped in 4 KiB pages, and faulting them in costs
// more than computing the gradient (measured: 25 ms of faults against ~10 ms of arithmetic for
// 64 MiB). Asking for transparent huge pages on its 2 MiB-aligned interior removes most of
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

template <typename scalar_t, typename label_t>
void forward_impl(const at::Tensor& logits, const at::Tensor& labels, const Problem& pr,
                  const LossOptions& opt, at::Tensor& losses, at::Tensor& stats) {
  using acc_t = at::opmath_type<scalar_t>;
  const Hyper<acc_t> h =
      make_hyper<acc_t>(opt.pos_lambda, opt.neg_lambda, opt.L, opt.tau, opt.margin);
  const scalar_t* x = logits.data_ptr<scalar_t>();
  const label_t* y = labels.data_ptr<label_t>();
  const Chunking ch(pr);

  // Partial triples per chunk, kept in double so the in-order merge adds no visible error.
  std::vector<SoftmaxTriple<double>> neg_parts(ch.total), pos_parts(ch.total);
  at::parallel_for(0, ch.total, 1, [&](int64_t first, int64_t last) {
    ChunkKinds kinds;
    acc_t p[kChunk];
    for (int64_t c = first; c < last; ++c) {
      const int64_t g = c / ch.per_group;
      const int64_t begin = (c % ch.per_group) * kChunk;
      const int64_t n = std::min(kChunk, ch.elements - begin);
      classify_chunk(y + g * pr.anchors, begin, begin + n, pr.classes, opt.first_label, kinds);
      sigmoid_chunk(x + g * ch.elements + begin, n, p);
      const SoftmaxTriple<acc_t> neg = negative_triple(p, kinds.neg, n, h.s_neg);
      SoftmaxTriple<acc_t> pos = SoftmaxTriple<acc_t>::empty();
      for (int64_t k = 0; k < kinds.num_pos; ++k) {
        const acc_t pk = p[kinds.pos_index[k]];
        pos.add(pk, h.s_pos * pk);
      }
      neg_parts[c] = neg.template cast<double>();
      pos_parts[c] = pos.template cast<double>();
    }
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
  const scalar_t* x = logits.data_ptr<scalar_t>();
  const label_t* y = labels.data_ptr<label_t>();
  const acc_t* g_in = grad_losses.data_ptr<acc_t>();
  const acc_t* st = stats.data_ptr<acc_t>();
  scalar_t* out = grad_logits.data_ptr<scalar_t>();
  advise_huge_pages(out, grad_logits.numel() * static_cast<int64_t>(sizeof(scalar_t)));
  const Chunking ch(pr);

  at::parallel_for(0, ch.total, 1, [&](int64_t first, int64_t last) {
    ChunkKinds kinds;
    acc_t p[kChunk];
    for (int64_t c = first; c < last; ++c) {
      const int64_t g = c / ch.per_group;
      const int64_t begin = (c % ch.per_group) * kChunk;
      const int64_t n = std::min(kChunk, ch.elements - begin);
      const GroupGrad<acc_t> gg = make_group_grad(g_in[g], st + g * kNumStats, h);
      classify_chunk(y + g * pr.anchors, begin, begin + n, pr.classes, opt.first_label, kinds);
      sigmoid_chunk(x + g * ch.elements + begin, n, p);
      scalar_t* out_chunk = out + g * ch.elements + begin;
      negative_grad_chunk(p, kinds.neg, n, h.s_neg, gg, out_chunk);
      for (int64_t k = 0; k < kinds.num_pos; ++k) {
        const int32_t i = kinds.pos_index[k];
        out_chunk[i] = static_cast<scalar_t>(element_grad(p[i], kPositive, gg, h));
      }
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

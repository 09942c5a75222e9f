// The per-element math of the sigmoid DR loss and every numerical policy of its kernels.
//
// This header is the one place where the formulas live. It is included by the CPU kernels
// (csrc/cpu) and by the CUDA kernels (csrc/cuda), so both devices compute the same function
// with the same shifts and the same kind of summation. It depends on nothing but the C++
// standard library, so the .cu files that include it compile with plain nvcc.
//
// Notation (see "The math" in docs/design.md): p = sigmoid(x); for negatives the softmax
// exponent is s_neg * p with s_neg = 1 / neg_lambda, for positives s_pos * p with
// s_pos = -1 / pos_lambda. The kernels work with base-2 exponents t = s2 * p, s2 = s * log2(e),
// so every exponential is one exp2 (a single instruction on the GPU).
// A group's expectation E = sum(p * 2^(t - m)) / sum(2^(t - m)) is kept as the triple
// (m, Z, W) = (shift, sum 2^(t - m), sum p 2^(t - m)), E = W / Z.
//
// Numerical policies (both devices):
//  1. Shift. A sign whose |s| <= kFixedShiftLimit is shifted by the fixed m = max(s2, 0), the
//     largest exponent p in [0, 1] can give: every term 2^(t - m) then lies in [2^-93, 1], a
//     normal float, and no max has to be found. A larger |s| (a temperature below 1/64) is
//     shifted by the running max of its exponents. The saved statistics hold that m.
//  2. Summation. Terms are computed in the accumulation type (float, double for double logits).
//     A plain sum covers at most kMaxPlainTerms terms (a 16-byte vector of logits on the GPU,
//     or two of float32 in its aligned walks; a lane's 8 rows of a block on the CPU); those
//     partial sums are added with compensation (Kahan), so the error does not grow with the
//     number of terms (a dense column of 2048 equal positives added one by one in float would
//     be off by ~1e-4). Partials of blocks and chunks are merged in double, in a fixed order.
//  3. Backward coefficient. An element's gradient is (slope / Z) * 2^(t - m) * ...; with a fixed
//     shift Z can be as small as 2^-93, and the slope g tau sigmoid(L d) can exceed float's range
//     itself (a loss scaled by 1e38, tau = 1e39), though the gradient elements are finite (each
//     2^(t - m) <= Z, and p (1 - p) <= 1/4). So the slope and slope / Z are computed in double,
//     and where slope / Z exceeds kMaxPlainCoef its power of two beyond that moves into the shift
//     (see sign_coefficient); below it the coefficient is slope / Z rounded once. An element
//     still overflows where coef * weight (its share of the slope) or that times its factor
//     1 + s (p - E) passes float's range before p (1 - p) scales it back: only with a slope near
//     that range.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__CUDACC__)
#define DRLOSS_HD __host__ __device__ __forceinline__
#else
#define DRLOSS_HD inline
#endif

namespace drloss {

using std::exp;
using std::exp2;
using std::fabs;
using std::fma;
using std::frexp;
using std::log1p;

// Layout of the per-group statistics the forward saves for the backward: [groups, kNumStats].
// The shifts are base-2 exponents (policy 1 above).
enum StatIndex : int {
  kNegMax = 0,   // m of the negatives' triple (-inf when the group has no negative)
  kNegSum = 1,   // Z of the negatives' triple (0 when the group has no negative)
  kNegMean = 2,  // E_neg (0 when the group has no negative)
  kPosMax = 3,
  kPosSum = 4,
  kPosMean = 5,  // E_pos (1 when the group has no positive, as in the official code)
  kNumStats = 6,
};

enum ElementKind : int { kIgnored = 0, kNegative = 1, kPositive = 2 };

constexpr double kLog2e = 1.4426950408889634;
// Policy 1: exponent scales |s| up to this use a fixed shift.
constexpr double kFixedShiftLimit = 64.0;
// Policy 2: the most terms a plain (uncompensated) sum may cover.
constexpr int kMaxPlainTerms = 8;
// Policy 3: the largest |slope / Z| used as the coefficient as it is (2^100).
constexpr double kMaxPlainCoef = 1.2676506002282294e30;

// The classification rule, per anchor: its positive class column, or -1 when it has none (an
// ignored anchor, label < 0; a background anchor, any other label outside
// [first_label, first_label + C)). first_label >= 0 and label >= 0 where it is subtracted, so
// label - first_label cannot overflow.
template <typename label_t>
DRLOSS_HD int64_t positive_column(label_t label, int64_t classes, int64_t first_label) {
  const int64_t column = static_cast<int64_t>(label) - first_label;
  // One unsigned compare: a negative column wraps to a huge one (classes > 0).
  return (label >= 0 && static_cast<uint64_t>(column) < static_cast<uint64_t>(classes))
             ? column
             : int64_t(-1);
}

// The same rule for one entry (class column `cls` of an anchor): ignored when the label is
// below zero, positive in the anchor's positive column, negative everywhere else (every entry
// of a background anchor included).
template <typename label_t>
DRLOSS_HD int element_kind(label_t label, int64_t cls, int64_t classes, int64_t first_label) {
  if (label < 0) return kIgnored;
  return positive_column(label, classes, first_label) == cls ? kPositive : kNegative;
}

// ---------------------------------------------------------------------------------------------
// Elementary functions.
//
// exp2_approx(float): on the GPU the hardware ex2.approx.ftz (one MUFU instruction, ~2 ulp);
// on the CPU a branch-free polynomial (round to nearest, then a degree-6 polynomial for 2^f on
// |f| <= 1/2, relative error 2e-9 before rounding) that compilers vectorize inside the
// kernels' loops, where libm's exp2f does not. Below 2^-126 the result is 0 on both devices;
// above 2^126 it is inf on the CPU, and on the GPU from 2^128 (the float range) on.
// exp2_in_range(float): the same 2^x for an x known to lie in [-126, 126], such as a weight's
// exponent against a fixed shift (policy 1: [-93, 0]). On the CPU it skips exp2_approx's two
// range selects, which cost as much as the rest of the function in the vectorized loops.
// reciprocal(float): rcp.approx.ftz on the GPU (1 ulp), a division on the CPU.
// For double, the libm functions and a division everywhere.
DRLOSS_HD float exp2_in_range(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  // Round to nearest by adding 1.5 * 2^23 + 127: branch-free and vectorizable without
  // SSE4.1. It leaves n + 127 = round(x) + the exponent bias in the low bits of `biased`, from
  // which the bits of 2^n follow with one shift.
  const float shifter = 12583039.0f;  // 1.5 * 2^23 + 127
  const float biased = x + shifter;
  const float f = x - (biased - shifter);  // exact, in [-1/2, 1/2]
  // 2^f on [-1/2, 1/2]: 1 + f * (degree-5 polynomial), coefficients fitted for the least
  // maximum relative error (2.0e-9, a thirtieth of float32's unit roundoff 2^-24).
  float poly = 1.5353350e-04f;
  poly = poly * f + 1.3398875e-03f;
  poly = poly * f + 9.6184374e-03f;
  poly = poly * f + 5.5503325e-02f;
  poly = poly * f + 2.4022648e-01f;
  poly = poly * f + 6.9314720e-01f;
  poly = poly * f + 1.0f;
  // biased's mantissa holds 2^22 + n + 127; shifted left by 23 only (n + 127) << 23 is left
  // (mod 2^32): the bits of 2^n, a normal float for n in [-126, 127]. The product, not an
  // addition into poly's exponent field, so that a NaN x gives NaN.
  uint32_t biased_bits;
  std::memcpy(&biased_bits, &biased, sizeof(biased_bits));
  const uint32_t two_n_bits = biased_bits << 23;
  float two_n;
  std::memcpy(&two_n, &two_n_bits, sizeof(two_n));
  return poly * two_n;
#endif
}

DRLOSS_HD float exp2_approx(float x) {
#if defined(__CUDA_ARCH__)
  return exp2_in_range(x);
#else
  // Outside [-126, 126] the polynomial's result is meaningless and is replaced. Selecting the
  // result (rather than clamping x first) keeps NaN, which fails both comparisons, and costs
  // two compares and two blends.
  const float inside = exp2_in_range(x);
  const float above_min = x < -126.0f ? 0.0f : inside;
  return x > 126.0f ? std::numeric_limits<float>::infinity() : above_min;
#endif
}

DRLOSS_HD double exp2_in_range(double x) { return exp2(x); }
DRLOSS_HD double exp2_approx(double x) { return exp2(x); }

DRLOSS_HD float reciprocal(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return 1.0f / x;
#endif
}

DRLOSS_HD double reciprocal(double x) { return 1.0 / x; }

// A softmax weight 2^(t - m). With a fixed shift (policy 1) t - m lies in [-93, 0], so the
// range selects are not needed; the CPU loops instantiate both forms.
template <bool kFixedShift, typename acc_t>
DRLOSS_HD acc_t shifted_weight(acc_t exponent) {
  return kFixedShift ? exp2_in_range(exponent) : exp2_approx(exponent);
}

// p = 1 / (1 + e^-x) = 1 / (1 + 2^(-x log2 e)). x = -inf gives 0, x = +inf gives 1.
template <typename acc_t>
DRLOSS_HD acc_t sigmoid(acc_t x) {
  return reciprocal(acc_t(1) + exp2_approx(x * acc_t(-kLog2e)));
}

// Policy 2: adds x to the compensated sum (hi, lo); the sum's value is hi - lo.
template <typename acc_t>
DRLOSS_HD void compensated_add(acc_t& hi, acc_t& lo, acc_t x) {
  const acc_t y = x - lo;
  const acc_t t = hi + y;
  lo = (t - hi) - y;
  hi = t;
}

template <typename acc_t>
DRLOSS_HD double compensated_value(acc_t hi, acc_t lo) {
  return static_cast<double>(hi) - static_cast<double>(lo);
}

// ---------------------------------------------------------------------------------------------
// The hyperparameters, in the accumulation type, and the shift policy.
template <typename acc_t>
struct Hyper {
  acc_t s_neg;       // 1 / neg_lambda
  acc_t s_pos;       // -1 / pos_lambda
  acc_t s2_neg;      // s_neg * log2(e): base-2 exponent scale
  acc_t s2_pos;
  acc_t shift_neg;   // the fixed base-2 shift (policy 1), when fixed_neg
  acc_t shift_pos;
  bool fixed_neg;
  bool fixed_pos;
  acc_t L;
  acc_t tau;
  acc_t margin;
};

template <typename acc_t>
DRLOSS_HD Hyper<acc_t> make_hyper(double pos_lambda, double neg_lambda, double L, double tau,
                                  double margin) {
  Hyper<acc_t> h;
  const double s_neg = 1.0 / neg_lambda;
  const double s_pos = -1.0 / pos_lambda;
  h.s_neg = static_cast<acc_t>(s_neg);
  h.s_pos = static_cast<acc_t>(s_pos);
  h.s2_neg = static_cast<acc_t>(s_neg * kLog2e);
  h.s2_pos = static_cast<acc_t>(s_pos * kLog2e);
  // The largest exponent s2 * p can reach for p in [0, 1].
  h.shift_neg = h.s2_neg > acc_t(0) ? h.s2_neg : acc_t(0);
  h.shift_pos = h.s2_pos > acc_t(0) ? h.s2_pos : acc_t(0);
  h.fixed_neg = fabs(s_neg) <= kFixedShiftLimit;
  h.fixed_pos = fabs(s_pos) <= kFixedShiftLimit;
  h.L = static_cast<acc_t>(L);
  h.tau = static_cast<acc_t>(tau);
  h.margin = static_cast<acc_t>(margin);
  return h;
}

// ---------------------------------------------------------------------------------------------
// The softmax triple of a set of elements, as partials are merged (in double on both devices).
template <typename acc_t>
struct SoftmaxTriple {
  acc_t m;  // the shift (base-2 exponent); -inf for the empty set
  acc_t z;  // sum of 2^(t - m)
  acc_t w;  // sum of p * 2^(t - m)

  DRLOSS_HD static SoftmaxTriple empty() {
    SoftmaxTriple t;
    t.m = -std::numeric_limits<acc_t>::infinity();
    t.z = acc_t(0);
    t.w = acc_t(0);
    return t;
  }

  // A triple from compensated sums against shift m. Every term is positive (policy 1 keeps it
  // at least 2^-93), so z == 0 means that no term was added: the empty set. A NaN z counts as
  // non-empty and carries its NaN to the loss.
  template <typename sum_t>
  DRLOSS_HD static SoftmaxTriple from_sums(double m, sum_t z_hi, sum_t z_lo, sum_t w_hi,
                                           sum_t w_lo) {
    if (z_hi == sum_t(0) && z_lo == sum_t(0)) return empty();
    SoftmaxTriple t;
    t.m = static_cast<acc_t>(m);
    t.z = static_cast<acc_t>(compensated_value(z_hi, z_lo));
    t.w = static_cast<acc_t>(compensated_value(w_hi, w_lo));
    return t;
  }

  DRLOSS_HD bool is_empty() const {
    return z == acc_t(0) && m == -std::numeric_limits<acc_t>::infinity();
  }

  // Adds another triple; associative up to rounding. Merging in a fixed order is what makes
  // the result independent of the thread count.
  DRLOSS_HD void merge(const SoftmaxTriple& other) {
    if (other.is_empty()) return;
    if (is_empty()) {
      *this = other;
      return;
    }
    if (m == other.m) {  // the common case of a fixed shift: no rescaling needed
      z += other.z;
      w += other.w;
      return;
    }
    const acc_t new_m = m > other.m ? m : other.m;
    const acc_t self_scale = exp2_approx(m - new_m);
    const acc_t other_scale = exp2_approx(other.m - new_m);
    z = z * self_scale + other.z * other_scale;
    w = w * self_scale + other.w * other_scale;
    m = new_m;
  }

  // E = W / Z, or `if_empty` for an empty set (a NaN in z makes the result NaN, as it should).
  DRLOSS_HD acc_t expectation(acc_t if_empty) const { return is_empty() ? if_empty : w / z; }
};

// One sign's compensated sums against its shift (policy 1). A sign with a fixed shift starts
// at m = that shift, and no exponent s2 * p with p in [0, 1] exceeds it, so the rescaling
// branch below is never taken; any other sign starts at m = -inf and follows its running max.
template <typename acc_t>
struct RunningMaxSums {
  acc_t m, z_hi, z_lo, w_hi, w_lo;

  DRLOSS_HD static RunningMaxSums start(bool fixed, acc_t shift) {
    return RunningMaxSums{fixed ? shift : -std::numeric_limits<acc_t>::infinity(), acc_t(0),
                          acc_t(0), acc_t(0), acc_t(0)};
  }
  DRLOSS_HD static RunningMaxSums start_negatives(const Hyper<acc_t>& h) {
    return start(h.fixed_neg, h.shift_neg);
  }
  DRLOSS_HD static RunningMaxSums start_positives(const Hyper<acc_t>& h) {
    return start(h.fixed_pos, h.shift_pos);
  }

  // Adds one element of probability p and base-2 exponent t.
  DRLOSS_HD void add(acc_t p, acc_t t) {
    if (t > m) {  // cold: a new max; rescale what is there (2^(-inf) = 0 covers the empty state)
      const acc_t scale = exp2_approx(m - t);
      z_hi *= scale;
      z_lo *= scale;
      w_hi *= scale;
      w_lo *= scale;
      m = t;
    }
    const acc_t weight = exp2_approx(t - m);  // NaN for a NaN t, which then poisons the sums
    compensated_add(z_hi, z_lo, weight);
    compensated_add(w_hi, w_lo, p * weight);
  }

  DRLOSS_HD SoftmaxTriple<double> triple() const {
    return SoftmaxTriple<double>::from_sums(m, z_hi, z_lo, w_hi, w_lo);
  }
};

// ---------------------------------------------------------------------------------------------
// Group loss and its derivative.

// tau / L * softplus(L d), d = E_neg - E_pos + margin, as tau * (max(d, 0) + log1p(e^-|L d|) / L):
// softplus(z) = max(z, 0) + log1p(e^-|z|), divided by L before the product L d is formed, so
// the loss stays finite wherever its true value is (an overflowing L d only makes e^-|L d| zero).
template <typename acc_t>
DRLOSS_HD acc_t group_loss(acc_t e_neg, acc_t e_pos, const Hyper<acc_t>& h) {
  const acc_t d = e_neg - e_pos + h.margin;
  return h.tau * ((d > acc_t(0) ? d : acc_t(0)) + log1p(exp(-fabs(h.L * d))) / h.L);
}

// dloss/dE_neg = tau * sigmoid(L * d) = -dloss/dE_pos.
template <typename acc_t>
DRLOSS_HD acc_t group_loss_slope(acc_t e_neg, acc_t e_pos, const Hyper<acc_t>& h) {
  return h.tau * sigmoid(h.L * (e_neg - e_pos + h.margin));
}

// Turns a group's two triples into its loss and the statistics saved for the backward.
template <typename acc_t>
DRLOSS_HD acc_t finalize_group(const SoftmaxTriple<acc_t>& neg, const SoftmaxTriple<acc_t>& pos,
                               const Hyper<acc_t>& h, acc_t* stats) {
  const acc_t e_neg = neg.expectation(acc_t(0));  // empty sum
  const acc_t e_pos = pos.expectation(acc_t(1));  // the official code's choice
  stats[kNegMax] = neg.m;
  stats[kNegSum] = neg.z;
  stats[kNegMean] = e_neg;
  stats[kPosMax] = pos.m;
  stats[kPosSum] = pos.z;
  stats[kPosMean] = e_pos;
  return group_loss(e_neg, e_pos, h);
}

// Per-group constants of the backward. For an element of sign k:
//   dloss/dx = coef_k * 2^(s2_k p - m_k) * (1 + s_k (p - E_k)) * p (1 - p)
// with coef_neg = g * slope / Z_neg and coef_pos = -g * slope / Z_pos, because
//   dE/dp = softmax weight * (1 + s (p - E)) for either sign (s_pos = -1 / pos_lambda).
// The factor 1 + s_k (p - E_k) is evaluated as s_k p + offset_k with offset_k = 1 - s_k E_k
// (one multiply-add, rounded once): one multiply-add per element where the plain form takes a
// subtraction and a multiply-add. Its error, about eps (|1 - s E| + |s| p), stays within the
// |s| (p + E) eps that rounding p and E already gives it wherever it cancels.
template <typename acc_t>
struct GroupGrad {
  acc_t neg_coef, neg_max, neg_offset;
  acc_t pos_coef, pos_max, pos_offset;
};

// One sign's coefficient `slope / Z` and shift `m` for the backward (policy 3), from the slope
// in double. Up to kMaxPlainCoef the coefficient is c = slope / Z rounded once to acc_t. Past
// it, c = mant * 2^e and the shift becomes m - k with k = min(e - 100, 126): the exponents
// t - m + k of the elements then lie in [-93 + k, k] (t - m <= 0, and >= -93 with a fixed
// shift), inside exp2_in_range's domain, and the coefficient is near 2^100 (at most 2^127 for
// a c below 2^254; beyond that it is inf, as are the elements). m - k is rounded to acc_t, so
// the coefficient takes what the rounding moved: c * 2^(new shift - m) (for a float shift that
// difference is exact in double). A sign with no element gets a zero coefficient (never read,
// but never inf either); a NaN Z or slope passes through.
template <typename acc_t>
DRLOSS_HD void sign_coefficient(double slope, acc_t z, acc_t m, acc_t& coef, acc_t& max) {
  max = m;
  if (z == acc_t(0)) {
    coef = acc_t(0);
    return;
  }
  const double c = slope / static_cast<double>(z);
  if (!(fabs(c) > kMaxPlainCoef)) {  // NaN included
    coef = static_cast<acc_t>(c);
    return;
  }
  int e = 0;
  frexp(c, &e);  // e > 100 for a finite c; unspecified for inf, hence the clamp on both sides
  const int k = e - 100 < 1 ? 1 : (e - 100 > 126 ? 126 : e - 100);
  max = static_cast<acc_t>(static_cast<double>(m) - k);
  coef = static_cast<acc_t>(c * exp2(static_cast<double>(max) - static_cast<double>(m)));
}

// The backward's per-group constants. The slope g tau sigmoid(L d) and slope / Z in double
// (policy 3: `hd`, the hyperparameters in double); the offsets 1 - s E in acc_t, with the s
// the element loops use (`h`), so that s p + offset cancels as 1 + s (p - E) does.
template <typename acc_t>
DRLOSS_HD GroupGrad<acc_t> make_group_grad(acc_t grad_loss, const acc_t* stats,
                                           const Hyper<acc_t>& h, const Hyper<double>& hd) {
  const double slope =
      static_cast<double>(grad_loss) * group_loss_slope(static_cast<double>(stats[kNegMean]),
                                                        static_cast<double>(stats[kPosMean]), hd);
  GroupGrad<acc_t> gg;
  sign_coefficient(slope, stats[kNegSum], stats[kNegMax], gg.neg_coef, gg.neg_max);
  sign_coefficient(-slope, stats[kPosSum], stats[kPosMax], gg.pos_coef, gg.pos_max);
  gg.neg_offset = fma(-h.s_neg, stats[kNegMean], acc_t(1));
  gg.pos_offset = fma(-h.s_pos, stats[kPosMean], acc_t(1));
  return gg;
}

// dloss/dx of one element with probability p; `s`, `s2`, `coef`, `max`, `offset` are its
// sign's. kFixedShift: the sign's shift is fixed (policy 1), which a caller may know for a
// whole loop. p (1 - p) keeps its two operations: p - p * p would cancel near p = 1 wherever
// the compiler does not fuse it into one multiply-add. The weight (at most 1: its exponent is
// shifted below 0) multiplies last, so that a product below the smallest normal number is
// rounded onto the subnormal grid once, at the end, rather than early and then scaled up by
// the factor 1 + s (p - E) (up to 1 + |s|).
template <bool kFixedShift = false, typename acc_t>
DRLOSS_HD acc_t element_grad(acc_t p, acc_t s, acc_t s2, acc_t coef, acc_t max, acc_t offset) {
  const acc_t weight = shifted_weight<kFixedShift>(s2 * p - max);
  return coef * ((s * p + offset) * (p * (acc_t(1) - p))) * weight;
}

template <bool kFixedShift = false, typename acc_t>
DRLOSS_HD acc_t negative_grad(acc_t p, const GroupGrad<acc_t>& gg, const Hyper<acc_t>& h) {
  return element_grad<kFixedShift>(p, h.s_neg, h.s2_neg, gg.neg_coef, gg.neg_max, gg.neg_offset);
}

template <typename acc_t>
DRLOSS_HD acc_t positive_grad(acc_t p, const GroupGrad<acc_t>& gg, const Hyper<acc_t>& h) {
  return element_grad(p, h.s_pos, h.s2_pos, gg.pos_coef, gg.pos_max, gg.pos_offset);
}

template <typename acc_t>
DRLOSS_HD acc_t element_grad(acc_t p, int kind, const GroupGrad<acc_t>& gg,
                             const Hyper<acc_t>& h) {
  if (kind == kNegative) return negative_grad(p, gg, h);
  if (kind == kPositive) return positive_grad(p, gg, h);
  return acc_t(0);
}

}  // namespace drloss

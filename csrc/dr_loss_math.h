// The per-element math of the sigmoid DR loss and the online-softmax triple.
//
// This header is the one place where the formulas live. It is included by the CPU kernels
// (csrc/cpu) and by the CUDA kernels (csrc/cuda), so both devices compute the same function.
// It depends on nothing but the C++ standard library, so the .cu files that include it compile
// with plain nvcc, without torch headers.
//
// Notation (see "The math" in docs/design.md): p = sigmoid(x); for negatives the softmax
// exponent is s_neg * p with s_neg = 1 / neg_lambda, for positives s_pos * p with
// s_pos = -1 / pos_lambda.
// A group's expectation E = sum(p * e^(s p)) / sum(e^(s p)) is kept as the triple
// (m, Z, W) = (running max of s p, sum e^(s p - m), sum p e^(s p - m)), E = W / Z.
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
using std::fabs;
using std::log1p;

// Layout of the per-group statistics the forward saves for the backward: [groups, kNumStats].
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

// What entry (anchor with label `label`, class column `cls`) is. Labels below zero are ignored;
// label - first_label == cls marks the positive; every other entry of a counted anchor
// (including every entry of a background anchor, whatever its label) is negative.
template <typename label_t>
DRLOSS_HD int element_kind(label_t label, int64_t cls, int64_t first_label) {
  if (label < 0) return kIgnored;
  return (static_cast<int64_t>(label) - first_label == cls) ? kPositive : kNegative;
}

// The hyperparameters, in the accumulation type.
template <typename acc_t>
struct Hyper {
  acc_t s_neg;   // 1 / neg_lambda
  acc_t s_pos;   // -1 / pos_lambda
  acc_t L;
  acc_t tau;
  acc_t margin;
};

template <typename acc_t>
DRLOSS_HD Hyper<acc_t> make_hyper(double pos_lambda, double neg_lambda, double L, double tau,
                                  double margin) {
  Hyper<acc_t> h;
  h.s_neg = static_cast<acc_t>(1.0 / neg_lambda);
  h.s_pos = static_cast<acc_t>(-1.0 / pos_lambda);
  h.L = static_cast<acc_t>(L);
  h.tau = static_cast<acc_t>(tau);
  h.margin = static_cast<acc_t>(margin);
  return h;
}

// ---------------------------------------------------------------------------------------------
// Elementary functions.
//
// exp_approx(float) is a branch-free exp (Cody-Waite reduction, degree-6 polynomial, ~1 ulp)
// that compilers vectorize inside the CPU kernels' loops; libm's expf does not vectorize. On
// the GPU the hardware path (expf) is used instead. For double, std::exp everywhere.
DRLOSS_HD float exp_approx(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  // Clamp so that 2^n stays a normal float, then fix the ends with selects (NaN passes through:
  // every comparison with NaN is false and the polynomial of NaN is NaN).
  float xc = x > 88.0f ? 88.0f : x;
  xc = xc < -87.0f ? -87.0f : xc;
  // Round-to-nearest by the 1.5 * 2^23 trick: branch-free and vectorizable without SSE4.1.
  const float shifter = 12582912.0f;
  const float nf = (xc * 1.44269504088896341f + shifter) - shifter;
  const float r = (xc - nf * 0.693359375f) - nf * (-2.12194440e-4f);
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float er = poly * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(nf) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  float result = er * two_n;
  result = x > 88.72283f ? std::numeric_limits<float>::infinity() : result;
  result = x < -87.33654f ? 0.0f : result;
  return result;
#endif
}

DRLOSS_HD double exp_approx(double x) { return exp(x); }

template <typename acc_t>
DRLOSS_HD acc_t sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + exp_approx(-x));
}

// ---------------------------------------------------------------------------------------------
// The online-softmax triple.
template <typename acc_t>
struct SoftmaxTriple {
  acc_t m;  // running max of the exponents
  acc_t z;  // sum of e^(exponent - m)
  acc_t w;  // sum of p * e^(exponent - m)

  DRLOSS_HD static SoftmaxTriple empty() {
    SoftmaxTriple t;
    t.m = -std::numeric_limits<acc_t>::infinity();
    t.z = acc_t(0);
    t.w = acc_t(0);
    return t;
  }

  // Adds one element of probability p and exponent e = s * p.
  DRLOSS_HD void add(acc_t p, acc_t e) {
    if (e > m) {  // a new max: rescale what is there (e^(-inf) = 0 covers the empty triple)
      const acc_t scale = exp_approx(m - e);
      z *= scale;
      w *= scale;
      m = e;
    }
    const acc_t weight = exp_approx(e - m);  // NaN for a NaN e, which then poisons z and w
    z += weight;
    w += p * weight;
  }

  // Adds another triple; associative up to rounding. Merging in a fixed order is what makes
  // the result independent of the thread count.
  DRLOSS_HD void merge(const SoftmaxTriple& other) {
    if (other.z == acc_t(0) && other.m == -std::numeric_limits<acc_t>::infinity()) return;
    if (z == acc_t(0) && m == -std::numeric_limits<acc_t>::infinity()) {
      *this = other;
      return;
    }
    if (m == other.m) {  // the common case of a fixed shift: no rescaling needed
      z += other.z;
      w += other.w;
      return;
    }
    const acc_t new_m = m > other.m ? m : other.m;
    const acc_t self_scale = exp_approx(m - new_m);
    const acc_t other_scale = exp_approx(other.m - new_m);
    z = z * self_scale + other.z * other_scale;
    w = w * self_scale + other.w * other_scale;
    m = new_m;
  }

  template <typename other_t>
  DRLOSS_HD SoftmaxTriple<other_t> cast() const {
    SoftmaxTriple<other_t> t;
    t.m = static_cast<other_t>(m);
    t.z = static_cast<other_t>(z);
    t.w = static_cast<other_t>(w);
    return t;
  }

  DRLOSS_HD bool is_empty() const {
    return z == acc_t(0) && m == -std::numeric_limits<acc_t>::infinity();
  }

  // E = W / Z, or `if_empty` for an empty set (a NaN in z makes the result NaN, as it should).
  DRLOSS_HD acc_t expectation(acc_t if_empty) const { return is_empty() ? if_empty : w / z; }
};

// ---------------------------------------------------------------------------------------------
// Group loss and its derivative.

// tau / L * softplus(L * (E_neg - E_pos + margin)), softplus written so it cannot overflow.
template <typename acc_t>
DRLOSS_HD acc_t group_loss(acc_t e_neg, acc_t e_pos, const Hyper<acc_t>& h) {
  const acc_t z = h.L * (e_neg - e_pos + h.margin);
  const acc_t softplus = (z > acc_t(0) ? z : acc_t(0)) + log1p(exp_approx(-fabs(z)));
  return h.tau / h.L * softplus;
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

// Per-group constants of the backward. For an element of sign k (exponent scale s_k):
//   dloss/dx = coef_k * e^(s_k p - m_k) * (1 + s_k (p - E_k)) * p (1 - p)
// with coef_neg = g * slope / Z_neg and coef_pos = -g * slope / Z_pos, because
//   dE/dp = softmax weight * (1 + s (p - E)) for either sign (s_pos = -1 / pos_lambda).
template <typename acc_t>
struct GroupGrad {
  acc_t neg_coef, neg_max, neg_mean;
  acc_t pos_coef, pos_max, pos_mean;
};

template <typename acc_t>
DRLOSS_HD GroupGrad<acc_t> make_group_grad(acc_t grad_loss, const acc_t* stats,
                                           const Hyper<acc_t>& h) {
  const acc_t slope = grad_loss * group_loss_slope(stats[kNegMean], stats[kPosMean], h);
  GroupGrad<acc_t> gg;
  // A sign with no element gets a zero coefficient (never read, but never inf either).
  gg.neg_coef = stats[kNegSum] == acc_t(0) ? acc_t(0) : slope / stats[kNegSum];
  gg.pos_coef = stats[kPosSum] == acc_t(0) ? acc_t(0) : -slope / stats[kPosSum];
  gg.neg_max = stats[kNegMax];
  gg.neg_mean = stats[kNegMean];
  gg.pos_max = stats[kPosMax];
  gg.pos_mean = stats[kPosMean];
  return gg;
}

// dloss/dx of one element with probability p; `s`, `coef`, `max`, `mean` are its sign's.
template <typename acc_t>
DRLOSS_HD acc_t element_grad(acc_t p, acc_t s, acc_t coef, acc_t max, acc_t mean) {
  const acc_t weight = exp_approx(s * p - max);
  return coef * weight * (acc_t(1) + s * (p - mean)) * (p * (acc_t(1) - p));
}

template <typename acc_t>
DRLOSS_HD acc_t element_grad(acc_t p, int kind, const GroupGrad<acc_t>& gg,
                             const Hyper<acc_t>& h) {
  if (kind == kNegative) return element_grad(p, h.s_neg, gg.neg_coef, gg.neg_max, gg.neg_mean);
  if (kind == kPositive) return element_grad(p, h.s_pos, gg.pos_coef, gg.pos_max, gg.pos_mean);
  return acc_t(0);
}

}  // namespace drloss

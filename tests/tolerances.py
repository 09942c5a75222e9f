"""Element-by-element accuracy checks of the fused loss and gradient against float64.

Why not `rtol * max|grad|`: the softmax weights of one group span many orders of magnitude
(e^(1/lambda) between p = 0 and p = 1, 2.7e5 with the default neg_lambda), so most elements of a
gradient sit far below its largest entry and a tolerance scaled by the largest entry accepts any
value for them (zeroing every negative with x < -1 passed). Here each element is compared with
a bound computed from that element alone.

The bound. For an element of sign k (exponent scale s = 1/neg_lambda or -1/pos_lambda, both
"The math" in docs/design.md) with probability p,

    grad = D w (1 + s (p - E)) p (1 - p),    D = g tau sigmoid(L d) / Z (per group and sign),
                                              w = e^(s p - m) (its softmax weight, times Z)

In a floating type with unit roundoff eps, the rounding of p and of the shifted exponent
s p - m (|m| <= |s|) moves the exponent by about |s| (1 + p) eps, so w, and the element with
it, carries a relative error of about (1 + |s| (1 + p)) eps; the
factor f = 1 + s (p - E) carries an absolute error of about |s| (p + E) eps from the roundings of
p and E, and (|f| + |s| p) eps from its own evaluation as s p + (1 - s E) (it can cancel to 0,
where a relative bound would be meaningless); p (1 - p) carries an absolute error of about p eps
(1 - p is rounded near p = 1). So, with the element's own terms,

    scale = |D| w [ p (1 - p) |f| (1 + |s| (1 + p))  +  p (1 - p) |s| (p + E)  +  |f| p ]
    error <= ELEMENT_FACTOR * eps * (scale + kernel |grad|)  +  |D| (1 + |s| (p + E)) tiny
             +  2 subnormal

The `kernel` term is the slope's error: sigmoid(L d) moves by L times the error of
d = E_neg - E_pos + margin, each E being off by about (1 + |s| spread) eps (`spread` the
softmax-weighted mean of |p - E|), which every element of the group inherits. The last term
covers weights that underflow to 0 in the accumulation type (exp of an exponent below the
smallest normal number, `tiny`, about 1e-38 in float32: a gradient entry of that size is below
anything a float32 training step can use). An element that is itself below `tiny` lands on the
grid of subnormal numbers, spaced `subnormal` apart (2^-149 in float32) whatever its size, so
its last roundings carry an absolute error of up to half that each: the bound allows two (seen on
an H100 and on the CPU: an element of 1.19e-44 rounded to 1.12e-44, 8 steps of 1.4e-45, in a
problem with no positives, logits 40 times a normal draw). The float64 evaluation that gives the expected
values has its own error: its sums (group_size eps64) and, where it normalizes exponents as
large as |s|, |s| eps64. Last, the kernels compute e^-x as 2^(-x log2 e): the rounded argument
gives p, and with it the element, a relative error of |x| log2(e) eps.
Every quantity in the bound is the element's own or its group's: a wrong element (zeroed,
perturbed by 1e-3 of itself, another element's value) exceeds it, whatever the other elements
are. `test_checker_rejects_*` in tests/test_accuracy.py show it.
"""

import math

import torch

# The constant of the per-element bound: a few roundings of each kind (sigmoid, exp, the
# exponent, the sums). Over 6,000 problems drawn by tests/test_properties.py (lambdas down to
# MIN_LAMBDA, logits up to 40 times a normal draw) the largest float32 gradient error was 0.35
# of the bound, and over 1,500 the largest float32 loss error 0.6 of LOSS_RTOL (CPU kernels).
# At the defaults the bound is below 1e-4 of the element's value for about 80% of the elements
# (median 4e-5).
ELEMENT_FACTOR = 16.0

LOG2E = 1.0 / math.log(2.0)

# The loss's default hyperparameters (docs/design.md, "The math"), for the tests' float64 evaluations.
DEFAULTS = dict(pos_lambda=1.0, neg_lambda=0.1 / math.log(3.5), L=6.0, tau=4.0, margin=0.5)

# The loss in float32 is within 1e-6 relative of float64 (docs/design.md, "Accuracy") for L <= 6;
# its sensitivity to the expectations grows with L (dloss/dd / loss <= L), so beyond L = 6 the
# bound grows with L. float64 is checked to rounding.
LOSS_RTOL = {torch.float32: 1e-6, torch.float64: 1e-13}


def unit_roundoff(dtype):
    return torch.finfo(dtype).eps / 2


def accumulate_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def loss_rtol(dtype, L=DEFAULTS["L"], pos_lambda=DEFAULTS["pos_lambda"], neg_lambda=DEFAULTS["neg_lambda"]):
    """Relative tolerance of a loss computed from `dtype` logits, against float64 on the same
    (rounded) logits: the kernels accumulate in float32 (float64 for float64 logits). The loss
    moves by at most L times the error of d (dloss/dd / loss <= L), and a float64 evaluation of
    E through exponents as large as 1/lambda is itself off by about eps64 / lambda."""
    float64_reference = 2 * L * unit_roundoff(torch.float64) * (1 / pos_lambda + 1 / neg_lambda)
    return LOSS_RTOL[accumulate_dtype(dtype)] * max(1.0, L / 6.0) + float64_reference


def assert_loss_close(got, want, dtype, L=DEFAULTS["L"], pos_lambda=DEFAULTS["pos_lambda"], neg_lambda=DEFAULTS["neg_lambda"], what="loss"):
    """got (kernel, any dtype) against want (float64), element by element, relative."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape, f"{what}: shape {list(got.shape)} != {list(want.shape)}"
    rtol = loss_rtol(dtype, L, pos_lambda, neg_lambda)
    err = (got - want).abs()
    bad = ~(err <= rtol * want.abs())  # NaN in either fails
    if bad.any():
        i = int(bad.nonzero()[0][0]) if got.dim() else 0
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {got.numel()} entries off by more than {rtol:.3g} relative; "
            f"first at {i}: got {got.reshape(-1)[i].item()!r}, float64 {want.reshape(-1)[i].item()!r}"
        )


def group_relative(L, abs_s, spread, group_size):
    """(kernel, float64) factors of the group-wide relative errors in the module docstring.
    abs_s and spread are pairs (negatives, positives); spread may be a tensor per group."""
    kernel = L * (2 + abs_s[0] * spread[0] + abs_s[1] * spread[1])
    float64 = group_size * (1 + L) + L * (abs_s[0] + abs_s[1])
    return kernel, float64


def gradient_tolerance(dtype, scale, value, floor, kernel, float64, abs_x):
    """The bound of the module docstring for a gradient computed from `dtype` logits: `scale`,
    `value` (|grad| in float64), `floor` and `abs_x` per element, `kernel` per element or group,
    `float64` a number."""
    acc = accumulate_dtype(dtype)
    u, u64 = unit_roundoff(acc), unit_roundoff(torch.float64)
    tiny = floor * (torch.finfo(acc).tiny / torch.finfo(torch.float32).tiny)
    return (
        ELEMENT_FACTOR * u * (scale + kernel * value)
        + 2 * u64 * float64 * scale
        + 2 * u * LOG2E * abs_x * value
        + tiny
        + 2 * torch.finfo(acc).tiny * torch.finfo(acc).eps  # two steps of the subnormal grid
    )


class Float64Eval:
    """What dense_float64 returns: `losses` [G], `grad` (logits' shape), `stats` [G, 6] (m, Z, E
    of the negatives, then of the positives, with m the largest exponent in base 2, as the
    kernels keep it), `spread` [G, 2] (per
    sign, the softmax-weighted mean of |p - E|), `scales` (|s| per sign) and `bound` (a
    GradientBound), all float64 on the CPU."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def dense_float64(logits, labels, pos_lambda, neg_lambda, L, tau, margin, first_label, grad_losses=None):
    """An evaluation of the loss in float64 written for the tests (dense masks and log-sum-exp, on
    the CPU; no code shared with the package): the losses, the gradient of
    sum(grad_losses * losses) by autograd, the statistics, and the error bounds (Float64Eval)."""
    x = logits.detach().double().cpu().requires_grad_(True)
    y = labels.detach().cpu().long()
    pooled = x.dim() == 2
    x3, y3 = (x.unsqueeze(0), y.unsqueeze(0)) if pooled else (x, y)
    G, A, C = x3.shape
    g = torch.ones(G, dtype=torch.float64) if grad_losses is None else grad_losses.detach().double().cpu().reshape(G)
    p = torch.sigmoid(x3)
    counted = (y3 >= 0).unsqueeze(-1).expand(G, A, C)
    positive = counted & (y3.unsqueeze(-1) - first_label == torch.arange(C))
    negative = counted & ~positive
    signs = []
    for mask, s, empty in ((negative, 1.0 / neg_lambda, 0.0), (positive, -1.0 / pos_lambda, 1.0)):
        exponent = torch.where(mask, s * p, -math.inf)
        m = exponent.detach().amax(dim=(1, 2)) if A * C else torch.full((G,), -math.inf, dtype=torch.float64)
        shift = torch.where(torch.isfinite(m), m, 0.0).view(G, 1, 1)
        w = torch.exp(exponent - shift)  # e^(s p - m), 0 outside the mask
        Z = w.sum(dim=(1, 2))
        E = torch.where(Z > 0, (w * p).sum(dim=(1, 2)) / torch.where(Z > 0, Z, 1.0), empty)
        signs.append((mask, s, m, w, Z, E))
    d = signs[0][5] - signs[1][5] + margin
    losses = tau / L * torch.logaddexp(torch.zeros_like(d), L * d)  # softplus, exact past z = 20 too
    (grad,) = torch.autograd.grad((losses * g).sum(), x)
    # The kernels keep base-2 exponents (m in units of log2; Z = sum 2^(t - m) is the same number).
    stats = torch.stack([t for (_, _, m, _, Z, E) in signs for t in (m * LOG2E, Z.detach(), E.detach())], dim=1)

    slope = (g * tau * torch.sigmoid(L * d.detach())).abs().view(G, 1, 1)
    scale = torch.zeros_like(p, requires_grad=False)
    value = torch.zeros_like(scale)
    floor = torch.zeros_like(scale)
    p = p.detach()
    for mask, s, _, w, Z, E in signs:
        Z = torch.where(Z > 0, Z, 1.0).detach().view(G, 1, 1)
        terms = bound_terms(p, s, E.detach().view(G, 1, 1), w.detach() / Z, slope)
        scale, value, floor = (torch.where(mask, term, old) for term, old in zip(terms, (scale, value, floor)))
    spread = torch.stack(
        [((w.detach() * (p - E.detach().view(G, 1, 1)).abs()).sum(dim=(1, 2)) / torch.where(Z > 0, Z, 1.0).detach()) for (_, _, _, w, Z, E) in signs],
        dim=1,
    )
    abs_s = (abs(signs[0][1]), abs(signs[1][1]))
    kernel, float64 = group_relative(L, abs_s, (spread[:, 0], spread[:, 1]), A * C)
    kernel = kernel.view(G, 1, 1).expand_as(scale)
    if pooled:
        scale, value, floor, kernel = scale[0], value[0], floor[0], kernel[0]
    bound = GradientBound(scale, value, floor, kernel, float64, x.detach().abs())
    return Float64Eval(
        losses=losses.detach(), grad=grad, stats=stats, spread=spread, scales=abs_s, bound=bound,
        group_size=A * C,
    )


def bound_terms(p, s, E, q, slope):
    """(scale, value, floor) of the bound in the module docstring for elements of one sign:
    probability p, exponent scale s, the sign's expectation E, softmax weight q = w / Z and
    |g tau sigmoid(L d)| = slope. `value` is the element's |grad|."""
    abs_s = abs(s)
    base = slope * q
    f = (1 + s * (p - E)).abs()
    pp = p * (1 - p)
    scale = base * (pp * f * (1 + abs_s * (1 + p)) + pp * abs_s * (p + E) + f * p)
    return scale, base * f * pp, slope * (1 + abs_s * (p + E)) * torch.finfo(torch.float32).tiny


class GradientBound:
    """The per-element error bound of the module docstring for one input, float64 tensors shaped
    like the logits: `scale`, `value` (|grad|), `floor`, `kernel` (the group's factor of the
    slope's error) and `abs_x`, and `float64` (the float64 evaluation's factor, a number)."""

    def __init__(self, scale, value, floor, kernel, float64, abs_x):
        self.scale, self.value, self.floor, self.kernel, self.float64, self.abs_x = scale, value, floor, kernel, float64, abs_x

    def tolerance(self, dtype):
        """The bound for a gradient computed from `dtype` logits."""
        return gradient_tolerance(dtype, self.scale, self.value, self.floor, self.kernel, self.float64, self.abs_x)


def stats_tolerance(want, reference, dtype):
    """Per-element tolerances of statistics `want` [G, 6] (a kernel's, or float64's) against the
    same input's statistics from another kernel, with the rounding model of the gradient: an
    exponent s p is off by |s| eps, so m by |s| eps and Z relatively by (1 + |s|) eps; E moves by
    the weights' errors times how far the p's lie from E (`reference.spread`, from float64), plus
    its own rounding. The group's sums add group_size * eps64 relative."""
    u = unit_roundoff(accumulate_dtype(dtype))
    sums = 2 * reference.group_size * unit_roundoff(torch.float64)
    want = want.detach().double().cpu()
    columns = []
    for k, abs_s in enumerate(reference.scales):
        columns.append(ELEMENT_FACTOR * u * abs_s * LOG2E * torch.ones_like(want[:, 3 * k]))
        columns.append((ELEMENT_FACTOR * u * (1 + abs_s) + sums) * want[:, 3 * k + 1].abs())
        columns.append(ELEMENT_FACTOR * u * (1 + abs_s * reference.spread[:, k]) + sums)
    return torch.stack(columns, dim=1)


def shift_stats(stats, to):
    """`stats` rescaled to the shifts m of `to` (Z * 2^(m - m_to), base-2 exponents): the kernels
    may shift the exponents by any value (a max, or the largest reachable), which changes m and
    Z but not Z 2^m."""
    stats = stats.detach().double().cpu().clone()
    to = to.detach().double().cpu()
    for k in (0, 3):
        nonempty = stats[:, k + 1] > 0
        rescale = torch.exp2(stats[:, k] - to[:, k])
        stats[:, k + 1] = torch.where(nonempty, stats[:, k + 1] * rescale, stats[:, k + 1])
        stats[:, k] = torch.where(nonempty, to[:, k], stats[:, k])
    return stats


def assert_stats_close(got, want, reference, dtype, what="stats"):
    """Statistics [G, 6] element by element: m and Z of an empty set must be exactly -inf and 0."""
    tol = stats_tolerance(want, reference, dtype)
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    same = (got == want) | (got - want).abs().le(tol)
    if not same.all():
        g, c = (int(i) for i in (~same).nonzero()[0])
        raise AssertionError(
            f"{what}: {int((~same).sum())} of {got.numel()} entries outside their bound; first at group {g}, "
            f"column {c}: got {got[g, c].item()!r}, want {want[g, c].item()!r}, bound {tol[g, c].item():.3g}"
        )


def assert_elementwise(got, want, tol, what="gradient"):
    """|got - want| <= tol element by element (NaN anywhere fails), with a message that shows the
    worst element."""
    got, want, tol = got.detach().double().cpu(), want.detach().double().cpu(), tol.double().cpu()
    assert got.shape == want.shape, f"{what}: shape {list(got.shape)} != {list(want.shape)}"
    err = (got - want).abs()
    bad = ~(err <= tol)
    if bad.any():
        ratio = torch.where(bad, err / tol.clamp(min=1e-300), torch.zeros_like(err)).nan_to_num(math.inf)
        worst = int(ratio.reshape(-1).argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), got.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {got.numel()} elements outside their bound; worst at {index}: "
            f"got {got.reshape(-1)[worst].item()!r}, float64 {want.reshape(-1)[worst].item()!r}, "
            f"bound {tol.reshape(-1)[worst].item():.3g}"
        )


def assert_grad_close(got, want, dtype, bound, what="gradient"):
    """A gradient computed from `dtype` logits (float32 or float64) against float64."""
    assert_elementwise(got, want, bound.tolerance(dtype), what)


def assert_half_grad_close(got, got32, dtype, what="gradient"):
    """A float16/bfloat16 gradient against the float32 run on the same (exactly representable)
    logits: the kernels compute in float32 and round once to `dtype`, so each element is within
    one unit in the last place of the float32 value (the smallest subnormal step below the
    normal range)."""
    finfo = torch.finfo(dtype)
    smallest_subnormal = finfo.tiny * finfo.eps
    want = got32.detach().double().cpu()
    tol = finfo.eps * want.abs() + smallest_subnormal
    assert_elementwise(got, want, tol, what)

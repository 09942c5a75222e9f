"""Property-based tests: the fused loss and gradient against an independent float64 formulation,
over shapes, label mixes, label conventions, dtypes, hyperparameters, layouts and upstream
gradients drawn by hypothesis.

The oracle below is written for this file alone: explicit lists of the positive and negative
element indices of each group, built anchor by anchor with Python integers (so labels near
2**63 are exact), softmax expectations as exp(log-weight - log-sum-exp) in float64, the loss as
tau/L * log(1 + e^(L d)) by logaddexp, and the gradient by autograd. It shares no code with
drloss_cuda.reference or the kernels. Tolerances are per element (tests/tolerances.py).

With the environment variable CI set, the "ci" hypothesis profile is derandomized (the same
examples on every run, no example database), so CI cannot flake; elsewhere every run draws new
examples. HYPOTHESIS_PROFILE overrides the choice: .ci/run and tools/device_check.sh set it to
"ci" themselves, whatever the runner's environment.
"""

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import drloss_cuda
from conftest import DEVICES
from drloss_cuda import sigmoid_dr_loss
from tolerances import assert_grad_close, assert_half_grad_close, assert_loss_close, dense_float64

settings.register_profile(
    "ci", derandomize=True, database=None, max_examples=250, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=250, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

INT64_MAX = 2**63 - 1
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LABEL_MIXES = ["mixed", "dense_positives", "sparse_positives", "no_positives", "all_background", "all_ignored"]


# --- the independent float64 formulation ------------------------------------------------------


def oracle(logits, labels, pos_lambda, neg_lambda, L, tau, margin, first_label, grad_losses):
    """(losses [G], gradient of sum(grad_losses * losses) w.r.t. logits), float64 on the CPU."""
    x = logits.detach().cpu().double().requires_grad_(True)
    pooled = x.dim() == 2
    C = x.shape[-1]
    groups = 1 if pooled else x.shape[0]
    flat = x.reshape(groups, x.numel() // groups if groups else 0)
    label_rows = [labels.cpu().reshape(-1).tolist()] if pooled else labels.cpu().tolist()
    losses = []
    for group, row in zip(flat, label_rows):
        positives, negatives = [], []
        for anchor, label in enumerate(row):
            if label < 0:
                continue
            for column in range(C):
                index = anchor * C + column
                (positives if label - first_label == column else negatives).append(index)
        p = torch.sigmoid(group)
        e_neg = expectation(p[negatives], 1.0 / neg_lambda) if negatives else group.sum() * 0.0
        e_pos = expectation(p[positives], -1.0 / pos_lambda) if positives else group.sum() * 0.0 + 1.0
        d = e_neg - e_pos + margin
        losses.append(tau / L * torch.logaddexp(torch.zeros((), dtype=torch.float64), L * d))
    losses = torch.stack(losses) if losses else x.sum(dim=(1, 2)) * 0.0
    (grad,) = torch.autograd.grad((losses * grad_losses.cpu().double()).sum(), x, allow_unused=True)
    return losses.detach(), torch.zeros_like(x) if grad is None else grad


def expectation(p, s):
    """sum_i softmax(s p)_i p_i, the softmax through its log-sum-exp."""
    log_weights = s * p - torch.logsumexp(s * p, dim=0)
    return (torch.exp(log_weights) * p).sum()


# --- inputs -------------------------------------------------------------------------------------


def draw_labels(mix, shape, C, first_label, gen):
    """Labels of one mix, with every spelling of "ignore" (-1 and below) and of "background"
    (first_label + C and above, up to 2**63 - 1, and 0 .. first_label - 1)."""
    n = math.prod(shape)

    def uniform(low, high):  # n integers in [low, high], any int64 range
        span = high - low + 1
        draws = torch.randint(0, 2**62, (2, n), generator=gen).tolist()
        return torch.tensor([low + (a * 2**62 + b) % span for a, b in zip(*draws)], dtype=torch.int64)

    top_class = min(first_label + C - 1, INT64_MAX)
    classes = uniform(first_label, top_class) if C else torch.full((n,), first_label)
    ignored = torch.where(torch.rand(n, generator=gen) < 0.5, torch.full((n,), -1), uniform(-(2**63), -1))
    if first_label + C <= INT64_MAX:
        background = uniform(first_label + C, INT64_MAX)
        if first_label > 0:
            below = uniform(0, first_label - 1)
            background = torch.where(torch.rand(n, generator=gen) < 0.3, below, background)
    else:
        background = uniform(0, first_label - 1)
    u = torch.rand(n, generator=gen)
    if mix == "dense_positives":
        labels = classes
    elif mix == "sparse_positives":
        labels = torch.where(u < 0.02, classes, background)
    elif mix == "no_positives":
        labels = torch.where(u < 0.3, ignored, background)
    elif mix == "all_background":
        labels = background
    elif mix == "all_ignored":
        labels = ignored
    else:
        labels = torch.where(u < 0.1, ignored, torch.where(u < 0.5, background, classes))
    if C == 0:  # no class column: nothing is positive
        labels = torch.where(labels >= 0, background, labels)
    return labels.reshape(shape)


def lay_out(logits, labels, layout):
    """The same values through another memory layout (or, for "expanded", stride-0 logits and
    labels that repeat their first group or anchor)."""
    if layout == "transposed":
        return logits.transpose(-1, -2).contiguous().transpose(-1, -2), labels.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "sliced":
        wide = torch.full(logits.shape[:-1] + (2 * logits.shape[-1],), float("nan"), dtype=logits.dtype, device=logits.device)
        wide[..., ::2] = logits
        return wide[..., ::2], labels
    if layout == "expanded" and logits.shape[0] > 0:
        return logits[:1].expand(logits.shape), labels[:1].expand(labels.shape)
    return logits, labels


lambdas = st.floats(math.log10(drloss_cuda.MIN_LAMBDA), 1.0).map(lambda e: 10.0**e)


@st.composite
def problems(draw):
    pooled = draw(st.booleans())
    C = draw(st.integers(0, 12))
    A = draw(st.integers(0, 40))
    N = draw(st.integers(0, 3))
    shape = (A * max(N, 1), C) if pooled else (N, A, C)
    first_label = draw(st.sampled_from([0, 1, 7, INT64_MAX - 5, INT64_MAX]) | st.integers(0, INT64_MAX))
    hyper = dict(
        pos_lambda=draw(lambdas),
        neg_lambda=draw(lambdas),
        L=draw(st.floats(0.1, 20.0)),
        tau=draw(st.floats(-3.0, 4.0).map(lambda e: 10.0**e)),
        margin=draw(st.floats(-1.0, 1.0)),
        first_label=first_label,
    )
    return dict(
        shape=shape,
        hyper=hyper,
        mix=draw(st.sampled_from(LABEL_MIXES)),
        dtype=draw(st.sampled_from(DTYPES)),
        scale=draw(st.sampled_from([0.1, 1.0, 3.0, 10.0, 40.0])),
        layout=draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded"])),
        reduction=draw(st.sampled_from(["none", "mean", "sum"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def fused_loss_and_grad(logits, labels, upstream, hyper, reduction):
    x = logits.detach().clone() if logits.is_contiguous() else logits.detach()
    x.requires_grad_(True)
    loss = sigmoid_dr_loss(x, labels, reduction=reduction, **hyper)
    objective = (loss * upstream.to(loss)).sum() if reduction == "none" else loss
    objective.backward()
    return loss.detach(), x.grad


# A gradient element on the subnormal grid (1.19e-44, rounded to 1.12e-44), found on an H100.
SUBNORMAL_ELEMENT = dict(
    shape=(5, 9),
    hyper=dict(pos_lambda=1.0, neg_lambda=1.0, L=11.0, tau=1.0, margin=-1.0, first_label=0),
    mix="no_positives",
    dtype=torch.float32,
    scale=40.0,
    layout="contiguous",
    reduction="none",
    seed=0,
)


@pytest.mark.parametrize("device", DEVICES)
@example(problem=SUBNORMAL_ELEMENT)
@given(problem=problems())
def test_matches_independent_float64(device, problem):
    gen = torch.Generator().manual_seed(problem["seed"])
    shape, hyper, dtype = problem["shape"], problem["hyper"], problem["dtype"]
    C = shape[-1]
    logits = (torch.randn(shape, generator=gen, dtype=torch.float64) * problem["scale"]).to(dtype)
    labels = draw_labels(problem["mix"], shape[:-1], C, hyper["first_label"], gen)
    logits, labels = lay_out(logits.to(device), labels.to(device), problem["layout"])
    groups = shape[0] if len(shape) == 3 else 1
    reduction = problem["reduction"]
    upstream = torch.randn(groups, generator=gen, dtype=torch.float64)
    per_group = {"none": upstream, "sum": torch.ones(groups, dtype=torch.float64)}.get(
        reduction, torch.full((groups,), 1.0 / max(groups, 1), dtype=torch.float64)
    )

    loss, grad = fused_loss_and_grad(logits, labels, upstream, hyper, reduction)
    want_losses, want_grad = oracle(logits, labels, **hyper, grad_losses=per_group)
    want = want_losses if reduction == "none" else (want_losses * per_group).sum()
    if reduction == "mean" and groups == 0:
        want = torch.zeros((), dtype=torch.float64)  # the mean over no group is 0
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype and grad.shape == logits.shape
    # A mean or sum of losses of one sign is as accurate as its terms.
    assert_loss_close(loss, want, dtype, hyper["L"], hyper["pos_lambda"], hyper["neg_lambda"])
    bound = dense_float64(logits, labels, **hyper, grad_losses=per_group).bound
    if dtype in (torch.float16, torch.bfloat16):
        _, grad32 = fused_loss_and_grad(logits.float(), labels, upstream, hyper, reduction)
        assert_grad_close(grad32, want_grad, torch.float32, bound, "float32 gradient")
        assert_half_grad_close(grad, grad32, dtype)
    else:
        assert_grad_close(grad, want_grad, dtype, bound)

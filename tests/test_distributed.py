"""Two gloo processes on this machine: DDP with per-image losses, and the cross-process pooled
loss (`process_group=`), against one process over the whole batch (fused and reference).

Each test spawns its two workers once; the parent draws fresh random inputs, the workers write
what they computed, and the parent compares."""

import gc
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import drloss_cuda
from conftest import cuda_only
from drloss_cuda import reference
from drloss_cuda.distributed import global_mean_scale
from tolerances import DEFAULTS, assert_grad_close, assert_loss_close, dense_float64

WORLD = 2

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _init(rank, workdir):
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(workdir, 'rendezvous')}",
                            rank=rank, world_size=WORLD)
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# Pooled mode


def _pooled_worker(rank, workdir):
    _init(rank, workdir)
    try:
        cases = torch.load(os.path.join(workdir, "cases.pt"))
        results = []
        for i, case in enumerate(cases):
            lo, hi = case["split"][rank], case["split"][rank + 1]
            x = case["logits"][lo:hi].clone()
            if "rank_dtypes" in case:
                x = x.to(case["rank_dtypes"][rank])
            x.requires_grad_(True)
            y = case["labels"][lo:hi]
            if i % 2:
                # The module, per-group losses ([1] for the one pooled group).
                module = drloss_cuda.SigmoidDRLoss(process_group=dist.group.WORLD, reduction="none", **case["hyper"])
                losses = module(x, y)
                assert losses.shape == (1,)
                loss = losses.sum()
            else:
                loss = drloss_cuda.sigmoid_dr_loss(x, y, process_group=dist.group.WORLD, **case["hyper"])
            # Every process returns the same global loss; the backward is local.
            loss.backward()
            results.append({"loss": loss.detach(), "grad": x.grad})
        torch.save(results, os.path.join(workdir, f"pooled_{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _labels(m, num_classes, first_label, positives=True):
    # ignore -1, background, or (when positives) a class label.
    background = num_classes if first_label == 0 else 0
    kind = torch.randint(0, 4, (m,))
    labels = torch.full((m,), background, dtype=torch.int64)
    labels[kind == 0] = -1
    if positives:
        cls = torch.randint(0, num_classes, (m,)) + first_label
        labels[kind >= 2] = cls[kind >= 2]
    return labels


def _pooled_cases():
    c = 5
    cases = []
    for dtype in (torch.float64, torch.float32):
        # Mixed on both processes.
        y = _labels(70, c, 0)
        cases.append({"logits": torch.randn(70, c, dtype=dtype) * 3, "labels": y, "split": [0, 40, 70], "hyper": {}})
        # The second process has no positive (and a sharp negative temperature that makes the
        # two processes' maxima differ a lot, exercising the rescaling).
        y = torch.cat([_labels(30, c, 1), _labels(25, c, 1, positives=False)])
        cases.append({"logits": torch.randn(55, c, dtype=dtype) * 4, "labels": y, "split": [0, 30, 55],
                      "hyper": {"first_label": 1, "neg_lambda": 0.01, "pos_lambda": 0.3, "margin": 0.2}})
        # The first process has zero anchors.
        y = _labels(33, c, 0)
        cases.append({"logits": torch.randn(33, c, dtype=dtype), "labels": y, "split": [0, 0, 33], "hyper": {}})
        # No positive anywhere: E_pos = 1 globally, positives get no gradient.
        y = _labels(20, c, 0, positives=False)
        cases.append({"logits": torch.randn(20, c, dtype=dtype), "labels": y, "split": [0, 12, 20], "hyper": {}})
        # Every anchor ignored on both processes: the all-ignored loss, zero gradient.
        cases.append({"logits": torch.randn(9, c, dtype=dtype), "labels": torch.full((9,), -1), "split": [0, 4, 9],
                      "hyper": {}})
        # A NaN logit in a counted anchor of the second process: NaN loss and gradient everywhere.
        x, y = torch.randn(30, c, dtype=dtype), _labels(30, c, 0)
        y[20] = c  # background: every entry of anchor 20 counts
        x[20, 1] = float("nan")
        cases.append({"logits": x, "labels": y, "split": [0, 12, 30], "hyper": {}, "expect_nan": True})
    # Processes whose logits differ in dtype: float32 and float64, and a process without anchors
    # holding the default dtype's empty tensor beside float64 ones; to float32's accuracy.
    y = _labels(40, c, 0)
    cases.append({"logits": torch.randn(40, c, dtype=torch.float64) * 3, "labels": y, "split": [0, 25, 40],
                  "hyper": {}, "rank_dtypes": [torch.float32, torch.float64]})
    cases.append({"logits": torch.randn(40, c, dtype=torch.float64) * 3, "labels": y, "split": [0, 0, 40],
                  "hyper": {}, "rank_dtypes": [torch.float32, torch.float64]})
    return cases


def _spawn(fn, workdir):
    mp.spawn(fn, args=(str(workdir),), nprocs=WORLD, join=True)


def test_pooled_process_group_matches_single_process(tmp_path, generator):
    cases = _pooled_cases()
    torch.save(cases, tmp_path / "cases.pt")
    _spawn(_pooled_worker, tmp_path)
    per_rank = [torch.load(tmp_path / f"pooled_{r}.pt") for r in range(WORLD)]

    for i, case in enumerate(cases):
        rank_dtypes = case.get("rank_dtypes", [case["logits"].dtype] * WORLD)
        for rank in range(WORLD):
            assert per_rank[rank][i]["loss"].dtype == rank_dtypes[rank]
            assert per_rank[rank][i]["grad"].dtype == rank_dtypes[rank]
        grad = torch.cat([per_rank[r][i]["grad"].double() for r in range(WORLD)])
        assert grad.shape == case["logits"].shape
        dtype = torch.float32 if torch.float32 in rank_dtypes else torch.float64
        if case.get("expect_nan"):
            for rank in range(WORLD):
                assert per_rank[rank][i]["loss"].isnan().all(), f"case {i} rank {rank}: loss not NaN"
                assert per_rank[rank][i]["grad"].isnan().any(), f"case {i} rank {rank}: no NaN in the gradient"
            continue
        if dtype == torch.float64:
            # To rounding against the single-process fused loss and the reference.
            for loss_fn in (drloss_cuda.sigmoid_dr_loss, reference.sigmoid_dr_loss):
                x = case["logits"].clone().requires_grad_(True)
                want = loss_fn(x, case["labels"], **case["hyper"])
                want.backward()
                for rank in range(WORLD):
                    torch.testing.assert_close(per_rank[rank][i]["loss"], want.detach(), rtol=1e-10, atol=1e-12,
                                               msg=f"case {i} rank {rank} loss vs {loss_fn.__module__}")
                torch.testing.assert_close(grad, x.grad, rtol=1e-10, atol=1e-12, msg=f"case {i} grad vs {loss_fn.__module__}")
        else:
            # float32: the two processes' partial sums merge in another order than one process's,
            # so compare with float64 to the documented accuracy, element by element.
            hyper = {**DEFAULTS, "first_label": 0, **case["hyper"]}
            want = dense_float64(case["logits"], case["labels"], **hyper)
            for rank in range(WORLD):
                assert_loss_close(per_rank[rank][i]["loss"], want.losses[0], dtype, hyper["L"], hyper["pos_lambda"],
                                  hyper["neg_lambda"], what=f"case {i} rank {rank} loss")
            assert_grad_close(grad, want.grad, dtype, want.bound, what=f"case {i} gradient")
        if (case["labels"] < 0).all():
            assert torch.all(grad == 0)


@pytest.fixture
def world_of_one():
    """A gloo process group of this process alone (a HashStore: nothing to rendezvous with)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_pooled_process_group_rejects_per_image_logits(world_of_one):
    # The shape is checked before anything communicates.
    with pytest.raises(ValueError, match="pooled"):
        drloss_cuda.sigmoid_dr_loss(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), process_group=world_of_one)
    # A wrong rank is the same RuntimeError as without a group.
    with pytest.raises(RuntimeError, match=r"logits must have shape \[N, A, C\]"):
        drloss_cuda.sigmoid_dr_loss(torch.randn(4), torch.zeros((), dtype=torch.long), process_group=world_of_one)


@pytest.mark.parametrize("logits_shape", [(3, 4), (2, 3, 4), (4,)], ids=["pooled", "per_image", "rank1"])
def test_process_group_type_is_checked_first(logits_shape):
    logits = torch.randn(logits_shape)
    labels = torch.zeros(logits_shape[:-1], dtype=torch.long)
    with pytest.raises(TypeError, match="process_group must be a torch.distributed.ProcessGroup"):
        drloss_cuda.sigmoid_dr_loss(logits, labels, process_group="world")


def test_module_checks_the_process_group_at_construction(world_of_one):
    with pytest.raises(TypeError, match="process_group must be a torch.distributed.ProcessGroup"):
        drloss_cuda.SigmoidDRLoss(process_group="world")
    module = drloss_cuda.SigmoidDRLoss(process_group=world_of_one, reduction="none")
    x = torch.randn(7, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, -1, 0, 3])
    got = module(x, y)
    want = reference.sigmoid_dr_loss(x.detach(), y, reduction="none")
    torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=0)


def test_pooled_loss_keeps_its_accuracy_at_a_negative_margin(world_of_one, generator):
    # The value after the merge is evaluated in float64: in float32, L * d = -45 alone would
    # round the loss by about 3e-6 of itself.
    x = torch.randn(4000, 10)
    y = torch.randint(-1, 12, (4000,))
    for margin in (0.5, -8.0, -12.0):
        hyper = {**DEFAULTS, "first_label": 0, "margin": margin}
        want = dense_float64(x, y, **hyper).losses[0]
        got = drloss_cuda.sigmoid_dr_loss(x, y, margin=margin, process_group=world_of_one)
        assert_loss_close(got, want, torch.float32, what=f"pooled loss at margin {margin}")


@cuda_only
def test_pooled_loss_on_cuda_makes_no_host_synchronization(world_of_one, monkeypatch, generator):
    """The pooled loss's own work on a CUDA device (the merge of the statistics, the loss, the
    backward) neither waits for the device nor copies from the host, and gives float64's loss
    and gradient. A world of one all-reduces a tensor to itself, so the collective is replaced
    by that identity: only this package's code is watched (gloo stages CUDA tensors through the
    host)."""
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None, group=None: None)
    x_cpu = torch.randn(3000, 80) * 3
    y_cpu = torch.randint(-1, 81, (3000,))
    x, y = x_cpu.cuda().requires_grad_(True), y_cpu.cuda()
    drloss_cuda.sigmoid_dr_loss(x, y, process_group=world_of_one).backward()  # first-call work
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = drloss_cuda.sigmoid_dr_loss(x, y, process_group=world_of_one)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    want = dense_float64(x_cpu, y_cpu, **DEFAULTS, first_label=0)
    assert_loss_close(loss.reshape(1), want.losses, torch.float32)
    assert_grad_close(x.grad, want.grad, torch.float32, want.bound)


# --------------------------------------------------------------------------------------------
# DistributedDataParallel


A, C, F = 12, 3, 6


def _head():
    return torch.nn.Linear(F, A * C, dtype=torch.float64)


def _ddp_worker(rank, workdir):
    _init(rank, workdir)
    try:
        out = _ddp_compute(rank, torch.load(os.path.join(workdir, "ddp.pt")))
        torch.save(out, os.path.join(workdir, f"ddp_{rank}.pt"))
        # The DDP models (and their reducers) are gone before the group is: tearing the group
        # down under a live reducer can abort the process.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _ddp_compute(rank, data):
    lo, hi = data["split"][rank], data["split"][rank + 1]
    feats, labels = data["features"][lo:hi], data["labels"][lo:hi]
    out = {}

    # Per-image groups: sum of the local per-image losses times world / total images, so
    # that DDP's average of the gradients is the gradient of the global mean.
    head = _head()
    head.load_state_dict(data["state"])
    model = torch.nn.parallel.DistributedDataParallel(head)
    logits = model(feats).reshape(-1, A, C)
    scale = global_mean_scale(logits.shape[0], dtype=logits.dtype)
    out["scales"] = torch.stack([scale, global_mean_scale(torch.tensor(hi - lo), dtype=torch.float64)])
    out["scale_float32"] = global_mean_scale(hi - lo)
    loss = drloss_cuda.sigmoid_dr_loss(logits, labels, reduction="sum") * scale
    loss.backward()
    out["per_image"] = [p.grad.clone() for p in model.parameters()]
    # The unscaled local mean, for the check that the scale matters with unequal splits.
    out["local_mean"] = drloss_cuda.sigmoid_dr_loss(logits.detach(), labels)

    # Pooled over the processes: the global loss times the world size.
    head = _head()
    head.load_state_dict(data["state"])
    model = torch.nn.parallel.DistributedDataParallel(head)
    logits = model(feats).reshape(-1, C)
    loss = drloss_cuda.sigmoid_dr_loss(logits, labels.reshape(-1), process_group=dist.group.WORLD)
    (loss * dist.get_world_size()).backward()
    out["pooled"] = [p.grad.clone() for p in model.parameters()]
    out["pooled_loss"] = loss.detach()
    return out


def test_ddp_matches_single_process(tmp_path, generator):
    n = 5
    head = _head()
    labels = torch.randint(-1, C + 1, (n, A))
    # The images of rank 1 all background: their loss (E_pos = 1 by convention) is then unlike
    # the others' by construction, so that the naive average below cannot match the global mean
    # by chance (with its labels drawn too, a lone image came within 1e-6 about once in 50,000
    # draws; all background, the gap was at least 8.7% over 20,000).
    labels[3:] = C
    data = {
        "state": head.state_dict(),
        "features": torch.randn(n, F, dtype=torch.float64),
        "labels": labels,
        "split": [0, 3, 5],  # unequal on purpose: 3 images and 2, a scale (2/5) that float32 rounds
    }
    torch.save(data, tmp_path / "ddp.pt")
    _spawn(_ddp_worker, tmp_path)
    got = [torch.load(tmp_path / f"ddp_{r}.pt") for r in range(WORLD)]
    for rank in range(WORLD):  # world size / total images, the same on every process
        torch.testing.assert_close(got[rank]["scales"], torch.full((2,), WORLD / n, dtype=torch.float64), rtol=0, atol=0)
        scale_float32 = got[rank]["scale_float32"]
        assert scale_float32.dtype == torch.float32 and scale_float32.item() == torch.tensor(WORLD / n).item()

    # One process, whole batch.
    head.zero_grad()
    logits = head(data["features"]).reshape(n, A, C)
    reference.sigmoid_dr_loss(logits, data["labels"]).backward()
    expected = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    logits = head(data["features"]).reshape(n, A, C)
    drloss_cuda.sigmoid_dr_loss(logits, data["labels"]).backward()
    expected_fused = [p.grad.clone() for p in head.parameters()]
    for rank in range(WORLD):
        for g, e, ef in zip(got[rank]["per_image"], expected, expected_fused):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(g, ef, rtol=1e-10, atol=1e-12)
    # Averaging the unscaled local means would weight each image of rank 1 1.5 times as much as
    # each of rank 0.
    global_mean = reference.sigmoid_dr_loss(head(data["features"]).reshape(n, A, C).detach(), data["labels"])
    naive = (got[0]["local_mean"] + got[1]["local_mean"]) / 2
    assert not torch.allclose(naive, global_mean, rtol=1e-6, atol=0)

    head.zero_grad()
    logits = head(data["features"]).reshape(-1, C)
    pooled = reference.sigmoid_dr_loss(logits, data["labels"].reshape(-1))
    pooled.backward()
    expected = [p.grad.clone() for p in head.parameters()]
    for rank in range(WORLD):
        torch.testing.assert_close(got[rank]["pooled_loss"], pooled.detach(), rtol=1e-10, atol=1e-12)
        for g, e in zip(got[rank]["pooled"], expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)

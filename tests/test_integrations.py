"""The prior helper and the parts of the detector integrations that need no framework (label
conversion, the losses over all levels, config plumbing), tested everywhere against the
reference; framework imports and their failures. The integrations on the real frameworks:
test_integration_torchvision.py, test_integration_mmdet.py, test_integration_detectron2.py."""

import fractions
import math
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

import drloss_cuda
from drloss_cuda import reference
from drloss_cuda.initialization import DR_LOSS_PRIOR, FOCAL_LOSS_PRIOR, init_classifier_prior, prior_bias
from drloss_cuda.integrations import import_framework
from drloss_cuda.integrations.detectron2_loss import (
    CONFIG_KEYS,
    add_dr_loss_config,
    dense_classification_loss,
    options_from_config,
)
from drloss_cuda.integrations.mmdet_loss import MMDetSigmoidDRLoss, head_loss_cls_config, multilevel_classification_loss
from framework_support import REQUIRE_FRAMEWORKS, framework_or_skip


# ---------------------------------------------------------------------------------------------
# The prior


@pytest.mark.parametrize("prior", [0.5, 0.01, 0.2, 0.999])
def test_prior_bias_gives_the_prior(prior):
    assert torch.sigmoid(torch.tensor(prior_bias(prior), dtype=torch.float64)).item() == pytest.approx(prior, rel=1e-12)
    assert prior_bias(prior) == pytest.approx(math.log(prior) - math.log1p(-prior), rel=1e-12)


def test_prior_defaults():
    assert DR_LOSS_PRIOR == 0.5 and FOCAL_LOSS_PRIOR == 0.01
    assert prior_bias() == 0.0
    assert drloss_cuda.init_classifier_prior is init_classifier_prior and drloss_cuda.prior_bias is prior_bias


def test_prior_bias_takes_any_real_number_and_tiny_priors():
    want = prior_bias(0.25)
    for form in (np.float32(0.25), np.float64(0.25), np.array(0.25), torch.tensor(0.25), fractions.Fraction(1, 4)):
        assert prior_bias(form) == pytest.approx(want, rel=1e-7), type(form)
    assert prior_bias(1e-320) == pytest.approx(math.log(1e-320), rel=1e-12)  # subnormal, still finite
    for bad in (np.bool_(True), torch.tensor(True), torch.tensor([0.5])):
        with pytest.raises(TypeError, match="prior"):
            prior_bias(bad)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_prior_bias_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="prior"):
        prior_bias(bad)
    with pytest.raises(TypeError, match="prior"):
        prior_bias("0.5")


def test_init_classifier_prior_sets_the_bias():
    conv = nn.Conv2d(4, 6, 3)
    weight = conv.weight.detach().clone()
    bias = init_classifier_prior(conv, 0.01)
    assert bias is conv.bias and conv.bias.requires_grad
    assert torch.equal(conv.bias.detach(), torch.full((6,), prior_bias(0.01)))
    assert torch.equal(conv.weight, weight)  # only the bias changes
    init_classifier_prior(conv)
    assert torch.equal(conv.bias.detach(), torch.zeros(6))  # DR loss's 0.5
    linear = nn.Linear(3, 2).double()
    init_classifier_prior(linear.bias, 0.25)
    torch.testing.assert_close(torch.sigmoid(linear.bias.detach()), torch.full((2,), 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="layer"):
        init_classifier_prior(nn.Conv2d(2, 2, 1, bias=False))
    with pytest.raises(TypeError, match="bias"):
        init_classifier_prior(torch.zeros(3, dtype=torch.int64))


def test_prior_helpers_import_without_the_extension(tmp_path):
    """Like drloss_cuda.reference, the prior helpers and the framework-free integration parts
    load no compiled code; and neither they nor `import drloss_cuda` import any framework
    (which matters where the frameworks are installed: CI's frameworks environment)."""
    import subprocess

    code = ("import sys, drloss_cuda\n"
            "from drloss_cuda import init_classifier_prior, prior_bias\n"
            "import drloss_cuda.integrations.mmdet_loss, drloss_cuda.integrations.detectron2_loss\n"
            "assert 'drloss_cuda._C' not in sys.modules and 'drloss_cuda.ops' not in sys.modules, sorted(sys.modules)\n"
            "frameworks = {'torchvision', 'mmdet', 'mmcv', 'mmengine', 'detectron2'} & set(sys.modules)\n"
            "assert not frameworks, frameworks\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# Framework imports


def test_import_framework_reports_every_failure(tmp_path, monkeypatch):
    with pytest.raises(ImportError, match="no_such_framework_here.*needed by me"):
        import_framework("no_such_framework_here", needed_by="me")
    # A package that is installed but fails to load (e.g. compiled ops that do not match torch)
    # raises RuntimeError or OSError at import: still an ImportError, naming the cause.
    (tmp_path / "broken_framework_for_test.py").write_text("raise RuntimeError('operator does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="broken_framework_for_test.*RuntimeError: operator does not exist"):
        import_framework("broken_framework_for_test")
    assert import_framework("math") is math


def test_a_missing_framework_skips_unless_required(monkeypatch):
    monkeypatch.delenv(REQUIRE_FRAMEWORKS, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_framework_here"):
        framework_or_skip("no_such_framework_here")
    monkeypatch.setenv(REQUIRE_FRAMEWORKS, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_FRAMEWORKS}=1 but cannot import no_such_framework_here"):
        framework_or_skip("no_such_framework_here")
    assert framework_or_skip("math") is math


# ---------------------------------------------------------------------------------------------
# mmdetection: the loss module and the multi-level loss need no mmdet


def _mmdet_targets(n, a, c):
    labels = torch.randint(0, c + 1, (n, a))
    weights = (torch.rand(n, a) > 0.25).float()
    labels[:, 0] = 0  # a positive in every image
    weights[:, 0] = 1.0
    return labels, weights


def _as_official(labels, weights, c):
    """mmdet targets in the official convention (classes 1..C, background 0, ignore -1)."""
    official = torch.where(labels == c, 0, labels + 1)
    return torch.where(weights > 0, official, -1)


def test_mmdet_loss_converts_labels_and_weights(generator):
    n, a, c = 3, 50, 4
    labels, weights = _mmdet_targets(n, a, c)
    logits = torch.randn(n, a, c, dtype=torch.float64, requires_grad=True)
    loss_module = MMDetSigmoidDRLoss(loss_weight=2.5)
    loss = loss_module(logits, labels, weights, avg_factor=123.0)
    want = 2.5 * reference.sigmoid_dr_loss(logits, _as_official(labels, weights, c), first_label=1)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, logits)
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-14)
    # avg_factor is not used: DR loss is not a sum over anchors.
    torch.testing.assert_close(loss_module(logits, labels, weights, avg_factor=1.0), loss.detach(), rtol=0, atol=0)
    # reduction and reduction_override, as every mmdet loss.
    per_image = loss_module(logits, labels, weights, reduction_override="none")
    assert per_image.shape == (n,)
    torch.testing.assert_close(per_image.sum(), loss_module(logits, labels, weights, reduction_override="sum"))
    torch.testing.assert_close(per_image.mean(), loss.detach())
    # Pooled [M, C] input, what a stock head passes for one level; no weights = every anchor counts.
    pooled = loss_module(logits.flatten(0, 1), labels.flatten())
    want_pooled = 2.5 * reference.sigmoid_dr_loss(logits.detach().flatten(0, 1), labels.flatten())
    torch.testing.assert_close(pooled.detach(), want_pooled, rtol=1e-12, atol=1e-12)


def test_mmdet_loss_arguments():
    with pytest.raises(ValueError, match="use_sigmoid"):
        MMDetSigmoidDRLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match="reduction"):
        MMDetSigmoidDRLoss(reduction="avg")
    loss_module = MMDetSigmoidDRLoss(L=3.0, tau=2.0, margin=0.3, pos_lambda=0.5, neg_lambda=0.2,
                                     loss_fn=reference.sigmoid_dr_loss)
    logits, labels = torch.randn(2, 10, 3, dtype=torch.float64), torch.randint(0, 4, (2, 10))
    want = reference.sigmoid_dr_loss(logits, labels, L=3.0, tau=2.0, margin=0.3, pos_lambda=0.5, neg_lambda=0.2)
    torch.testing.assert_close(loss_module(logits, labels), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        loss_module(logits, labels, reduction_override="avg")
    with pytest.raises(ValueError, match="cls_score"):
        loss_module(logits[0, 0], labels[0, 0])
    with pytest.raises(ValueError, match="label_weights"):
        loss_module(logits, labels, torch.full((2, 10), 0.5))
    above = labels.clone()
    above[1, 7] = 4  # one label above num_classes (3), wherever the random ones fell
    with pytest.raises(ValueError, match="labels"):
        loss_module(logits, above)
    unchecked = MMDetSigmoidDRLoss(loss_fn=reference.sigmoid_dr_loss, check_targets=False)
    torch.testing.assert_close(unchecked(logits, labels, torch.full((2, 10), 0.5)), reference.sigmoid_dr_loss(logits, labels))
    # The head config: SigmoidDRLoss, sigmoid, whatever else the user wrote kept.
    assert head_loss_cls_config() == dict(type="SigmoidDRLoss", use_sigmoid=True)
    assert head_loss_cls_config(dict(loss_weight=2.0)) == dict(type="SigmoidDRLoss", use_sigmoid=True, loss_weight=2.0)
    with pytest.raises(ValueError, match="use_sigmoid"):
        head_loss_cls_config(dict(type="SigmoidDRLoss", use_sigmoid=False))


BAD_HYPERPARAMETERS = [dict(neg_lambda=1e-6), dict(pos_lambda=0.0), dict(L=-1.0), dict(tau=float("nan")),
                       dict(margin=float("inf"))]


@pytest.mark.parametrize("bad", BAD_HYPERPARAMETERS, ids=lambda bad: next(iter(bad)))
def test_mmdet_loss_checks_its_hyperparameters_at_construction(bad):
    """As SigmoidDRLoss does: the message is the loss's own, raised when mmdet builds the head,
    not at the first training step."""
    with pytest.raises(ValueError) as want:
        drloss_cuda.SigmoidDRLoss(**bad)
    with pytest.raises(ValueError) as got:
        MMDetSigmoidDRLoss(**bad)
    assert str(got.value) == str(want.value)


def test_mmdet_multilevel_loss_is_one_loss_per_image(generator):
    """Per-level head outputs [N, A*C, H, W] and per-level targets: one DR loss per image over
    every level, equal to the reference on the image's anchors built element by element."""
    n, a, c = 2, 3, 4
    shapes = [(6, 5), (3, 3), (1, 2)]
    cls_scores = [torch.randn(n, a * c, h, w, dtype=torch.float64, requires_grad=True) for h, w in shapes]
    targets = [_mmdet_targets(n, h * w * a, c) for h, w in shapes]
    loss = multilevel_classification_loss(MMDetSigmoidDRLoss(), cls_scores, [t[0] for t in targets],
                                          [t[1] for t in targets], c, avg_factor=7)
    for i in range(n):
        rows, row_labels = [], []
        for score, (labels, weights) in zip(cls_scores, targets):
            _, _, h, w = score.shape
            for y in range(h):
                for x in range(w):
                    for k in range(a):
                        j = (y * w + x) * a + k
                        rows.append(score[i, k * c:(k + 1) * c, y, x])
                        row_labels.append(_as_official(labels[i, j], weights[i, j], c))
        want_i = reference.sigmoid_dr_loss(torch.stack(rows), torch.stack(row_labels), first_label=1)
        if i == 0:
            want = want_i / n
        else:
            want = want + want_i / n
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(loss, cls_scores)
    want_grads = torch.autograd.grad(want, cls_scores)
    for g, wg in zip(grads, want_grads):
        torch.testing.assert_close(g, wg, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# detectron2: config plumbing and the dense loss need no detectron2


class _ConfigNode(dict):
    """A stand-in for detectron2's CfgNode (a dict with attribute access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def test_detectron2_config_plumbing():
    cfg = _ConfigNode(MODEL=_ConfigNode())
    prior, options = options_from_config(cfg)  # no DR_LOSS node: the defaults
    assert prior == DR_LOSS_PRIOR
    assert options == dict(pos_lambda=drloss_cuda.DEFAULT_POS_LAMBDA, neg_lambda=drloss_cuda.DEFAULT_NEG_LAMBDA,
                           L=drloss_cuda.DEFAULT_L, tau=drloss_cuda.DEFAULT_TAU, margin=drloss_cuda.DEFAULT_MARGIN)
    add_dr_loss_config(cfg)
    assert isinstance(cfg.MODEL.DR_LOSS, _ConfigNode) and set(cfg.MODEL.DR_LOSS) == set(CONFIG_KEYS)
    cfg.MODEL.DR_LOSS.PRIOR_PROB = 0.3
    cfg.MODEL.DR_LOSS.TAU = 2
    prior, options = options_from_config(cfg)
    assert prior == 0.3 and options["tau"] == 2.0 and options["L"] == drloss_cuda.DEFAULT_L
    drloss_cuda.SigmoidDRLoss(**options)  # every key is an argument of the loss


@pytest.mark.parametrize("bad", BAD_HYPERPARAMETERS, ids=lambda bad: next(iter(bad)))
def test_detectron2_config_loss_is_checked_when_built(bad):
    """The loss detectron2's from_config builds from cfg.MODEL.DR_LOSS checks its arguments
    there, with the loss's own message."""
    key, value = next(iter(bad.items()))
    cfg = add_dr_loss_config(_ConfigNode(MODEL=_ConfigNode()))
    cfg.MODEL.DR_LOSS[key.upper()] = value
    _, options = options_from_config(cfg)
    with pytest.raises(ValueError) as want:
        drloss_cuda.SigmoidDRLoss(**bad)
    with pytest.raises(ValueError) as got:
        drloss_cuda.integrations.fused_loss_module(**options)
    assert str(got.value) == str(want.value)


def test_detectron2_dense_loss(generator):
    """Per-level [N, Hi*Wi*A, K] logits and per-image labels (K background, -1 ignore)."""
    n, k = 2, 5
    sizes = [40, 10, 3]
    pred_logits = [torch.randn(n, s, k, dtype=torch.float64, requires_grad=True) for s in sizes]
    gt_labels = [torch.randint(-1, k + 1, (sum(sizes),)) for _ in range(n)]
    loss = dense_classification_loss(drloss_cuda.SigmoidDRLoss(), pred_logits, gt_labels, k)
    official = [torch.where(g == k, 0, torch.where(g >= 0, g + 1, -1)) for g in gt_labels]
    want = reference.sigmoid_dr_loss(torch.cat(pred_logits, 1), torch.stack(official), first_label=1)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    # A class id beyond K (detectron2's one-hot encoding fails on it) raises unless unchecked.
    gt_labels[1][3] = k + 1
    with pytest.raises(ValueError, match=f"gt_labels must lie in \\[-1, {k}\\], found {k + 1}"):
        dense_classification_loss(drloss_cuda.SigmoidDRLoss(), pred_logits, gt_labels, k)
    loss = dense_classification_loss(drloss_cuda.SigmoidDRLoss(), pred_logits, gt_labels, k, check_targets=False)
    assert torch.isfinite(loss)


def _stand_in_detectron2(root, with_dense_detector):
    """A package named detectron2 under root with what the integration touches at import:
    RetinaNet (with or without DenseDetector's _ema_update, 0.6's marker), the registry,
    configurable, and the box regression and event modules."""
    package = root / "detectron2"
    (package / "modeling").mkdir(parents=True)
    (package / "utils").mkdir()
    (package / "__init__.py").write_text("")
    (package / "utils" / "__init__.py").write_text("")
    (package / "utils" / "events.py").write_text("")
    (package / "config.py").write_text("def configurable(init):\n    return init\n")
    (package / "modeling" / "box_regression.py").write_text("")
    (package / "modeling" / "__init__.py").write_text(
        "class _Registry:\n"
        "    def register(self):\n"
        "        return lambda cls: cls\n"
        "META_ARCH_REGISTRY = _Registry()\n"
        "class RetinaNet:\n"
        + ("    def _ema_update(self, name, value, steps):\n        return value\n" if with_dense_detector else
           "    pass\n"))


@pytest.mark.parametrize("with_dense_detector", [False, True], ids=["older_than_0.6", "0.6_or_newer"])
def test_detectron2_version_check(tmp_path, with_dense_detector):
    """Importing the integration with a detectron2 whose RetinaNet predates DenseDetector (0.5
    and older) raises ImportError naming the version needed; with one that has it, it imports.
    A stand-in package, in a fresh process, so that any installed detectron2 stays untouched."""
    import subprocess

    _stand_in_detectron2(tmp_path, with_dense_detector)
    code = ("import detectron2, sys\n"
            f"assert detectron2.__file__.startswith({str(tmp_path)!r}), detectron2.__file__\n"
            "try:\n"
            "    import drloss_cuda.integrations.detectron2 as integration\n"
            "except ImportError as error:\n"
            "    print('ImportError:', error)\n"
            "else:\n"
            "    print('imported', integration.DRLossRetinaNet.__mro__[1].__module__)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    if with_dense_detector:
        assert out.strip() == "imported detectron2.modeling", out
    else:
        assert out.startswith("ImportError: drloss_cuda.integrations.detectron2 needs detectron2 0.6 or newer"), out

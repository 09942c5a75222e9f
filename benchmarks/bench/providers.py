"""The registry of providers: every way of computing the loss that the benchmark measures.

A provider's builder returns `fn(logits [N, A, C], labels [N, A]) -> scalar loss`; it is called
once per run, at the first point that measures the provider. To add a peer, write its loss (in
peers.py if it is new code) and register a builder here with @provider; the benchmark checks it
against float64 and times it beside the others. `kind` names the float64 computation it must
match ("dr": the DR reference, "focal": the direct focal loss); `layout` is "per_image" (one
group per image of [N, A, C]) or "pooled" (one group of [N*A, C]). A `named_only` provider
(a variant for an A/B) is timed only where --providers names it.
"""

import os
from dataclasses import dataclass

import torch

from . import peers
from .checks import FUSED_TOLERANCES, PEER_TOLERANCES


@dataclass
class Provider:
    name: str
    kind: str  # "dr" or "focal": the float64 computation it is checked against
    layout: str  # "per_image" or "pooled"
    build: object  # () -> fn(logits, labels) -> scalar loss
    compiled: bool = False  # built with torch.compile (left out of --quick unless named)
    description: str = ""
    named_only: bool = False  # left out unless --providers names it

    @property
    def tolerances(self):
        """{dtype: (loss, gradient) tolerance}: the fused kernels' accuracy is part of the
        project's contract; the peers are held to what float32 PyTorch gives."""
        return FUSED_TOLERANCES if self.name.startswith("fused") else PEER_TOLERANCES


# Insertion order is the order of the printed table.
PROVIDERS = {}


def provider(name, kind, layout, compiled=False, named_only=False):
    """Registers the decorated builder as provider `name`; its docstring is the description."""

    def register(build):
        PROVIDERS[name] = Provider(name, kind, layout, build, compiled, (build.__doc__ or "").strip(), named_only)
        return build

    return register


def pooled(logits, labels):
    """[N, A, C], [N, A] -> [N*A, C], [N*A]: one group for the whole batch."""
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


def fused_loss():
    import drloss_cuda  # the compiled extension: imported only when a fused provider is built

    return drloss_cuda.sigmoid_dr_loss


def reference_loss():
    from drloss_cuda import reference

    return reference.sigmoid_dr_loss


def compile_static(fn):
    """torch.compile with one static graph per shape (dynamic=False: the best case for the
    peer); a sweep over sizes and dtypes needs more than dynamo's default 8 recompilations."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))
    return torch.compile(fn, fullgraph=True, dynamic=False)


@provider("fused", "dr", "per_image")
def build_fused():
    """drloss_cuda.sigmoid_dr_loss on [N, A, C]"""
    fused = fused_loss()
    return lambda logits, labels: fused(logits, labels)


def with_forward_walk(fn, walk):
    """fn with DRLOSS_CUDA_FORWARD=walk during each call (the extension reads it at every call),
    so that one run interleaves the calls of every walk; the variable is restored after."""

    def call(logits, labels):
        saved = os.environ.get("DRLOSS_CUDA_FORWARD")
        os.environ["DRLOSS_CUDA_FORWARD"] = walk
        try:
            return fn(logits, labels)
        finally:
            if saved is None:
                del os.environ["DRLOSS_CUDA_FORWARD"]
            else:
                os.environ["DRLOSS_CUDA_FORWARD"] = saved

    return call


@provider("fused_aligned", "dr", "per_image", named_only=True)
def build_fused_aligned():
    """fused with the CUDA forward's aligned walk (DRLOSS_CUDA_FORWARD=aligned); named only"""
    return with_forward_walk(build_fused(), "aligned")


@provider("fused_pipelined", "dr", "per_image", named_only=True)
def build_fused_pipelined():
    """fused with the CUDA forward's pipelined walk (DRLOSS_CUDA_FORWARD=pipelined); named only"""
    return with_forward_walk(build_fused(), "pipelined")


@provider("fused_pooled", "dr", "pooled")
def build_fused_pooled():
    """drloss_cuda.sigmoid_dr_loss on [N*A, C]"""
    fused = fused_loss()
    return lambda logits, labels: fused(*pooled(logits, labels))


@provider("official_pooled", "dr", "pooled")
def build_official_pooled():
    """reference (the official boolean-mask code) on [N*A, C]"""
    ref = reference_loss()
    return lambda logits, labels: ref(*pooled(logits, labels))


@provider("per_image_loop", "dr", "per_image")
def build_per_image_loop():
    """reference on [N, A, C]: a Python loop over images"""
    ref = reference_loss()
    return lambda logits, labels: ref(logits, labels)


@provider("dense_masked", "dr", "per_image")
def build_dense_masked():
    """torch.where + logsumexp per image, eager"""
    return lambda logits, labels: peers.dense_masked_dr_loss(logits, labels)


@provider("dense_masked_compiled", "dr", "per_image", compiled=True)
def build_dense_masked_compiled():
    """dense_masked under torch.compile"""
    return compile_static(peers.dense_masked_dr_loss)


@provider("focal", "focal", "per_image")
def build_focal():
    """torchvision-style sigmoid focal loss, eager"""
    return lambda logits, labels: peers.sigmoid_focal_loss(logits, labels)


@provider("focal_compiled", "focal", "per_image", compiled=True)
def build_focal_compiled():
    """focal under torch.compile"""
    return compile_static(peers.sigmoid_focal_loss)

"""Defaults and the argument handling of the public function, its module and the reference.

The op checks its own arguments in C++ (csrc/checks.cpp, for real, meta and fake tensors); the
checks here that the op also makes are their twins, with the same words, for the reference
(which runs without the extension), for the module at construction and for calls traced by
torch.compile: a call fails with the same words whichever path sees it first
(tests/test_numerics_extremes.py compares the texts). The other checks (tensor layouts,
hyperparameter forms) concern Python inputs that never reach the op.
"""

import math
import numbers
import operator

import torch

# The official code's defaults ("The math" in docs/design.md).
DEFAULT_POS_LAMBDA = 1.0
DEFAULT_NEG_LAMBDA = 0.1 / math.log(3.5)
DEFAULT_L = 6.0
DEFAULT_TAU = 4.0
DEFAULT_MARGIN = 0.5

# The smallest softmax temperature accepted (kMinLambda in csrc/checks.cpp). Below it the exponent
# scale 1/lambda exceeds 1e4: the float32 rounding of p (6e-8) then moves an exponent by more
# than 6e-4, the softmax is a max to float32 precision and its float32 gradient loses its
# meaning. Up to it the kernels match a float64 evaluation (tests/test_properties.py).
MIN_LAMBDA = 1e-4
# Formatted once: torch.compile cannot trace a format spec inside a message.
MIN_LAMBDA_TEXT, MAX_SCALE_TEXT = f"{MIN_LAMBDA:g}", f"{1 / MIN_LAMBDA:g}"

# Labels are int64 in the kernels and first_label is compared with them.
MAX_FIRST_LABEL = 2**63 - 1

REDUCTIONS = ("mean", "sum", "none")

# Label types the kernels read directly; the other integer types that fit int64 are widened.
KERNEL_LABEL_TYPES = (torch.int64, torch.int32)
WIDENED_LABEL_TYPES = (torch.int8, torch.int16, torch.uint8, torch.uint16, torch.uint32)
LOGITS_TYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

POSITIVE_HYPERPARAMETERS = ("pos_lambda", "neg_lambda", "L", "tau")
LAMBDAS = ("pos_lambda", "neg_lambda")


# --- messages shared with csrc/checks.cpp -----------------------------------------------------


def shape_text(shape):
    """A shape as the C++ messages write it, [2, 30]. f-strings rather than str(), which Dynamo
    cannot trace on a list or an int: under torch.compile(fullgraph=True) the message would be
    lost to Dynamo's own error."""
    return "[" + ", ".join(f"{s}" for s in shape) + "]"


def rank_message(logits):
    return (
        "sigmoid_dr_loss: logits must have shape [N, A, C] (one group per image) or [M, C] "
        f"(one pooled group), got {shape_text(logits.shape)}"
    )


def logits_dtype_message(logits):
    return f"sigmoid_dr_loss: logits must be float32, float64, float16 or bfloat16, got {logits.dtype}"


def kernel_labels_dtype_message(labels):
    return f"sigmoid_dr_loss: labels must be an integer tensor (int64 or int32), got {labels.dtype}"


# Said when the labels' shape is logits' without their second-to-last dimension: logits laid out
# [N, C, A] (as a convolution head gives them before the reshape) or [C, M].
CLASS_DIMENSION_HINT = (
    "; the class dimension must be the last one of logits, and these look like [N, C, A] or "
    "[C, M]: pass logits.transpose(-1, -2)"
)


def labels_shape_message(logits, labels):
    transposed = tuple(labels.shape) == tuple(logits.shape[:-2]) + tuple(logits.shape[-1:])
    return (
        f"sigmoid_dr_loss: labels must have shape {shape_text(logits.shape[:-1])} (logits' shape "
        f"without the class dimension), got {shape_text(labels.shape)}"
        + (CLASS_DIMENSION_HINT if transposed else "")
    )


def device_message(logits, labels):
    return f"sigmoid_dr_loss: labels must be on the same device as logits ({logits.device}), got {labels.device}"


# --- arguments --------------------------------------------------------------------------------


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"sigmoid_dr_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_dense_tensor(name, value):
    """logits and labels: tensors with strided memory, which the kernels read (sparse, nested,
    quantized and MKL-DNN tensors would otherwise fail deep in the dispatcher)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"sigmoid_dr_loss: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.layout != torch.strided or value.is_nested or value.is_quantized:
        kind = "nested" if value.is_nested else "quantized" if value.is_quantized else str(value.layout)
        raise TypeError(f"sigmoid_dr_loss: {name} must be a dense tensor (torch.strided layout), got a {kind} tensor")


def number_text(value):
    """A number for a message: the shortest "%.<n>g" (n >= 6) that reads back as the same float,
    so that the message shows the value actually compared (1e-4 given as a float32 tensor is
    9.999999747378752e-05, below the bound 0.0001 that "%g" would print); message::piece in
    csrc/messages.h is its twin. Under torch.compile a traced (symbolic) number cannot be
    formatted, so the message leaves it out there; run the call eagerly to see it."""
    if torch.compiler.is_compiling():
        return "a value outside that range"
    if isinstance(value, int):
        return str(value)
    for digits in range(6, 18):
        text = f"{value:.{digits}g}"
        if value != value or float(text) == value:
            return text
    return text


def _check_not_vmapped(name, value):
    """A tensor hyperparameter batched by torch.func.vmap would fail in float() with torch's
    words about .item(); the op takes one number per call."""
    while torch._C._functorch.is_functorch_wrapped_tensor(value):
        if torch._C._functorch.is_batchedtensor(value):
            raise ValueError(
                f"sigmoid_dr_loss: {name} is batched by torch.func.vmap, but each hyperparameter is one "
                f"number per call: vmap over logits and labels only (in_dims None for {name})"
            )
        value = torch._C._functorch.get_unwrapped(value)


def _scalar_tensor(name, value, kind):
    """The checks of a hyperparameter given as a tensor: 0-dim, no grad."""
    _check_not_vmapped(name, value)
    if value.requires_grad:
        raise ValueError(
            f"sigmoid_dr_loss: {name} is a tensor that requires grad, but the loss is not "
            f"differentiated with respect to its hyperparameters: pass a number or {name}.detach()"
        )
    if value.dim() != 0:
        raise ValueError(f"sigmoid_dr_loss: {name} must be {kind} or a 0-dim tensor, got a tensor of shape {shape_text(value.shape)}")
    if value.is_meta:
        raise ValueError(f"sigmoid_dr_loss: {name} is a meta tensor, which holds no value: pass {kind} or a tensor with data")


def _array_scalar(value):
    """A 0-dim numpy array (anything with shape () and .item() that is not a tensor) stands for
    its one element, as a 0-dim tensor does."""
    if isinstance(value, (bool, int, float, torch.Tensor)):  # also what torch.compile traces
        return value
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    return value


def as_float_hyperparameter(name, value):
    """A real number (Python or numpy, a 0-dim array, or a 0-dim real tensor without grad) as a
    Python float."""
    if (
        isinstance(value, torch.Tensor)
        and value.dim() == 0
        and value.is_floating_point()
        and not (value.requires_grad or value.is_meta or torch._C._functorch.is_functorch_wrapped_tensor(value))
    ):
        return value.item()  # the common form, with nothing to refuse (a host sync for a CUDA tensor)
    value = _array_scalar(value)
    if isinstance(value, torch.Tensor):
        _scalar_tensor(name, value, "a real number")
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"sigmoid_dr_loss: {name} must be a real number, got a {value.dtype} tensor")
        return float(value)  # a host sync for a CUDA tensor
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.SymFloat, torch.SymInt)):
        raise TypeError(f"sigmoid_dr_loss: {name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:  # an integer or a fraction beyond the float range
        got = f"an integer of {value.bit_length()} bits" if isinstance(value, int) else f"a {type(value).__name__} beyond the float range"
        raise ValueError(f"sigmoid_dr_loss: {name} must be a finite number, got {got}") from None


def as_first_label(value):
    """first_label as a Python int: an int, a numpy integer, a 0-dim integer array or tensor. Floats,
    strings and bools are refused rather than rounded or reinterpreted."""
    value = _array_scalar(value)
    if isinstance(value, torch.Tensor):
        _scalar_tensor("first_label", value, "an integer")
        if value.dtype.is_floating_point or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"sigmoid_dr_loss: first_label must be an integer, got a {value.dtype} tensor")
        value = value.item()
    if isinstance(value, bool):
        raise TypeError("sigmoid_dr_loss: first_label must be an integer, got bool")
    try:
        index = operator.index(value)
    except TypeError:
        raise TypeError(f"sigmoid_dr_loss: first_label must be an integer, got {type(value).__name__} {value!r}") from None
    if index > MAX_FIRST_LABEL:  # does not fit the op's int64 (a negative one is the op's to refuse)
        check_first_label(index)
    return index


def check_first_label(first_label):
    if first_label < 0:
        raise ValueError(f"sigmoid_dr_loss: first_label must be >= 0 (negative labels mean 'ignore'), got {number_text(first_label)}")
    if first_label > MAX_FIRST_LABEL:
        raise ValueError(f"sigmoid_dr_loss: first_label must be <= 2**63 - 1 (labels are int64), got {number_text(first_label)}")


def check_hyperparameter_values(pos_lambda, neg_lambda, L, tau, margin, first_label):
    """The value checks of csrc/checks.cpp's check_hyperparameters, in the same order and words.
    (Comparisons rather than math.isfinite, which torch.compile cannot trace on a symbolic float;
    every comparison with NaN is false.)"""
    for name, value in zip(POSITIVE_HYPERPARAMETERS, (pos_lambda, neg_lambda, L, tau)):
        if not 0 < value < math.inf:
            raise ValueError(f"sigmoid_dr_loss: {name} must be a positive finite number, got {number_text(value)}")
        if name in LAMBDAS and value < MIN_LAMBDA:
            raise ValueError(
                f"sigmoid_dr_loss: {name} must be >= {MIN_LAMBDA_TEXT} (an exponent scale 1/{name} "
                f"above {MAX_SCALE_TEXT} makes the softmax a max to float32 precision), got {number_text(value)}"
            )
    check_first_label(first_label)
    if not -math.inf < margin < math.inf:
        raise ValueError(f"sigmoid_dr_loss: margin must be a finite number, got {number_text(margin)}")


def hyperparameter_forms(pos_lambda, neg_lambda, L, tau, margin, first_label):
    """The hyperparameters as the op takes them (five floats and an int), from any accepted form;
    their values are checked after the tensors (check_hyperparameter_values, or the op)."""
    return (
        pos_lambda if type(pos_lambda) is float else as_float_hyperparameter("pos_lambda", pos_lambda),
        neg_lambda if type(neg_lambda) is float else as_float_hyperparameter("neg_lambda", neg_lambda),
        L if type(L) is float else as_float_hyperparameter("L", L),
        tau if type(tau) is float else as_float_hyperparameter("tau", tau),
        margin if type(margin) is float else as_float_hyperparameter("margin", margin),
        first_label if type(first_label) is int and 0 <= first_label <= MAX_FIRST_LABEL else as_first_label(first_label),
    )


def hyperparameters(pos_lambda, neg_lambda, L, tau, margin, first_label):
    """Checks the hyperparameters and returns them as the op takes them: five floats and an int."""
    hyper = hyperparameter_forms(pos_lambda, neg_lambda, L, tau, margin, first_label)
    check_hyperparameter_values(*hyper)
    return hyper


def kernel_labels(labels):
    """Labels in a type the kernels read: int64/int32 as they are; int8, int16, uint8, uint16 and
    uint32 widened to int64 (every value fits). uint64 is refused: a value >= 2**63 would wrap to
    a negative int64, which means "ignore", so the conversion is left to the caller."""
    dtype = labels.dtype
    if dtype in KERNEL_LABEL_TYPES:
        return labels
    if dtype in WIDENED_LABEL_TYPES:
        return labels.long()
    if dtype == torch.uint64:
        raise RuntimeError(
            "sigmoid_dr_loss: labels of type torch.uint64 are not accepted: values >= 2**63 do not fit "
            "int64 (where a negative label means 'ignore'); convert them with labels.long() if every "
            "value is below 2**63"
        )
    raise RuntimeError(
        "sigmoid_dr_loss: labels must be an integer tensor (int64, int32, int16, int8, uint8, uint16 or "
        f"uint32), got {dtype}"
    )


def check_same_device(logits, labels):
    if labels.device != logits.device:
        raise RuntimeError(device_message(logits, labels))


def check_tensors(logits, labels):
    """The op's tensor checks in its order (rank, logits dtype, labels dtype, shape, device) for
    the public function and the reference, whose labels may be any integer type kernel_labels
    widens. Returns the labels as the kernels take them."""
    check_logits(logits)
    labels = kernel_labels(labels)
    check_labels(logits, labels)
    return labels


def check_logits_and_labels(logits, labels):
    """The rank, dtype, shape and device checks of the forward op (csrc/checks.cpp), with its
    RuntimeErrors, for calls traced by torch.compile and the pooled distributed path, which raise
    them in Python (the reference runs the same checks through check_tensors).
    Plain raises rather than torch._check: Dynamo breaks the graph at a torch._check with a
    message closure, and these properties are static (the shape comparison becomes a guard under
    dynamic shapes). Labels are expected to be kernel labels. Returns the number of groups."""
    check_logits(logits)
    check_labels(logits, labels)
    return logits.shape[0] if logits.dim() == 3 else 1


def check_logits(logits):
    if logits.dim() not in (2, 3):
        raise RuntimeError(rank_message(logits))
    if logits.dtype not in LOGITS_TYPES:
        raise RuntimeError(logits_dtype_message(logits))


def check_labels(logits, labels):
    """Kernel labels' dtype, then their shape and device against checked logits."""
    if labels.dtype not in KERNEL_LABEL_TYPES:
        raise RuntimeError(kernel_labels_dtype_message(labels))
    if labels.shape != logits.shape[:-1]:
        raise RuntimeError(labels_shape_message(logits, labels))
    check_same_device(logits, labels)


def accumulate_dtype(dtype):
    """float64 accumulates (and returns its loss) in float64, every other float in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduce_losses(losses, reduction):
    """Reduction over the per-group losses. The mean of no groups is defined as 0 (a batch with
    no image must not put NaN into a training step)."""
    if reduction == "none":
        return losses
    if reduction == "sum" or losses.numel() == 0:
        return losses.sum()
    return losses.mean()

"""The synthetic inputs every provider is checked and timed on."""

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Label mix (per anchor): 1% positive (class drawn uniformly), 2% ignored (label -1), the rest
# background (label C); first_label = 0. Close to a RetinaNet batch after anchor matching, where
# positives are rare and a thin IoU band is ignored.
POSITIVE_FRACTION = 0.01
IGNORED_FRACTION = 0.02


def make_inputs(N, A, C, dtype, device, generator):
    """Logits ~ N(0, 1) in `dtype` (a leaf that requires grad, as in training) and int64 labels
    with the mix above, both drawn on `device` from `generator`."""
    on = dict(device=device, generator=generator)
    logits = torch.randn(N, A, C, dtype=torch.float32, **on).to(dtype)
    u = torch.rand(N, A, **on)
    classes = torch.randint(0, C, (N, A), **on)
    labels = torch.full((N, A), C, dtype=torch.int64, device=device)
    labels = torch.where(u < POSITIVE_FRACTION, classes, labels)
    labels = torch.where((u >= POSITIVE_FRACTION) & (u < POSITIVE_FRACTION + IGNORED_FRACTION), -1, labels)
    return logits.requires_grad_(True), labels

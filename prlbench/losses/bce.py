"""The BCE part every loss shares: `bce` is MTReclib's multi-task loss, the mean of the
per-task BCE-with-logits of the two heads every model has, (BCE(ctr, click) + BCE(ctcvr,
conversion)) / 2. The pairwise losses (pwiser.py, ranknet.py, ...) add a weighted term to it.
The registry the losses are entered in: registry.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prlbench.losses.registry import register_loss

def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half / bfloat16 (autocast) logits, so sums stay accurate; float64 stays."""
    if not x.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {x.dtype}")
    return torch.promote_types(x.dtype, torch.float32)


def head_logit(outputs: dict, head: str) -> Tensor:
    """The logits [B] of one head ("ctr" or "ctcvr"), in the compute dtype."""
    if head not in outputs:
        raise ValueError(f"model outputs lack {head!r} (have: {', '.join(outputs)})")
    x = outputs[head]
    return x.to(compute_dtype(x))


def bce_loss(ctr_logit: Tensor, ctcvr_logit: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
    """(BCE(ctr, click) + BCE(ctcvr, conversion)) / 2, each a mean over the batch; a scalar.

    Inputs [B]; labels {0, 1} of any dtype. Computed in float32 (float64 for float64 logits).
    """
    ctr, ctcvr = ctr_logit.to(compute_dtype(ctr_logit)), ctcvr_logit.to(compute_dtype(ctcvr_logit))
    bce_ctr = F.binary_cross_entropy_with_logits(ctr, click.to(ctr.dtype))
    bce_ctcvr = F.binary_cross_entropy_with_logits(ctcvr, conversion.to(ctcvr.dtype))
    return (bce_ctr + bce_ctcvr) / 2


def outputs_bce(outputs: dict, click: Tensor, conversion: Tensor) -> Tensor:
    """`bce_loss` of a model's outputs dict (its "cvr", if any, is not trained directly)."""
    return bce_loss(head_logit(outputs, "ctr"), head_logit(outputs, "ctcvr"), click, conversion)


@register_loss(
    "bce",
    "mean of the per-task BCE of the ctr and ctcvr heads (MTReclib's choice); the baseline",
    params={},
    display_name="BCE",
)
def bce_objective(outputs: dict, click: Tensor, conversion: Tensor):
    """(BCE(ctr, click) + BCE(ctcvr, conversion)) / 2."""
    total = outputs_bce(outputs, click, conversion)
    return total, {"bce": total.detach()}

"""RankNet on the CTR head: the control that ranks clicks above non-clicks, ignoring conversions.

    RankNet = mean over (i clicked, k not clicked) of log(1 + exp(-(s_i - s_k)))

with s the CTR logit (option: its probability). If PWiseR beats `bce` but not `ranknet`, the gain
comes from pairwise ranking, not from treating conversion exposures as the sure positives.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from prlbench.losses.bce import Param, head_logit, outputs_bce, register_loss
from prlbench.losses.pwiser import REDUCTIONS, SCORES, check_choice, label_masks, pair_term, scores


def ranknet_loss(
    logits: Tensor, click: Tensor, *, score: str = "logit", reduction: str = "mean"
) -> Tensor:
    """The RankNet term alone, a scalar: softplus(-(s_i - s_k)) over (click, non-click) pairs.

    logits, click: [B]. Empty clicks or non-clicks -> exactly 0 (zero gradient, no NaN).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    s = scores(logits, score)  # [B]
    (clicked,) = label_masks(logits, click)
    # softplus(0 - (s_i - s_k)) is phi = logistic with margin 0: the PWiseR pair machinery.
    return pair_term(s[clicked], s[~clicked], 0.0, F.softplus, reduction)


@register_loss(
    "ranknet",
    "bce + lambda * RankNet over (click, non-click) pairs of the CTR head; ignores conversions",
    params={"lam": Param(0.5, "--lambda"), "score": Param("logit", "--score", SCORES)},
    display_name="RankNet",
)
def ranknet_objective(outputs: dict, click: Tensor, conversion: Tensor, *, lam, score):
    """bce + lam * RankNet on the ctr head."""
    base = outputs_bce(outputs, click, conversion)
    term = ranknet_loss(head_logit(outputs, "ctr"), click, score=score)
    total = base + lam * term if lam > 0 else base
    return total, {"bce": base.detach(), "ranknet": term.detach()}

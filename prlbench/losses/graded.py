"""The pairwise logistic loss over graded labels: PWiseR's three pair families, a logistic
instead of a margin. The closest published analogue of PWiseR (Alibaba EasyRec's pairwise
logistic loss with graded labels).

Grade every impression g = 0 (no click), 1 (click only) or 2 (click and conversion), and on the
CTR logit s take the mean over every in-batch pair with g_i > g_j:

    graded = mean over {(i, j): g_i > g_j} of softplus(-(s_i - s_j) / T)

The pairs are (2, 1) and (2, 0), PWiseR's two families, plus (1, 0), the clicks above the
non-clicks that RankNet ranks. All three share one mean, so a batch weighs each family by its
number of pairs. No pair (every impression the same grade) gives exactly 0. Computed as two
logistic pair sums (clicks x non-clicks, conversions x click-only), which together hold every
pair once, without the pair matrix in memory (pairs.logistic_pair_sum).
"""

from __future__ import annotations

from torch import Tensor

from prlbench.losses.bce import head_logit, outputs_bce
from prlbench.losses.registry import Param, register_loss, single
from prlbench.losses.pairs import logistic_pair_sum
from prlbench.losses.pwiser import label_masks, scores


def graded_loss(logits: Tensor, click: Tensor, conversion: Tensor, *,
                temperature: float = 1.0) -> Tensor:
    """The graded pairwise term alone (no BCE, no lambda), a scalar, on logits [B].

    Labels {0, 1} (thresholded at 0.5; a conversion without a click is grade 0). temperature
    T > 0 divides every logit difference. Half / bfloat16 logits are computed in float32.
    """
    t = float(temperature)
    if not t > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    s = scores(logits, "logit") / t  # [B]
    clicked, converted = label_masks(logits, click, conversion)
    converted = clicked & converted
    # clicks (grades 1, 2) over non-clicks (0), then conversions (2) over click-only (1)
    families = ((s[clicked], s[~clicked]), (s[converted], s[clicked & ~converted]))
    total = sum(logistic_pair_sum(pos, neg) for pos, neg in families)
    pairs = sum(pos.numel() * neg.numel() for pos, neg in families)
    return total / max(pairs, 1)


def _note(settings: dict) -> str:
    t = single(settings, "temperature")
    return ("grades no click < click only < click and conversion, every pair of different "
            "grades on the CTR logit: EasyRec's pairwise logistic" +
            (", T=1 as published" if t == 1 else ""))


@register_loss(
    "graded",
    "bce + lambda * pairwise logistic over grades 0 / 1 / 2 (no click / click / conversion) on "
    "the CTR logit; PWiseR's pairs plus click > no click (EasyRec)",
    params={"lam": Param(0.5, "--lambda"),
            "temperature": Param(1.0, "--temperature", low_open=True)},
    display_name="Graded",
    note=_note,
)
def graded_objective(outputs: dict, click: Tensor, conversion: Tensor, *, lam, temperature):
    """bce + lam * graded pairwise logistic on the ctr head."""
    base = outputs_bce(outputs, click, conversion)
    term = graded_loss(head_logit(outputs, "ctr"), click, conversion, temperature=temperature)
    total = base + lam * term if lam > 0 else base
    return total, {"bce": base.detach(), "graded": term.detach()}

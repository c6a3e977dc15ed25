"""PWiseR, the pairwise ranking loss of Durmus et al. (arXiv 2406.02163), as this project reads it.

Inside a batch, split impressions into P (click 1, conversion 1), C (click 1, conversion 0) and
U (click 0), and rank every P above every C by a margin m1 and above every U by a margin m2:

    PWiseR = mean_{i in P, j in C} phi(m1 - (s_i - s_j))
           + mean_{i in P, k in U} phi(m2 - (s_i - s_k))

This is the "pairs" reading (norm "pairs", the default): each term is the mean over its pairs.
The only written formula of the paper (an AI-written summary of it) reads each term as the sum
over conversions, averaged over the other group (norm "paper"):

    term 1 = (1 / |C|) sum_{j in C} sum_{i in P} phi(m1 - (s_i - s_j))    (term 2: U, m2)

which is |P| times the pairs reading: with a handful of conversions per batch it acts like a
lambda that moves with the batch. A term whose pair set is empty is exactly 0 (and its gradient
0). The margins and lambda are unpublished: the defaults here are this project's choice.

With ~0.1 % conversions a batch of 2048 holds ~2 P samples, so the subsets are indexed first
and only |P| x |C| and |P| x |U| pairs are formed by broadcasting, never a B x B matrix.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from prlbench.losses.bce import compute_dtype, head_logit, outputs_bce
from prlbench.losses.registry import Param, register_loss


def _squared_hinge(x: Tensor) -> Tensor:
    return torch.relu(x).square()


PHIS: dict[str, Callable[[Tensor], Tensor]] = {
    "squared_hinge": _squared_hinge,  # max(0, x)^2
    "hinge": torch.relu,  # max(0, x)
    "logistic": F.softplus,  # log(1 + e^x), stable for large |x|
}
SCORES = ("prob", "logit")
HEADS = ("ctr", "ctcvr", "both")
NORMS = ("pairs", "paper", "sum")  # divide by the pairs, by the other group, or not at all


def pwiser_loss(
    logits: Tensor,
    click: Tensor,
    conversion: Tensor,
    *,
    m1: float = 0.05,
    m2: float = 0.1,
    phi: str = "squared_hinge",
    score: str = "prob",
    norm: str = "pairs",
) -> Tensor:
    """The PWiseR term alone (no BCE, no lambda), a scalar.

    logits, click, conversion: [B]; labels {0, 1} (thresholded at 0.5; a conversion without a
    click counts as U). score "prob" ranks sigmoid(logits), "logit" the logits. norm "pairs"
    divides each term's pair sum by its number of pairs, "paper" by the size of the other group
    (|C|, |U|), "sum" by nothing. Half / bfloat16 logits are computed in float32 and give a
    float32 result; float64 stays float64 (gradcheck).
    """
    check_choice("phi", phi, PHIS)
    check_choice("norm", norm, NORMS)
    m1, m2 = check_margin("m1", m1), check_margin("m2", m2)
    s = scores(logits, score)  # [B]
    clicked, converted = label_masks(logits, click, conversion)
    s_p = s[clicked & converted]  # [|P|]
    s_c = s[clicked & ~converted]  # [|C|]
    s_u = s[~clicked]  # [|U|]
    phi_fn = PHIS[phi]
    return pair_term(s_p, s_c, m1, phi_fn, norm) + pair_term(s_p, s_u, m2, phi_fn, norm)


def pair_term(
    pos: Tensor, neg: Tensor, margin: float, phi: Callable[[Tensor], Tensor], norm: str
) -> Tensor:
    """The sum of phi(margin - (pos_i - neg_k)) over all pairs, divided as `norm` says: by the
    pairs ("pairs"), by n_neg ("paper") or not at all ("sum"); pos [n_pos], neg [n_neg].

    |P| is a handful, so the [n_pos, n_neg] matrix is small. An empty pos or neg gives the sum
    of an empty tensor: exactly 0, still in the autograd graph (zero gradient), and NaN-free
    whatever the other scores are.
    """
    # margin - (pos_i - neg_k), with the margin added to the short vector: one pass fewer.
    losses = phi((neg + margin)[None, :] - pos[:, None])  # [n_pos, n_neg]
    total = losses.sum()
    divisor = {"pairs": losses.numel(), "paper": neg.numel(), "sum": 1}[norm]
    return total / max(divisor, 1)


def scores(logits: Tensor, score: str) -> Tensor:
    """The ranked scores [B]: sigmoid(logits) ("prob") or the logits ("logit"), float32 or wider."""
    check_choice("score", score, SCORES)
    x = logits.to(compute_dtype(logits))
    return torch.sigmoid(x) if score == "prob" else x


def label_masks(logits: Tensor, click: Tensor, *more: Tensor) -> tuple[Tensor, ...]:
    """Boolean masks [B] (label > 0.5) of click and the other labels, checked against logits."""
    out = []
    for name, y in zip(("click", "conversion"), (click, *more)):
        if y.shape != logits.shape:
            raise ValueError(f"{name} has shape {tuple(y.shape)}, logits {tuple(logits.shape)}")
        out.append(y > 0.5)
    return tuple(out)


def check_choice(option: str, value: object, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {option} {value!r}; valid values: {', '.join(valid)}")


def check_margin(option: str, value: float) -> float:
    m = float(value)
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"margin {option} must be a finite number >= 0, got {value!r}")
    return m


def _note(settings: dict) -> str:
    readings = {"pairs": "norm=pairs: each term the mean over its pairs",
                "paper": "norm=paper: the paper's written formula, each term summed over "
                         "conversions and averaged over the other group"}
    shown = [readings[v] for v in settings.get("norm", ["pairs"]) if v in readings]
    return (f"{'; '.join(shown)}; margins and λ are this project's choice, as the paper "
            "publishes none")


@register_loss(
    "pwiser",
    "bce + lambda * PWiseR: conversions ranked above click-only (margin m1) and non-clicks (m2)",
    params={
        "lam": Param(0.5, "--lambda"),
        "m1": Param(0.05, "--m1"),
        "m2": Param(0.1, "--m2"),
        "phi": Param("squared_hinge", "--phi", tuple(PHIS)),
        "score": Param("prob", "--score", SCORES),
        "head": Param("ctr", "--head", HEADS),
        "norm": Param("pairs", "--norm", NORMS[:2], added_later=True),
    },
    display_name="PWiseR",
    note=_note,
)
def pwiser_objective(
    outputs: dict, click: Tensor, conversion: Tensor, *, lam, m1, m2, phi, score, head, norm
):
    """bce + lam * PWiseR on the ctr head, the ctcvr head, or both (the sum of the two terms)."""
    base = outputs_bce(outputs, click, conversion)
    heads = ("ctr", "ctcvr") if head == "both" else (head,)
    opts = dict(m1=m1, m2=m2, phi=phi, score=score, norm=norm)
    term = sum(pwiser_loss(head_logit(outputs, h), click, conversion, **opts) for h in heads)
    # lam 0 is exactly bce (even were the term not finite), so it is a clean control arm.
    total = base + lam * term if lam > 0 else base
    return total, {"bce": base.detach(), "pwiser": term.detach()}

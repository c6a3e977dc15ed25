"""RankNet: each head ranks its own positives above its own negatives, ignoring the other label.

    RankNet(head) = mean over (i positive, k negative) of log(1 + exp(-(s_i - s_k)))

with s the head's logit (option: its probability). The CTR head's positives are the clicks and
its negatives the non-clicks; the CTCVR head's are the conversions and the rest.

- head ctr (default): the control. It ranks clicks above non-clicks and never looks at a
  conversion: if PWiseR beats `bce` but not this, the gain comes from pairwise ranking, not from
  treating conversion exposures as the sure positives.
- head both: the mean of the two heads' terms. With lambda 3/7 this is the Combined-Pair loss
  of Lin et al. (KDD 2024, "Understanding the ranking loss for recommendation with sparse user
  feedback"): per task 0.7 BCE + 0.3 RankNet, which is 0.7 x (BCE + 3/7 RankNet), and the factor
  0.7 does not change what Adam does beyond its epsilon.

Every pair is evaluated without the pair matrix in memory (pairs.logistic_pair_sum).
"""

from __future__ import annotations

from torch import Tensor

from prlbench.losses.bce import head_logit, outputs_bce
from prlbench.losses.registry import Param, register_loss, single
from prlbench.losses.pairs import logistic_pair_sum
from prlbench.losses.pwiser import HEADS, SCORES, check_choice, label_masks, scores

REDUCTIONS = ("mean", "sum")  # of ranknet_loss: the mean over the pairs, or their sum



def ranknet_loss(
    logits: Tensor, labels: Tensor, *, score: str = "logit", reduction: str = "mean"
) -> Tensor:
    """The RankNet term alone, a scalar: softplus(-(s_i - s_k)) over (positive, negative) pairs.

    logits, labels: [B]; labels {0, 1} (thresholded at 0.5). reduction "mean" over the pairs, or
    "sum". No positives or no negatives -> exactly 0 (zero gradient, no NaN).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    s = scores(logits, score)  # [B]
    (positive,) = label_masks(logits, labels)
    pos, neg = s[positive], s[~positive]
    total = logistic_pair_sum(pos, neg)  # sum of softplus(s_k - s_i)
    if reduction == "sum":
        return total
    return total / max(pos.numel() * neg.numel(), 1)


def _note(settings: dict) -> str:
    head, lam = single(settings, "head") or "ctr", single(settings, "lam")
    if head == "ctr":
        return "clicks ranked above non-clicks, conversions ignored: the pairwise control"
    if head == "both" and lam is not None and abs(lam - 3 / 7) < 5e-4:
        return ("head both with λ=3/7: the Combined-Pair loss of Lin et al., KDD 2024, "
                "0.7 BCE + 0.3 RankNet per task, up to the factor 0.7")
    return "each head's positives ranked above its negatives" + (
        ", the mean of the two heads" if head == "both" else "")


@register_loss(
    "ranknet",
    "bce + lambda * RankNet: each head's positives above its negatives (ctr: clicks over "
    "non-clicks, the control); head both with lambda 3/7 is Combined-Pair (Lin et al. 2024)",
    params={"lam": Param(0.5, "--lambda"), "score": Param("logit", "--score", SCORES),
            "head": Param("ctr", "--head", HEADS, added_later=True)},
    display_name="RankNet",
    note=_note,
)
def ranknet_objective(outputs: dict, click: Tensor, conversion: Tensor, *, lam, score, head):
    """bce + lam * RankNet on the ctr head, the ctcvr head, or the mean of both."""
    base = outputs_bce(outputs, click, conversion)
    labels = {"ctr": click, "ctcvr": conversion}
    heads = ("ctr", "ctcvr") if head == "both" else (head,)
    term = sum(ranknet_loss(head_logit(outputs, h), labels[h], score=score) for h in heads)
    term = term / len(heads)
    total = base + lam * term if lam > 0 else base
    return total, {"bce": base.detach(), "ranknet": term.detach()}

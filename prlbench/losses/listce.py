"""ListCE, the listwise term of regression-compatible ranking (Bai et al., WWW 2023), with the
batch as the list. Per head, on the logits s and the head's binary labels y:

    listce = mean over positives i of -log( sigmoid(s_i) / sum over the batch of sigmoid(s_j) )

and the objective is alpha * bce + (1 - alpha) * (listce(ctr, click) + listce(ctcvr,
conversion)) / 2, the per-task mix of the paper averaged over the two tasks like `bce`. The
published alpha is 0.9, which is bce + lambda * listce with lambda = (1 - alpha) / alpha = 1/9
(about 0.111), all scaled by 0.9. Because it normalises sigmoids, not exps, the term keeps the
predictions calibrated (the "regression compatible" point of the paper); it is not invariant
to a shift of all logits, unlike RankNet. With the binary labels here, the paper's label
weights y_i / sum y are 1 / (number of positives). A head without positives adds exactly 0.

    -log(sigmoid(s_i) / sum_j sigmoid(s_j)) = -logsigmoid(s_i) + logsumexp_j(logsigmoid(s_j))

so the term costs O(B): no pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prlbench.losses.bce import head_logit, outputs_bce
from prlbench.losses.registry import Param, register_loss, single
from prlbench.losses.pwiser import label_masks, scores


def listce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The ListCE term of one head alone, a scalar; logits, labels [B], labels {0, 1}.

    No positive in the batch -> exactly 0 (zero gradient). Half / bfloat16 logits are computed
    in float32.
    """
    s = scores(logits, "logit")
    (positive,) = label_masks(logits, labels)
    log_p = F.logsigmoid(s)  # [B]
    pos = log_p[positive]
    if pos.numel() == 0:
        return log_p.sum() * 0  # in the graph, zero gradient, whatever the logits
    return torch.logsumexp(log_p, 0) - pos.mean()


def _note(settings: dict) -> str:
    alpha = single(settings, "alpha")
    text = "each head's positives against the batch's summed sigmoids, Bai et al., WWW 2023"
    if alpha is not None and 0 < alpha < 1:
        text += (f"; α={alpha:g} is BCE + {(1 - alpha) / alpha:.3g} × ListCE scaled by "
                 f"{alpha:g}" + (", the published α" if alpha == 0.9 else ""))
    return text


@register_loss(
    "listce",
    "alpha * bce + (1 - alpha) * ListCE: each head's positives against the batch's summed "
    "sigmoids (Bai et al. 2023; alpha 0.9 = bce + 1/9 ListCE, scaled)",
    params={"alpha": Param(0.9, "--alpha", high=1.0)},
    display_name="ListCE",
    note=_note,
)
def listce_objective(outputs: dict, click: Tensor, conversion: Tensor, *, alpha):
    """alpha * bce + (1 - alpha) * the mean of the two heads' ListCE terms."""
    base = outputs_bce(outputs, click, conversion)
    term = (listce_loss(head_logit(outputs, "ctr"), click)
            + listce_loss(head_logit(outputs, "ctcvr"), conversion)) / 2
    total = alpha * base + (1 - alpha) * term if alpha < 1 else base
    return total, {"bce": base.detach(), "listce": term.detach()}

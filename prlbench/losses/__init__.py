"""Losses as pure functions of logits and labels, and the `LOSSES` registry.

    from prlbench.losses import pwiser_loss
    loss = bce + lam * pwiser_loss(ctr_logit, click, conversion, m1=0.05, m2=0.1)

Registered losses (`LOSSES.get(name)(outputs, click, conversion, **params) -> (total, parts)`):
bce, pwiser, ranknet. `loss_params(name)` gives their defaults, `LOSS_SUMMARIES` one line each,
`loss_info(name)` everything registered with one (its display name, summary and parameters).
"""

from prlbench.losses.bce import (
    LOSS_SUMMARIES,
    LOSSES,
    LossInfo,
    Param,
    bce_loss,
    loss_info,
    loss_param_specs,
    loss_params,
    resolve_params,
)
from prlbench.losses.pwiser import HEADS, PHIS, REDUCTIONS, SCORES, pwiser_loss
from prlbench.losses.ranknet import ranknet_loss

__all__ = [
    "HEADS",
    "LOSSES",
    "LOSS_SUMMARIES",
    "LossInfo",
    "PHIS",
    "Param",
    "REDUCTIONS",
    "SCORES",
    "bce_loss",
    "loss_info",
    "loss_param_specs",
    "loss_params",
    "pwiser_loss",
    "ranknet_loss",
    "resolve_params",
]

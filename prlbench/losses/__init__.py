"""Losses as pure functions of logits and labels, and the `LOSSES` registry.

    from prlbench.losses import pwiser_loss
    loss = bce + lam * pwiser_loss(ctr_logit, click, conversion, m1=0.05, m2=0.1)

Registered losses (`LOSSES.get(name)(outputs, click, conversion, **params) -> (total, parts)`):
bce, pwiser, graded, ranknet, listce. `loss_params(name)` gives their defaults, `loss_info(name)`
everything registered with one (its display name, one-line summary and parameters).
"""

from prlbench.losses.registry import (
    LOSSES,
    LossInfo,
    all_params,
    Param,
    loss_info,
    loss_param_specs,
    loss_params,
    resolve_params,
    takes,
)
from prlbench.losses.bce import bce_loss
from prlbench.losses.pwiser import HEADS, NORMS, PHIS, SCORES, pwiser_loss
from prlbench.losses.graded import graded_loss  # imported in listing order
from prlbench.losses.ranknet import ranknet_loss
from prlbench.losses.listce import listce_loss
from prlbench.losses.pairs import logistic_pair_sum

__all__ = [
    "HEADS",
    "LOSSES",
    "LossInfo",
    "all_params",
    "NORMS",
    "PHIS",
    "Param",
    "SCORES",
    "bce_loss",
    "graded_loss",
    "listce_loss",
    "logistic_pair_sum",
    "loss_info",
    "loss_param_specs",
    "loss_params",
    "pwiser_loss",
    "ranknet_loss",
    "resolve_params",
    "takes",
]

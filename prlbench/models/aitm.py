"""AITM: Adaptive Information Transfer Multi-task model.

Xi et al., "Modeling the Sequential Dependence among Audience Multi-step Conversions with
Multi-task Learning in Targeted Display Advertising", KDD 2021. Impression -> click -> conversion
is a sequence, so the click tower's representation is transferred forward to the conversion tower
(click -> conversion, never back: torch-rechub's fault), where an attention unit weighs it
against the conversion tower's own representation. A behavioural-expectation calibrator
penalises P(conversion) > P(click): aux_loss = weight * mean(max(0, p_ctcvr - p_ctr)). The model
returns the per-row terms weight * max(0, p_ctcvr - p_ctr) as "aux_loss" [B]; the loss adds their
mean over the batch's rows.
Structure as in MTReclib: shared embedding, a tower (bottom MLP) per task, transfer and attention
on the towers' outputs, then a head MLP per task.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .factory import MODELS
from .layers import MLP, FeatureEmbedding, MultiTaskModel, Tower


class InfoTransferAttention(nn.Module):
    """The AIT unit: attention over {transferred p, own q}: two [B, h] -> [B, h]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.value, self.key, self.query = (nn.Linear(dim, dim), nn.Linear(dim, dim),
                                            nn.Linear(dim, dim))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, transferred: Tensor, own: Tensor) -> Tensor:
        u = torch.stack([transferred, own], dim=1)  # [B, 2, h]
        score = (self.key(u) * self.query(u)).sum(-1, keepdim=True) * self.scale  # [B, 2, 1]
        return (torch.softmax(score, dim=1) * self.value(u)).sum(1)  # [B, h]


@MODELS.register("aitm")
class AITM(MultiTaskModel):
    display_name = "AITM"
    summary = "click tower transfers to the conversion tower via attention; calibrator loss"
    output_towers = {"ctr": "click_head", "ctcvr": "conversion_head"}
    # The modules on the conversion side: nothing here may influence the ctr output.
    conversion_side = ("conversion_tower", "transfer", "attention", "conversion_head")

    def __init__(
        self, vocab_sizes: Sequence[int], num_numerical: int, *, embed_dim: int,
        bottom_dims: Sequence[int], tower_dims: Sequence[int], dropout: float,
        calibrator_weight: float,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(vocab_sizes, num_numerical, embed_dim)
        in_dim = self.embedding.output_dim
        self.click_tower = MLP(in_dim, bottom_dims, dropout)
        self.conversion_tower = MLP(in_dim, bottom_dims, dropout)
        hidden = self.click_tower.output_dim
        self.transfer = nn.Linear(hidden, hidden)  # g(.): what the click task passes on
        self.attention = InfoTransferAttention(hidden)
        self.click_head = Tower(hidden, tower_dims, dropout)
        self.conversion_head = Tower(hidden, tower_dims, dropout)
        self.calibrator_weight = calibrator_weight

    def forward(self, categorical: Tensor, numerical: Tensor) -> dict[str, Tensor]:
        x = self.embedding(categorical, numerical).flatten(1)  # [B, F * d]
        click = self.click_tower(x)  # [B, h]
        conversion = self.attention(self.transfer(click), self.conversion_tower(x))  # [B, h]
        ctr = self.click_head(click)  # [B]
        ctcvr = self.conversion_head(conversion)  # [B], P(click and conversion)
        excess = torch.relu(torch.sigmoid(ctcvr) - torch.sigmoid(ctr))  # [B]
        return {"ctr": ctr, "ctcvr": ctcvr, "aux_loss": self.calibrator_weight * excess}

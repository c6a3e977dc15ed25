"""Shared bottom: one embedding and bottom MLP shared by both tasks, then a tower per task.

Hard parameter sharing (Caruana, "Multitask Learning", Machine Learning 1997), the baseline of
Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018 (MTReclib's `sharedbottom`).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .factory import MODELS
from .layers import MLP, FeatureEmbedding, MultiTaskModel, Tower


@MODELS.register("shared_bottom")
class SharedBottom(MultiTaskModel):
    display_name = "Shared-Bottom"
    summary = "shared embedding and bottom MLP, one tower per task (hard sharing)"
    output_towers = {"ctr": "ctr_tower", "ctcvr": "ctcvr_tower"}

    def __init__(
        self, vocab_sizes: Sequence[int], num_numerical: int, *, embed_dim: int,
        bottom_dims: Sequence[int], tower_dims: Sequence[int], dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(vocab_sizes, num_numerical, embed_dim)
        self.bottom = MLP(self.embedding.output_dim, bottom_dims, dropout)
        self.ctr_tower = Tower(self.bottom.output_dim, tower_dims, dropout)
        self.ctcvr_tower = Tower(self.bottom.output_dim, tower_dims, dropout)

    def forward(self, categorical: Tensor, numerical: Tensor) -> dict[str, Tensor]:
        x = self.embedding(categorical, numerical).flatten(1)  # [B, F * d]
        h = self.bottom(x)  # [B, bottom_dims[-1]]
        return {"ctr": self.ctr_tower(h), "ctcvr": self.ctcvr_tower(h)}  # [B] each

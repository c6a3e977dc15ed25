"""OMoE: one-gate mixture of experts shared by both tasks.

Jacobs et al., "Adaptive Mixtures of Local Experts", Neural Computation 1991, as the multi-task
baseline of Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018 (MTReclib's `omoe`): experts -> one gate -> one mixture that both
towers read.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .factory import MODELS
from .layers import ExpertBank, FeatureEmbedding, Gate, MultiTaskModel, Tower


@MODELS.register("omoe")
class OMoE(MultiTaskModel):
    display_name = "OMoE"
    summary = "mixture of experts with one gate shared by both tasks, one tower per task"
    output_towers = {"ctr": "ctr_tower", "ctcvr": "ctcvr_tower"}

    def __init__(
        self, vocab_sizes: Sequence[int], num_numerical: int, *, embed_dim: int,
        bottom_dims: Sequence[int], tower_dims: Sequence[int], num_experts: int, dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(vocab_sizes, num_numerical, embed_dim)
        in_dim = self.embedding.output_dim
        self.experts = ExpertBank(in_dim, bottom_dims, num_experts, dropout)
        self.gate = Gate(in_dim, num_experts)
        self.ctr_tower = Tower(self.experts.output_dim, tower_dims, dropout)
        self.ctcvr_tower = Tower(self.experts.output_dim, tower_dims, dropout)

    def forward(self, categorical: Tensor, numerical: Tensor) -> dict[str, Tensor]:
        x = self.embedding(categorical, numerical).flatten(1)  # [B, F * d]
        h = Gate.mix(self.gate(x), self.experts(x))  # [B, E] x [B, E, h] -> [B, h]
        return {"ctr": self.ctr_tower(h), "ctcvr": self.ctcvr_tower(h)}  # [B] each

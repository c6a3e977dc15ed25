"""MMoE: multi-gate mixture of experts.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018 (MTReclib's `mmoe`): shared experts, one softmax gate per task, so each task mixes the
experts in its own proportions; then one tower per task.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .factory import MODELS
from .layers import ExpertBank, FeatureEmbedding, Gate, MultiTaskModel, Tower

TASKS = ("ctr", "ctcvr")


@MODELS.register("mmoe")
class MMoE(MultiTaskModel):
    display_name = "MMoE"
    summary = "mixture of experts with one gate per task, one tower per task"
    output_towers = {"ctr": "towers.ctr", "ctcvr": "towers.ctcvr"}

    def __init__(
        self, vocab_sizes: Sequence[int], num_numerical: int, *, embed_dim: int,
        bottom_dims: Sequence[int], tower_dims: Sequence[int], num_experts: int, dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(vocab_sizes, num_numerical, embed_dim)
        in_dim = self.embedding.output_dim
        self.experts = ExpertBank(in_dim, bottom_dims, num_experts, dropout)
        self.gates = nn.ModuleDict({t: Gate(in_dim, num_experts) for t in TASKS})
        self.towers = nn.ModuleDict({t: Tower(self.experts.output_dim, tower_dims, dropout)
                                     for t in TASKS})

    def forward(self, categorical: Tensor, numerical: Tensor) -> dict[str, Tensor]:
        x = self.embedding(categorical, numerical).flatten(1)  # [B, F * d]
        experts = self.experts(x)  # [B, E, h], all experts in one batched pass
        out = {}
        for task in TASKS:
            mixed = Gate.mix(self.gates[task](x), experts)  # [B, E] x [B, E, h] -> [B, h]
            out[task] = self.towers[task](mixed)  # [B]
        return out

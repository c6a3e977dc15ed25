"""Single task: two fully separate networks, one per task (no sharing at all).

The baseline every multi-task model must beat (Caruana, "Multitask Learning", Machine Learning
1997; MTReclib's `singletask`). Each task has its own embedding, bottom MLP and tower, so the
ctcvr network learns from its own (very sparse) labels only.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .factory import MODELS
from .layers import MLP, FeatureEmbedding, MultiTaskModel, Tower


class _TaskNetwork(nn.Module):
    """embedding -> bottom MLP -> tower: [B, F_cat], [B, F_num] -> logit [B]."""

    def __init__(
        self, vocab_sizes: Sequence[int], num_numerical: int, embed_dim: int,
        bottom_dims: Sequence[int], tower_dims: Sequence[int], dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(vocab_sizes, num_numerical, embed_dim)
        self.bottom = MLP(self.embedding.output_dim, bottom_dims, dropout)
        self.tower = Tower(self.bottom.output_dim, tower_dims, dropout)

    def forward(self, categorical: Tensor, numerical: Tensor) -> Tensor:
        x = self.embedding(categorical, numerical).flatten(1)  # [B, F * d]
        return self.tower(self.bottom(x))  # [B]


@MODELS.register("single_task")
class SingleTask(MultiTaskModel):
    display_name = "Single-task"
    summary = "two separate networks (embedding, bottom, tower), one per task"
    output_towers = {"ctr": "ctr_net.tower", "ctcvr": "ctcvr_net.tower"}

    def __init__(
        self, vocab_sizes: Sequence[int], num_numerical: int, *, embed_dim: int,
        bottom_dims: Sequence[int], tower_dims: Sequence[int], dropout: float,
    ) -> None:
        super().__init__()
        args = (vocab_sizes, num_numerical, embed_dim, bottom_dims, tower_dims, dropout)
        self.ctr_net = _TaskNetwork(*args)
        self.ctcvr_net = _TaskNetwork(*args)

    def forward(self, categorical: Tensor, numerical: Tensor) -> dict[str, Tensor]:
        return {
            "ctr": self.ctr_net(categorical, numerical),  # [B]
            "ctcvr": self.ctcvr_net(categorical, numerical),  # [B]
        }

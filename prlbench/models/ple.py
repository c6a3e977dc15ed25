"""PLE: Progressive Layered Extraction.

Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", RecSys 2020. Each extraction level has shared experts and
task-specific experts; a task's gate mixes the shared experts with its own, and (below the top
level) a shared gate mixes all of them into the next level's shared input. As in MTReclib each
width of `bottom_dims` is one level of one-layer experts (paper preset: 512 then 256).
Every gate is a registered submodule (MTReclib kept them in plain lists, so they never trained).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .factory import MODELS
from .layers import ExpertBank, FeatureEmbedding, Gate, MultiTaskModel, Tower

TASKS = ("ctr", "ctcvr")


class _ExtractionLevel(nn.Module):
    """One level. Experts are ordered [shared (S) | task 0 (K) | task 1 (K)] in one bank."""

    def __init__(self, in_dim: int, width: int, shared: int, per_task: int, dropout: float,
                 first: bool, top: bool) -> None:
        super().__init__()
        self.first = first
        num = shared + len(TASKS) * per_task
        self.experts = ExpertBank(in_dim, [width], num, dropout)
        self.task_gates = nn.ModuleList(Gate(in_dim, shared + per_task) for _ in TASKS)
        # The top level has no shared output, so no shared gate (it would get no gradient).
        self.shared_gate = None if top else Gate(in_dim, num)
        # Which input each expert reads (0 = shared, 1 + t = task t) and which experts task t mixes.
        groups = [0] * shared + [1 + t for t in range(len(TASKS)) for _ in range(per_task)]
        self.register_buffer("groups", torch.tensor(groups), persistent=False)
        for t in range(len(TASKS)):
            own = range(shared + t * per_task, shared + (t + 1) * per_task)
            self.register_buffer(f"select_{t}", torch.tensor([*range(shared), *own]),
                                 persistent=False)

    def forward(self, shared: Tensor, tasks: list[Tensor]) -> tuple[Tensor | None, list[Tensor]]:
        if self.first:  # every expert reads the embedding: the shared-input fast path
            out = self.experts(shared)  # [B, E, w]
        else:
            inputs = torch.stack([shared, *tasks], dim=1)  # [B, 1 + T, in]
            out = self.experts(inputs[:, self.groups])  # [B, E, in] -> [B, E, w]
        new_tasks = [
            Gate.mix(gate(x), out[:, getattr(self, f"select_{t}")])  # [B, S + K] x [B, S + K, w]
            for t, (gate, x) in enumerate(zip(self.task_gates, tasks))
        ]
        new_shared = None if self.shared_gate is None else Gate.mix(self.shared_gate(shared), out)
        return new_shared, new_tasks  # [B, w], T x [B, w]


@MODELS.register("ple")
class PLE(MultiTaskModel):
    display_name = "PLE"
    summary = "progressive layered extraction: shared + task-specific experts per level"
    output_towers = {"ctr": "towers.ctr", "ctcvr": "towers.ctcvr"}

    def __init__(
        self, vocab_sizes: Sequence[int], num_numerical: int, *, embed_dim: int,
        bottom_dims: Sequence[int], tower_dims: Sequence[int], shared_experts: int,
        task_experts: int, dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(vocab_sizes, num_numerical, embed_dim)
        widths = [self.embedding.output_dim, *bottom_dims]
        self.levels = nn.ModuleList(
            _ExtractionLevel(widths[i], widths[i + 1], shared_experts, task_experts, dropout,
                             first=i == 0, top=i == len(bottom_dims) - 1)
            for i in range(len(bottom_dims))
        )
        self.towers = nn.ModuleDict({t: Tower(widths[-1], tower_dims, dropout) for t in TASKS})

    def forward(self, categorical: Tensor, numerical: Tensor) -> dict[str, Tensor]:
        x = self.embedding(categorical, numerical).flatten(1)  # [B, F * d]
        shared, tasks = x, [x] * len(TASKS)
        for level in self.levels:
            shared, tasks = level(shared, tasks)  # [B, w_l], T x [B, w_l]
        return {t: self.towers[t](h) for t, h in zip(TASKS, tasks)}  # [B] each

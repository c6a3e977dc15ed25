"""MetaHeac: Meta Hybrid Experts and Critics (forward structure).

Zhu et al., "Learning to Expand Audience via Meta Hybrid Experts and Critics for Recommendation
and Advertising", KDD 2021. Shared experts and shared critics; a learned task embedding, joined
with the mean field embedding, drives an expert gate (each task's mixture of experts) and a critic
gate (each task's weighting of the critics' predictions). The paper's meta-learning schedule is
not used: every model is trained the same way here. Two faults of MTReclib's version are fixed:
its output was mean(w_c * p_c) <= 1/5 (fixed: the gate-weighted mixture sum_c w_c * p_c, a true
probability, returned as a logit) and it hard-coded CUDA (here everything follows the input).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .factory import MODELS
from .layers import ExpertBank, FeatureEmbedding, Gate, MultiTaskModel, TaskEmbedding

TASKS = ("ctr", "ctcvr")


def logit_of_mixture(weights: Tensor, logits: Tensor) -> Tensor:
    """logit(sum_c w_c * sigmoid(z_c)) for weights [B, C] (rows sum to 1), logits [B, C] -> [B].

    Both log p and log(1 - p) are log-sum-exps, so neither saturates: exact and finite.
    """
    log_w = torch.log(weights.clamp_min(1e-30))
    log_p = torch.logsumexp(log_w + F.logsigmoid(logits), dim=-1)
    log_q = torch.logsumexp(log_w + F.logsigmoid(-logits), dim=-1)
    return log_p - log_q


@MODELS.register("metaheac")
class MetaHeac(MultiTaskModel):
    display_name = "MetaHeac"
    summary = "hybrid experts and critics chosen per task by a task embedding (no meta-training)"

    def __init__(
        self, vocab_sizes: Sequence[int], num_numerical: int, *, embed_dim: int,
        bottom_dims: Sequence[int], tower_dims: Sequence[int], num_experts: int,
        num_critics: int, dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(vocab_sizes, num_numerical, embed_dim)
        self.task_embedding = TaskEmbedding(len(TASKS), embed_dim)
        self.experts = ExpertBank(self.embedding.output_dim, bottom_dims, num_experts, dropout)
        # Critics are towers ending in one logit each, computed together: [B, h] -> [B, C, 1].
        self.critics = ExpertBank(self.experts.output_dim, tower_dims, num_critics, dropout,
                                  out_dim=1)
        self.expert_gate = Gate(2 * embed_dim, num_experts)  # shared; the task embedding steers it
        self.critic_gate = Gate(2 * embed_dim, num_critics)

    def forward(self, categorical: Tensor, numerical: Tensor) -> dict[str, Tensor]:
        fields = self.embedding(categorical, numerical)  # [B, F, d]
        experts = self.experts(fields.flatten(1))  # [B, E, h]
        context = fields.mean(dim=1)  # [B, d]
        out = {}
        for t, task in enumerate(TASKS):
            task_emb = self.task_embedding.row(t, context)  # [B, d]
            gate_in = torch.cat([task_emb, context], dim=1)  # [B, 2d]
            mixed = Gate.mix(self.expert_gate(gate_in), experts)  # [B, h]
            critic_logits = self.critics(mixed).squeeze(-1)  # [B, C]
            out[task] = logit_of_mixture(self.critic_gate(gate_in), critic_logits)  # [B]
        return out

"""The blocks every model is built from: embedding -> MLP / experts / gates -> towers.

Shapes: B = batch, F = fields (categorical + one numerical field), d = embedding width,
E = experts, T = tasks. Every MLP block is Linear -> BatchNorm1d -> ReLU -> Dropout, as in
MTReclib, so the `paper` preset reproduces its networks.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# Bumped whenever a change of these blocks changes what a run gives, even in the last bits.
# 1: prlbench 0.3. 2: ExpertBank stores [E, out, in] and runs per-expert GEMMs (rounds
# differently), and dropout on a CPU draws its mask from 16-bit integers (`dropout`), so the
# masks differ from torch's.
COMPUTATION = 2


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout. On a CPU the keep mask comes from 16-bit random integers: each unit is
    kept with probability k = round((1 - p) * 65536) / 65536 (within 2^-17 of 1 - p) and scaled
    by 1 / k, so the expectation is exact. torch's CPU dropout draws a Bernoulli per unit, which
    takes about three times as long and was a quarter of a paper-preset step (bf16); the
    draws come from torch's default generator all the same, so a seed fixes them. Elsewhere
    (CUDA) torch's fused dropout."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    kept = round((1.0 - p) * 65536)
    noise = torch.randint(-32768, 32768, x.shape, dtype=torch.int16) < kept - 32768
    return x * noise.to(x.dtype).mul_(65536 / kept)


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` (the same module otherwise, and no state)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


class MultiTaskModel(nn.Module):
    """Base class: a model returns {"ctr", "ctcvr", ...} logits of shape [B]."""

    display_name: str = ""  # in tables and plots: "MMoE"
    summary: str = ""  # one line for `prlbench ls models`
    # True where ctcvr <= ctr holds by construction (ESMM: ctcvr = ctr * cvr).
    guarantees_ctcvr_le_ctr: bool = False
    # Output logit -> the Tower that produces it (dotted submodule path), for init_output_bias.
    output_towers: dict = {}
    # What the model's runs compute, beyond their configuration (COMPUTATION): part of every
    # run's identity, so a kernel change that moves results makes new runs, not confused ones.
    computation: int = COMPUTATION

    def init_output_bias(self, rates: dict) -> list:
        """Start each head at the logit of its base rate instead of at p = 0.5 ("init well").

        With Adam a bias moves ~lr per step, so from 0 it needs thousands of steps to reach a
        0.5 % base rate; this removes that warm-up without changing what the model can learn.
        Returns the heads that were set (models without a single output Tower per head skip).
        """
        done = []
        for key, path in self.output_towers.items():
            rate = rates.get(key)
            if rate is not None and 0.0 < rate < 1.0:
                bias = self.get_submodule(path).out.bias
                with torch.no_grad():
                    bias.fill_(math.log(rate / (1.0 - rate)))
                done.append(key)
        return done


class FeatureEmbedding(nn.Module):
    """Categorical fields through one offset table, numericals through one Linear as a field.

    forward: categorical [B, F_cat] int64, numerical [B, F_num] -> fields [B, F, d] where
    F = F_cat + 1 (F = F_cat when there are no numericals, as on Ali-CCP).
    """

    def __init__(self, vocab_sizes: Sequence[int], num_numerical: int, embed_dim: int) -> None:
        super().__init__()
        sizes = [int(v) for v in vocab_sizes]
        # One table with per-field offsets (MTReclib's layout and xavier init): one lookup per
        # batch.
        self.table = nn.Embedding(max(sum(sizes), 1), embed_dim)
        nn.init.xavier_uniform_(self.table.weight)
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)[: len(sizes)]
        # Derived from vocab_sizes, so not saved: a checkpoint stays plain tensors of weights.
        self.register_buffer("offsets", offsets, persistent=False)
        self.numerical = nn.Linear(num_numerical, embed_dim) if num_numerical > 0 else None
        self.num_categorical = len(sizes)
        self.num_fields = len(sizes) + (1 if num_numerical > 0 else 0)
        self.embed_dim = embed_dim
        self.output_dim = self.num_fields * embed_dim

    def forward(self, categorical: Tensor, numerical: Tensor) -> Tensor:
        fields = []
        if self.num_categorical:
            fields.append(self.table(categorical + self.offsets))  # [B, F_cat, d]
        if self.numerical is not None:
            fields.append(self.numerical(numerical).unsqueeze(1))  # [B, 1, d]
        return torch.cat(fields, dim=1)  # [B, F, d]


class TaskEmbedding(nn.Embedding):
    """One learned row per task (MetaHeac), read whole rather than looked up per impression."""

    def row(self, task: int, like: Tensor) -> Tensor:
        """Task `task`'s row broadcast to the shape of `like` [B, d] (a view, no copy)."""
        return self.weight[task].expand_as(like)


class MLP(nn.Sequential):
    """(Linear -> BatchNorm1d -> ReLU -> Dropout) per width in `dims`: [B, in] -> [B, dims[-1]]."""

    def __init__(self, in_dim: int, dims: Sequence[int], dropout: float) -> None:
        layers: list[nn.Module] = []
        for width in dims:
            layers += [nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU(),
                       Dropout(dropout)]
            in_dim = width
        super().__init__(*layers)
        self.output_dim = in_dim


class Tower(nn.Module):
    """A task head: MLP(dims) then Linear(., 1): [B, in] -> logit [B]."""

    def __init__(self, in_dim: int, dims: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, dims, dropout)
        self.out = nn.Linear(self.mlp.output_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.mlp(x)).squeeze(-1)


class Gate(nn.Module):
    """Linear + softmax over experts, no BatchNorm (torch-rechub's fault): [B, in] -> [B, E]."""

    def __init__(self, in_dim: int, num_experts: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(x), dim=-1)

    @staticmethod
    def mix(weights: Tensor, experts: Tensor) -> Tensor:
        """weights [B, E], expert outputs [B, E, d] -> weighted sum [B, d]."""
        return torch.bmm(weights.unsqueeze(1), experts).squeeze(1)


class ExpertBank(nn.Module):
    """E MLPs with the same shape: [B, in] (all experts read the same input) or [B, E, in] (one
    input per expert, PLE's upper levels) -> [B, E, dims[-1]] (or [B, E, out_dim]).

    Each layer's weights are stored as E Linear weights stacked, [E, out, in], the layout the
    kernels take without a copy: a shared input goes through one GEMM against all E experts'
    weights at once ([B, in] x [in, E * out]); per-expert inputs through one GEMM per expert,
    as the peers' separate Linear layers do (a batched matmul would first copy the inputs to
    [E, B, in]). The BatchNorm of all experts is one BatchNorm1d(E * out) on the [B, E * out]
    activations, which has per-(expert, unit) statistics exactly like E separate
    BatchNorm1d(out), and dropout draws one mask for the whole [B, E * out] block. With
    `out_dim`, a plain Linear(., out_dim) ends each expert (MetaHeac's critics).

    Version 1 of this module (prlbench 0.3) stored the weights as [E, in, out]; its
    checkpoints still load (see `_load_from_state_dict`).
    """

    _version = 2

    def __init__(
        self, in_dim: int, dims: Sequence[int], num_experts: int, dropout: float,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        widths = [in_dim, *dims] + ([out_dim] if out_dim else [])
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            # nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias,
            # drawn in version 1's [E, in, out] order so that a seed starts from the same values.
            bound = 1.0 / math.sqrt(fan_in)
            weight = torch.empty(num_experts, fan_in, fan_out).uniform_(-bound, bound)
            self.weights.append(nn.Parameter(weight.transpose(1, 2).contiguous()))  # [E, out, in]
            self.biases.append(nn.Parameter(
                torch.empty(num_experts, fan_out).uniform_(-bound, bound)))
        self.norms = nn.ModuleList(nn.BatchNorm1d(num_experts * w) for w in dims)
        self.dropout = Dropout(dropout)
        self.output_dim = widths[-1]

    def _linear(self, x: Tensor | tuple[Tensor, ...], i: int) -> Tensor:
        """x: the shared input [B, in], or E per-expert inputs [B, in] -> [B, E * out]."""
        weight, bias = self.weights[i], self.biases[i]  # [E, out, in], [E, out]
        if isinstance(x, Tensor):  # shared input: one GEMM
            return F.linear(x, weight.flatten(0, 1), bias.flatten())
        # unbind, not weight[e]: its backward stacks the E gradients once, where indexing
        # would write each expert's gradient into a zeroed copy of the whole weight.
        return torch.cat([F.linear(xe, w, b) for xe, w, b in
                          zip(x, weight.unbind(0), bias.unbind(0))], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        E = self.num_experts
        inputs: Tensor | tuple[Tensor, ...] = x if x.dim() == 2 else x.unbind(1)
        for i, norm in enumerate(self.norms):
            h = self.dropout(F.relu(norm(self._linear(inputs, i))))  # [B, E * w]
            x = h.view(h.shape[0], E, -1)  # [B, E, w]
            inputs = x.unbind(1)
        if len(self.weights) > len(self.norms):  # the plain output layer
            h = self._linear(inputs, len(self.norms))
            x = h.view(h.shape[0], E, -1)
        return x

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        """Version 1 stored weights as [E, in, out]: transposed to [E, out, in] on load. A
        state dict without metadata is read by shape (a square layer reads as version 2)."""
        version = local_metadata.get("version")
        for i, param in enumerate(self.weights):
            key = f"{prefix}weights.{i}"
            value = state_dict.get(key)
            if value is None or value.dim() != 3:
                continue
            old = version is not None and version < 2
            if old or (version is None and value.shape != param.shape
                       and value.shape == param.shape[:1] + param.shape[2:0:-1]):
                state_dict[key] = value.transpose(1, 2)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def logit_from_logprob(log_p: Tensor) -> Tensor:
    """logit(p) = log p - log(1 - p) from log p; log p is capped just below 0 so that p = 1
    (which float32 reaches for logits above ~17) gives a large finite logit, never inf."""
    log_p = log_p.clamp(max=-1e-12)
    return log_p - log1mexp(log_p)


def logit_of_product(a: Tensor, b: Tensor) -> Tensor:
    """logit(sigmoid(a) * sigmoid(b)), computed in log space (ESMM's ctcvr = ctr * cvr)."""
    return logit_from_logprob(F.logsigmoid(a) + F.logsigmoid(b))

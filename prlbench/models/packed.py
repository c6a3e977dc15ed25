"""Packed models: S copies of one architecture (one per seed or loss) trained as one model.

`pack(models)` takes S models of the same architecture and configuration and returns one module
with the same structure whose every weight is stacked on a leading member dimension: a Linear's
weight [out, in] becomes [S, out, in], an ExpertBank's [E, in, out] becomes [S, E, in, out]. The
parameter names stay those of the solo model, so member s's state_dict is the packed one sliced
at s (`member_state_dict`) and loads into a solo model unchanged, and back (`pack` of solo models
loaded from checkpoints).

The packed model reads S batches at once, stacked member-major on the batch dimension: rows
[s * B, (s + 1) * B) are member s's batch. Every layer keeps the members apart:
- Linear: one batched matmul (bmm) of [S, B, in] by [S, in, out];
- BatchNorm1d: statistics per member and unit, exactly as S separate BatchNorm1d;
- Dropout: member s's masks are drawn from member s's own generator, the way nn.Dropout draws
  them on CPU (a Bernoulli(1 - p) tensor shaped like the input, divided by 1 - p), so a member
  seeded with the solo run's global RNG state draws exactly the solo run's masks;
- Embedding: one gather from the [S * V, d] view of the stacked tables (member offsets added);
- everything else in the models is row-wise (activations, gates, softmax over experts, towers)
  and runs unchanged on the S * B rows.
A module with weights of a type not handled here is refused (`CannotPack`), never silently
shared between members; tests check every registered model's packed forward against its solo
forwards.

Members can leave a pack (`PackInfo.keep` through `shrink`): their slices are cut out of every
weight, buffer and optimizer state, and the rest train on exactly as before.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ExpertBank, TaskEmbedding

__all__ = ["CannotPack", "PackInfo", "member_state_dict", "pack", "shrink", "split_outputs"]


class CannotPack(ValueError):
    """The model has a layer with weights that this module does not know how to stack."""


class PackInfo:
    """What every packed layer of one model shares: the member count and each member's dropout
    generator (None: the global RNG, for a pack used only in eval mode)."""

    def __init__(self, generators: Sequence[torch.Generator | None]) -> None:
        self.generators = list(generators)

    @property
    def members(self) -> int:
        return len(self.generators)


def _stack(tensors: Sequence[Tensor]) -> Tensor:
    return torch.stack([t.detach() for t in tensors]).contiguous()


class PackedLinear(nn.Module):
    """S Linear layers: [S * B, ..., in] -> [S * B, ..., out], one bmm."""

    def __init__(self, layers: Sequence[nn.Linear], info: PackInfo) -> None:
        super().__init__()
        self.info = info
        self.in_features, self.out_features = layers[0].in_features, layers[0].out_features
        self.weight = nn.Parameter(_stack([m.weight for m in layers]))  # [S, out, in]
        self.bias = (nn.Parameter(_stack([m.bias for m in layers]))  # [S, out]
                     if layers[0].bias is not None else None)

    def forward(self, x: Tensor) -> Tensor:
        S = self.info.members
        x3 = x.reshape(S, -1, x.shape[-1])  # member-major rows
        w = self.weight.transpose(1, 2)  # [S, in, out]
        y = (torch.baddbmm(self.bias.unsqueeze(1), x3, w) if self.bias is not None
             else torch.bmm(x3, w))
        return y.reshape(*x.shape[:-1], self.out_features)


class PackedBatchNorm1d(nn.Module):
    """S BatchNorm1d(C) on [S * B, C]: one batch_norm on the [B, S * C] view, whose statistics
    are per (member, unit) exactly like S separate layers."""

    def __init__(self, layers: Sequence[nn.BatchNorm1d], info: PackInfo) -> None:
        super().__init__()
        first = layers[0]
        if not (first.affine and first.track_running_stats):
            raise CannotPack("BatchNorm1d without affine weights or running statistics")
        self.info = info
        self.num_features, self.eps, self.momentum = first.num_features, first.eps, first.momentum
        self.weight = nn.Parameter(_stack([m.weight for m in layers]))  # [S, C]
        self.bias = nn.Parameter(_stack([m.bias for m in layers]))
        self.register_buffer("running_mean", _stack([m.running_mean for m in layers]))
        self.register_buffer("running_var", _stack([m.running_var for m in layers]))
        self.register_buffer("num_batches_tracked",
                             _stack([m.num_batches_tracked for m in layers]))  # [S]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise CannotPack(f"packed BatchNorm1d takes [rows, features], got {tuple(x.shape)}")
        S, C = self.info.members, self.num_features
        B = x.shape[0] // S
        h = x.view(S, B, C).transpose(0, 1).reshape(B, S * C)
        if self.training:
            self.num_batches_tracked.add_(1)
        y = F.batch_norm(h, self.running_mean.view(-1), self.running_var.view(-1),
                         self.weight.view(-1), self.bias.view(-1), self.training, self.momentum,
                         self.eps)
        return y.view(B, S, C).transpose(0, 1).reshape(S * B, C)


class PackedDropout(nn.Module):
    """Dropout with member s's masks drawn from member s's generator, as nn.Dropout draws them
    on CPU: noise = Bernoulli(1 - p) shaped like the member's rows, / (1 - p), times the input."""

    def __init__(self, layer: nn.Dropout, info: PackInfo) -> None:
        super().__init__()
        self.p, self.info = layer.p, info

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:  # the models allow dropout in [0, 1)
            return x
        S = self.info.members
        noise = torch.empty(x.shape, dtype=x.dtype, device=x.device).view(S, -1)
        for s, gen in enumerate(self.info.generators):
            noise[s].bernoulli_(1 - self.p, generator=gen)
        noise.div_(1 - self.p)
        return x * noise.view_as(x)


class PackedEmbedding(nn.Module):
    """S tables [V, d] stacked [S, V, d]; ids [S * B, ...] -> [S * B, ..., d] by one gather from
    the [S * V, d] view (member s's ids shifted by s * V)."""

    def __init__(self, layers: Sequence[nn.Embedding], info: PackInfo) -> None:
        super().__init__()
        first = layers[0]
        if first.padding_idx is not None or first.max_norm is not None or first.sparse:
            raise CannotPack("nn.Embedding with padding_idx, max_norm or sparse gradients")
        self.info = info
        self.num_embeddings, self.embedding_dim = first.num_embeddings, first.embedding_dim
        self.weight = nn.Parameter(_stack([m.weight for m in layers]))  # [S, V, d]

    def forward(self, ids: Tensor) -> Tensor:
        S, V = self.info.members, self.num_embeddings
        shift = torch.arange(S, device=ids.device, dtype=ids.dtype).mul_(V).unsqueeze(1)
        flat = (ids.reshape(S, -1) + shift).view(ids.shape)
        return F.embedding(flat, self.weight.view(S * V, self.embedding_dim))


class PackedTaskEmbedding(PackedEmbedding):
    def row(self, task: int, like: Tensor) -> Tensor:
        """Each member's row `task` broadcast over its own rows of `like` [S * B, d]."""
        S = self.info.members
        rows = self.weight[:, task].unsqueeze(1)  # [S, 1, d]
        return rows.expand(S, like.shape[0] // S, like.shape[-1]).reshape(like.shape)


class PackedExpertBank(ExpertBank):
    """S ExpertBanks: weights [S, E, in, out], biases [S, E, out]; the same forward as
    ExpertBank (its norms and dropout packed), on [S * B, in] or [S * B, E, in]."""

    def __init__(self, banks: Sequence[ExpertBank], info: PackInfo) -> None:
        nn.Module.__init__(self)
        first = banks[0]
        self.info, self.num_experts, self.output_dim = info, first.num_experts, first.output_dim
        self.weights = nn.ParameterList(
            nn.Parameter(_stack([b.weights[i] for b in banks])) for i in range(len(first.weights)))
        self.biases = nn.ParameterList(
            nn.Parameter(_stack([b.biases[i] for b in banks])) for i in range(len(first.biases)))
        self.norms = nn.ModuleList(PackedBatchNorm1d([b.norms[i] for b in banks], info)
                                   for i in range(len(first.norms)))
        self.dropout = PackedDropout(first.dropout, info)

    def _linear(self, x: Tensor, i: int) -> Tensor:
        weight, bias = self.weights[i], self.biases[i]  # [S, E, in, out], [S, E, out]
        S, E, fan_in, fan_out = weight.shape
        if x.dim() == 2:  # shared input: one bmm [S, B, in] @ [S, in, E * out]
            h = torch.bmm(x.view(S, -1, fan_in),
                          weight.permute(0, 2, 1, 3).reshape(S, fan_in, E * fan_out))
            return (h.view(S, -1, E, fan_out) + bias.unsqueeze(1)).view(-1, E, fan_out)
        h = torch.einsum("sbei,seio->sbeo", x.view(S, -1, E, fan_in), weight)
        return (h + bias.unsqueeze(1)).reshape(-1, E, fan_out)


# The layers with weights that can be packed, most specific first; each takes the S solo
# layers and the PackInfo.
_PACKERS: list[tuple[type, Callable]] = [
    (ExpertBank, PackedExpertBank),
    (nn.Linear, PackedLinear),
    (nn.BatchNorm1d, PackedBatchNorm1d),
    (TaskEmbedding, PackedTaskEmbedding),
    (nn.Embedding, PackedEmbedding),
    (nn.Dropout, PackedDropout),
]


def _packer(module: nn.Module) -> Callable | None:
    for cls, packer in _PACKERS:
        if type(module) is cls:
            return packer
    return None


def _pack_into(target: nn.Module, solos: Sequence[nn.Module], info: PackInfo, path: str) -> None:
    """Replace, in `target` (a copy of solos[0]), each child with its packed version."""
    own = [n for n, _ in target.named_parameters(recurse=False)]
    own += [n for n, _ in target.named_buffers(recurse=False)
            if n not in target._non_persistent_buffers_set]
    if own:
        raise CannotPack(f"{path or 'the model'} ({type(target).__name__}) holds weights "
                         f"({', '.join(own)}) that prlbench cannot stack per member")
    for name, child in list(target.named_children()):
        parts = [getattr(m, name) for m in solos]
        packer = _packer(child)
        if packer is PackedDropout:
            setattr(target, name, PackedDropout(child, info))
        elif packer is not None:
            setattr(target, name, packer(parts, info))
        else:
            _pack_into(child, parts, info, f"{path}.{name}" if path else name)


def pack(models: Sequence[nn.Module],
         generators: Sequence[torch.Generator | None] | None = None) -> nn.Module:
    """One packed model holding `models` (same class and shapes) as members 0..S-1, with member
    s's dropout masks drawn from generators[s]. The solo models are not changed."""
    if not models:
        raise ValueError("pack() needs at least one model")
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models]
    if any(type(m) is not type(models[0]) or s != shapes[0] for m, s in zip(models, shapes)):
        raise CannotPack("the members of a pack must be the same model with the same shapes")
    info = PackInfo(generators if generators is not None else [None] * len(models))
    if info.members != len(models):
        raise ValueError(f"{len(models)} models but {info.members} generators")
    packed = copy.deepcopy(models[0])
    _pack_into(packed, models, info, "")
    packed.pack_info = info
    packed.train(models[0].training)
    return packed


def member_state_dict(packed: nn.Module, member: int) -> dict[str, Tensor]:
    """Member `member`'s state_dict, loadable into the solo model (copies, not views)."""
    return {k: v[member].clone() for k, v in packed.state_dict().items()}


def split_outputs(out: dict[str, Tensor], members: int) -> list[dict[str, Tensor]]:
    """The packed model's outputs {key: [S * B]} -> one dict {key: [B]} per member."""
    views = {k: v.view(members, -1, *v.shape[1:]) for k, v in out.items()}
    return [{k: v[s] for k, v in views.items()} for s in range(members)]


@torch.no_grad()
def shrink(packed: nn.Module, keep: Sequence[int], optimizers: Sequence = ()) -> None:
    """Keep only members `keep` (in that order): every weight, buffer, generator and optimizer
    state is cut to their slices in place (the Parameter objects stay, so optimizers holding
    them go on working). Gradients are dropped."""
    index = torch.tensor(list(keep), dtype=torch.long)
    params = list(packed.parameters())
    for opt in optimizers:
        for p in params:
            state = opt.state.get(p)
            for key, value in (state or {}).items():
                if torch.is_tensor(value) and value.dim() and value.shape[0] == p.shape[0]:
                    state[key] = value.index_select(0, index.to(value.device))
    for p in params:
        p.grad = None
        p.data = p.data.index_select(0, index.to(p.device))
    for module in packed.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and name not in module._non_persistent_buffers_set:
                module._buffers[name] = buf.index_select(0, index.to(buf.device))
    info = packed.pack_info
    info.generators = [info.generators[i] for i in keep]

"""The training optimizer, with an option for embedding tables that scale with the vocabulary.

`train.embedding_optimizer`:

- `adam` (the default, what every published table used): dense gradients and one
  torch.optim.Adam over every parameter; weight decay on every row of the table at every step.
- `sparse_adam`: the FeatureEmbedding tables give sparse gradients (nn.Embedding(sparse=True))
  and are trained by LazyAdam below, lazily: only the rows in the batch get moment updates and a
  step. It is torch.optim.SparseAdam's arithmetic (and state: a SparseAdam state_dict loads into
  it) in gathered-row form, about 2-3x faster on CPU. Adam for every other parameter.
- `rowwise_adagrad`: sparse gradients and RowWiseAdagrad below: one accumulator per row (the
  mean of the squared gradient over the row's dims), as large-scale recommender trainers use;
  its state is one float per row. Adam for every other parameter.

Weight decay on the sparse options is lazy: the rows in the batch get `weight_decay * row` added
to their gradient (Adam's L2 form), the rows not in the batch are not touched at all.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Iterable

import torch
from torch import Tensor, nn

from prlbench.config import EMBEDDING_OPTIMIZERS, TrainConfig

__all__ = ["EMBEDDING_OPTIMIZERS", "Adam", "LazyAdam", "OptimizerPair", "RowWiseAdagrad",
           "embedding_tables", "make_optimizer"]


@functools.cache
def _without_dynamo() -> None:
    """torch.optim wraps Optimizer.add_param_group, zero_grad, state_dict and load_state_dict
    to keep them out of torch.compile's tracing, and each wrapper imports torch._dynamo (about
    800 modules) on its first call to make it so. A wrapper takes the function it should call
    from the wrapped one's `__dynamo_disable`; set to the function itself, it calls it as it is.
    prlbench never compiles; a torch that wraps them otherwise is left as it is."""
    for attr in vars(torch.optim.Optimizer).values():
        plain, code = getattr(attr, "__wrapped__", None), getattr(attr, "__code__", None)
        if (plain is not None and code is not None and code.co_filename.endswith("_compile.py")
                and not hasattr(plain, "__dynamo_disable")):
            plain.__dynamo_disable = plain


class Adam(torch.optim.Adam):
    """torch.optim.Adam, the same arithmetic and state, without importing TorchDynamo: 70 MB of
    each training process's own memory (a fifth of a small-preset job's), for tracing prlbench
    never does. torch's `step` wrapper imports it to mark a graph break and otherwise only
    switches gradients off (an Adam that is not `differentiable`); this step does the latter."""

    _step = staticmethod(inspect.unwrap(torch.optim.Adam.step))

    def __init__(self, params, **kwargs) -> None:
        _without_dynamo()
        super().__init__(params, **kwargs)

    def step(self, closure=None):
        if self.defaults["differentiable"]:
            return super().step(closure)
        with torch.no_grad():
            return self._step(self, closure)


class _TableOptimizer(torch.optim.Optimizer):
    """An optimizer of 2-D embedding tables: `step` runs the closure, then `_update(group, p)`
    for every table with a gradient."""

    def _tables(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() != 2:
                    raise ValueError(f"{type(self).__name__} trains 2-D tables (rows x dims)")
                yield group, p

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, p in self._tables():
            self._update(group, p)
        return loss

    def _update(self, group: dict, p: Tensor) -> None:
        raise NotImplementedError


class RowWiseAdagrad(_TableOptimizer):
    """Adagrad with one accumulator per row of a 2-D parameter, for sparse gradients.

    For each row r in the batch (gradients of repeated ids summed first), g = its gradient row:
        sum[r] += mean(g ** 2);   param[r] -= lr * g / (sqrt(sum[r]) + eps)
    Rows not in the batch keep their values and their accumulator. `weight_decay` adds
    weight_decay * param[r] to g for the rows in the batch only (lazy).
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-2, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        if lr <= 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"RowWiseAdagrad: lr > 0, eps >= 0, weight_decay >= 0; got lr={lr}, "
                             f"eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "eps": eps, "weight_decay": weight_decay})

    def _update(self, group: dict, p: Tensor) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["sum"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
        state["step"] += 1
        rows, values = _rows_and_values(p.grad, p)
        if group["weight_decay"]:
            values = values + group["weight_decay"] * p[rows]
        acc = state["sum"].index_add_(0, rows, values.float().pow(2).mean(dim=1))
        scale = group["lr"] / (acc[rows].sqrt() + group["eps"])
        p.index_add_(0, rows, (-scale.unsqueeze(1) * values).to(p.dtype))


class LazyAdam(_TableOptimizer):
    """torch.optim.SparseAdam's lazy Adam on the rows of a 2-D table, with lazy L2 weight decay.

    For the rows r in the batch (the gradients of repeated ids summed first), g = g[r]
    (+ weight_decay * param[r]):
        m[r] += (g - m[r]) * (1 - beta1);   v[r] += (g ** 2 - v[r]) * (1 - beta2)
        param[r] -= lr * sqrt(1 - beta2 ** step) / (1 - beta1 ** step) * m[r] / (sqrt(v[r]) + eps)
    with `step` counted per parameter. Rows not in the batch keep their values and moments.
    The arithmetic, its order and the state ("step" an int, "exp_avg", "exp_avg_sq" shaped as
    the table) are SparseAdam's, so a SparseAdam state_dict loads unchanged (weight_decay, which
    SparseAdam lacks, is then kept from the constructor). The work is on the gathered rows only:
    one index_select and one index_copy_ per moment, one index_add_ into the table. Dense
    gradients are accepted too: their non-zero rows are the batch.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, maximize: bool = False) -> None:
        if not (lr > 0 and eps > 0 and weight_decay >= 0 and 0 <= betas[0] < 1
                and 0 <= betas[1] < 1):
            raise ValueError(f"LazyAdam: lr > 0, eps > 0, weight_decay >= 0, 0 <= betas < 1; got "
                             f"lr={lr}, eps={eps}, weight_decay={weight_decay}, betas={betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay, "maximize": maximize})

    def load_state_dict(self, state_dict: dict) -> None:
        """As Optimizer's; a group saved without weight_decay (SparseAdam's) keeps this one's."""
        decay = [g["weight_decay"] for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, wd in zip(self.param_groups, decay):
            group.setdefault("weight_decay", wd)

    def _update(self, group: dict, p: Tensor) -> None:
        beta1, beta2 = group["betas"]
        lr, eps = float(group["lr"]), group["eps"]
        weight_decay = group.get("weight_decay", 0.0)
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1  # counted even when the batch is empty, as SparseAdam does
        rows, grad = _rows_and_values(p.grad, p)
        if rows.numel() == 0:
            return
        if group.get("maximize", False):
            grad = -grad
        if weight_decay:  # wd * p[r] + g[r]: the same sum as SparseAdam on g + wd * p
            grad = p.index_select(0, rows).mul_(weight_decay).add_(grad)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        # old <- old + (new - old) * (1 - b), SparseAdam's form, on the gathered rows;
        # `grad` may be the gradient's own storage, so it is only read
        v = exp_avg_sq.index_select(0, rows)
        delta = grad.pow(2).sub_(v).mul_(1 - beta2)
        v.add_(delta)
        m = exp_avg.index_select(0, rows)
        m.add_(torch.sub(grad, m, out=delta).mul_(1 - beta1))
        exp_avg.index_copy_(0, rows, m)
        exp_avg_sq.index_copy_(0, rows, v)
        step = state["step"]
        step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        p.index_add_(0, rows, m.div_(v.sqrt_().add_(eps)).mul_(-step_size))


def _rows_and_values(grad: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """The rows a gradient touches (each once, ascending) and their gradient rows, repeated ids
    summed; or, for a dense gradient, its non-zero rows. The values may be the gradient's own
    storage: read them, do not write them.

    A sparse gradient's sum is grad.coalesce()'s, bit for bit (the same sort, so the same order
    of summation), without the sparse machinery: on an Ali-CCP batch's 36,864 looked-up ids,
    about 2x faster at embedding dim 16, as fast at 128. (torch.unique + index_add_ would sum in
    batch order instead, which differs from coalesce in the last bits where an id repeats many
    times, so sparse_adam and rowwise_adagrad runs would not repeat their earlier results.)"""
    if grad.is_sparse:
        if grad.sparse_dim() != 1:  # not an nn.Embedding gradient: treat it as dense
            return _rows_and_values(grad.to_dense(), p)
        ids, values = grad._indices()[0], grad._values()
        if grad.is_coalesced():
            return ids, values
        ids, order = ids.sort()  # coalesce's own call, so its order among the repeated ids
        rows, inverse = torch.unique_consecutive(ids, return_inverse=True)
        summed = values.new_zeros((rows.numel(), *values.shape[1:]))
        return rows, summed.index_add_(0, inverse, values.index_select(0, order))
    rows = grad.abs().sum(dim=1).nonzero().squeeze(1)  # a dense gradient: its non-zero rows
    return rows, grad[rows]


class OptimizerPair:
    """Adam for the dense parameters and a sparse optimizer for the embedding tables, behind
    one optimizer's interface (zero_grad, step, state_dict, load_state_dict): one state_dict
    holds both, so a checkpoint saves and resumes them together."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer) -> None:
        self.dense, self.sparse = dense, sparse

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


def embedding_tables(model: nn.Module) -> list[nn.Embedding]:
    """The FeatureEmbedding tables of `model` (not other embeddings, e.g. MetaHeac's two task
    rows, which stay dense)."""
    from prlbench.models.layers import FeatureEmbedding

    return [m.table for m in model.modules() if isinstance(m, FeatureEmbedding)]


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    """The optimizer `cfg.embedding_optimizer` names; for the sparse options this also switches
    the model's embedding tables to sparse gradients."""
    kind = cfg.embedding_optimizer
    if kind not in EMBEDDING_OPTIMIZERS:
        from prlbench.errors import ConfigError

        raise ConfigError(f"train.embedding_optimizer (--embedding-optimizer) must be one of "
                          f"{', '.join(EMBEDDING_OPTIMIZERS)}, got {kind!r}")
    if kind == "adam":
        return Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tables = embedding_tables(model)
    table_ids = {id(t.weight) for t in tables}
    dense = [p for p in model.parameters() if id(p) not in table_ids]
    for t in tables:
        t.sparse = True
    dense_opt = Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = [t.weight for t in tables]
    sparse = LazyAdam if kind == "sparse_adam" else RowWiseAdagrad
    return OptimizerPair(dense_opt, sparse(weights, lr=cfg.lr, weight_decay=cfg.weight_decay))

"""The training optimizer, with an option for embedding tables that scale with the vocabulary.

`train.embedding_optimizer`:

- `adam` (the default, what every published table used): dense gradients and one
  torch.optim.Adam over every parameter; weight decay on every row of the table at every step.
- `sparse_adam`: the FeatureEmbedding tables give sparse gradients (nn.Embedding(sparse=True))
  and are trained by torch.optim.SparseAdam, lazily: only the rows in the batch get moment
  updates and a step. Adam for every other parameter.
- `rowwise_adagrad`: sparse gradients and RowWiseAdagrad below: one accumulator per row (the
  mean of the squared gradient over the row's dims), as large-scale recommender trainers use;
  its state is one float per row. Adam for every other parameter.

Weight decay on the sparse options is lazy: the rows in the batch get `weight_decay * row` added
to their gradient (Adam's L2 form), the rows not in the batch are not touched at all.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from prlbench.config import EMBEDDING_OPTIMIZERS, TrainConfig

__all__ = ["EMBEDDING_OPTIMIZERS", "OptimizerPair", "RowWiseAdagrad", "embedding_tables",
           "make_optimizer"]


class RowWiseAdagrad(torch.optim.Optimizer):
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

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() != 2:
                    raise ValueError("RowWiseAdagrad trains 2-D tables (rows x dims)")
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
        return loss


def _rows_and_values(grad: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """The rows a gradient touches (each once) and their gradient rows, sparse or dense."""
    if grad.is_sparse:
        g = grad.coalesce()
        return g.indices()[0], g.values()
    rows = grad.abs().sum(dim=1).nonzero().squeeze(1)  # a dense gradient: its non-zero rows
    return rows, grad[rows]


def _decay_sparse_rows(p: Tensor, weight_decay: float) -> None:
    """Adam's L2 weight decay on the rows in the batch only: grad[r] += weight_decay * p[r]."""
    if p.grad is None or not weight_decay:
        return
    g = p.grad.coalesce()
    rows = g.indices()[0]
    p.grad = torch.sparse_coo_tensor(g.indices(), g.values() + weight_decay * p.detach()[rows],
                                     g.shape, is_coalesced=True, check_invariants=False)


class OptimizerPair:
    """Adam for the dense parameters and a sparse optimizer for the embedding tables, behind
    one optimizer's interface (zero_grad, step, state_dict, load_state_dict): one state_dict
    holds both, so a checkpoint saves and resumes them together."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer, *,
                 sparse_weight_decay: float = 0.0) -> None:
        self.dense, self.sparse = dense, sparse
        self.sparse_weight_decay = sparse_weight_decay

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        if isinstance(self.sparse, torch.optim.SparseAdam):  # it has no weight decay of its own
            for group in self.sparse.param_groups:
                for p in group["params"]:
                    _decay_sparse_rows(p, self.sparse_weight_decay)
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
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tables = embedding_tables(model)
    table_ids = {id(t.weight) for t in tables}
    dense = [p for p in model.parameters() if id(p) not in table_ids]
    for t in tables:
        t.sparse = True
    dense_opt = torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = [t.weight for t in tables]
    if kind == "sparse_adam":
        return OptimizerPair(dense_opt, torch.optim.SparseAdam(weights, lr=cfg.lr),
                             sparse_weight_decay=cfg.weight_decay)
    return OptimizerPair(dense_opt, RowWiseAdagrad(weights, lr=cfg.lr,
                                                   weight_decay=cfg.weight_decay))

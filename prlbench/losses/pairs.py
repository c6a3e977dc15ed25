"""The logistic loss summed over every (positive, negative) pair, without the pair matrix.

    logistic_pair_sum(pos, neg) = sum over i, j of softplus(neg_j - pos_i)
                                = sum over i, j of -log sigmoid(pos_i - neg_j)

RankNet and the graded pairwise loss pair every click with every non-click: at a 45 % click
rate a batch of 2048 has about 10^6 pairs. A logistic pair loss has no closed form in sorted
order (it is not piecewise linear, unlike a hinge), so every pair is visited once; what this
module saves is everything else. Autograd through `softplus(neg[None, :] - pos[:, None]).sum()`
keeps the P x N matrix for the backward pass and makes several transcendental passes over it.
Here one forward sweep over row blocks of at most `BLOCK` pairs (memory bounded whatever the
batch) computes the value and both gradients, and the backward pass only scales two vectors:

    d/d neg_j = sum_i sigmoid(neg_j - pos_i)        d/d pos_i = -sum_j sigmoid(neg_j - pos_i)

- With a = exp(neg - c), b = exp(pos - c) and c the middle of the scores' range (P + N exps),
  u_ij = a_j + b_i gives sigmoid(neg_j - pos_i) = a_j / u_ij and
  softplus(neg_j - pos_i) = log u_ij - (pos_i - c): per pair one add, one division and a share
  of a log, which is taken of the product of up to `GROUP` factors (as many as float32's range
  allows for the spread), so the logs run over a fraction of the pairs.
- Scores spread over more than `MAX_SPREAD` (exp would overflow) take a sigmoid per pair, with
  softplus(d) = max(d, 0) - log max(sigmoid(d), 1 - sigmoid(d)): the first sum from the sorted
  negatives' suffix sums in O((P + N) log N), the second from products of factors in [1/2, 1].

Accuracy: each log u_ij carries float32 rounding, about 6e-8 x |log u_ij| with |log u_ij| at
most spread / 2 + 0.7 (float64: 1e-16 x); the gradients are exact to rounding.
tests/test_loss_zoo.py checks both paths, the blocks and the groups against a direct double
loop and `gradcheck`.
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK = 1 << 18  # pairs per block: two 1 MiB float32 buffers (smaller blocks run on one thread)
GROUP = 32  # at most this many factors multiplied before one log
MAX_SPREAD = 160.0  # scores spread wider than this take the sigmoid path (exp would overflow)


class _LogisticPairSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pos: Tensor, neg: Tensor) -> Tensor:  # type: ignore[override]
        value, grad_pos, grad_neg = _sweep(pos.detach(), neg.detach())
        ctx.save_for_backward(grad_pos, grad_neg)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        grad_pos, grad_neg = ctx.saved_tensors
        return grad * grad_pos, grad * grad_neg


def logistic_pair_sum(pos: Tensor, neg: Tensor) -> Tensor:
    """sum_{i, j} softplus(neg_j - pos_i) over pos [P] x neg [N], a scalar: float32 for
    float16 / bfloat16 / float32 inputs, float64 for float64.

    Either side empty: exactly 0, with zero gradient. Differentiable once (the gradient is
    computed in the forward pass; double backward is not supported).
    """
    if pos.dim() != 1 or neg.dim() != 1:
        raise ValueError(f"pos and neg must be 1-D, got shapes {tuple(pos.shape)} and "
                         f"{tuple(neg.shape)}")
    if pos.dtype != neg.dtype:
        raise ValueError(f"pos and neg must share a dtype, got {pos.dtype} and {neg.dtype}")
    # float16 / bfloat16 in float32: exp(spread / 2) and the products of GROUP factors need
    # float32's range (float16's ends at 65504 and 6e-5).
    work = torch.promote_types(pos.dtype, torch.float32)
    return _LogisticPairSum.apply(pos.to(work), neg.to(work))


def _sweep(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(value, d value / d pos, d value / d neg), over row blocks of the pair matrix."""
    n_pos, n_neg = pos.numel(), neg.numel()
    if n_pos == 0 or n_neg == 0:
        return pos.new_zeros(()), torch.zeros_like(pos), torch.zeros_like(neg)
    lo, hi = torch.cat([pos, neg]).aminmax()
    spread = float(hi - lo)
    wide = not spread <= MAX_SPREAD  # also NaN: exp(+-spread / 2) must stay finite and normal
    rows = max(1, BLOCK // n_neg)
    s_buf, m_buf = pos.new_empty((2, min(rows, n_pos) * n_neg)).unbind(0)
    if wide:
        group = GROUP
    else:  # sigmoid(neg_j - pos_i) = a_j / u_ij with u_ij = a_j + b_i: a division per pair
        mid = (lo + hi) / 2
        a, b = torch.exp(neg - mid)[None, :], torch.exp(pos - mid)[:, None]
        # log u_ij is within log 2 + spread / 2 of 0: a product of `group` of them stays
        # inside float32's range (e^-87 .. e^88)
        group = max(1, min(GROUP, int(80 / (spread / 2 + 1))))
    logs, row_sums, col_sum = [], [], None
    for start in range(0, n_pos, rows):
        r = min(rows, n_pos - start)
        s, m = s_buf[: r * n_neg].view(r, n_neg), m_buf[: r * n_neg].view(r, n_neg)
        if wide:  # m = max(sigmoid(d), 1 - sigmoid(d)), in [1/2, 1]
            torch.sub(neg[None, :], pos[start:start + r, None], out=m)
            torch.sigmoid(m, out=s)
            torch.mul(s, -1, out=m).add_(1)  # 1 - sigmoid(d) = sigmoid(-d), exact where small
            torch.maximum(m, s, out=m)
        else:  # m = u
            torch.add(a, b[start:start + r], out=m)
            torch.div(a, m, out=s)
        row_sums.append(s.sum(1))
        col_sum = s.sum(0) if col_sum is None else col_sum.add_(s.sum(0))
        logs.append(_log_product(m_buf[: r * n_neg], group))
    grad_pos = (row_sums[0] if len(row_sums) == 1 else torch.cat(row_sums)).neg_()
    log_sum = logs[0] if len(logs) == 1 else torch.stack(logs).sum()
    if wide:  # softplus(d) = max(d, 0) - log max(sigmoid(d), 1 - sigmoid(d))
        return _relu_pair_sum(pos, neg) - log_sum, grad_pos, col_sum
    # softplus(d_ij) = log(1 + a_j / b_i) = log u_ij - log b_i = log u_ij - (pos_i - mid)
    return log_sum - n_neg * (pos - mid).sum(), grad_pos, col_sum


def _log_product(m: Tensor, group: int) -> Tensor:
    """sum(log(m)), as the logs of products of `group` factors."""
    whole = m.numel() // group * group  # rows of the view multiply elementwise: vectorised
    total = torch.log(m[:whole].view(group, -1).prod(0)).sum()
    return total if whole == m.numel() else total + torch.log(m[whole:]).sum()


def _relu_pair_sum(pos: Tensor, neg: Tensor) -> Tensor:
    """sum_{i, j} max(neg_j - pos_i, 0) in O((P + N) log N): sorted neg and its suffix sums."""
    ordered, _ = torch.sort(neg)
    suffix = torch.cat([ordered.flip(0).cumsum(0).flip(0), ordered.new_zeros(1)])
    k = torch.searchsorted(ordered, pos, right=True)  # neg_j > pos_i for j >= k_i
    count = (neg.numel() - k).to(pos.dtype)
    # a row without such a neg adds 0, also where pos_i is +inf (0 * inf would be NaN)
    return (suffix[k] - torch.where(count > 0, count * pos, 0)).sum()

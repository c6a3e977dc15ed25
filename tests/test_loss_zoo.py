"""The loss zoo beyond PWiseR: the pair-sum kernel (pairs.py), Graded, ListCE, RankNet's heads,
PWiseR's normalisations, bf16, bad input, and every loss x every model through the engine.

Every reference is computed independently of the module under test: plain Python loops over
pairs with `math` (softplus(x) = max(x, 0) + log1p(exp(-|x|))), or, for the large float32 batch,
the pair matrix in float64.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import prlbench.losses.pairs as pairs_mod
from prlbench.errors import ConfigError
from prlbench.losses import (
    LOSSES,
    PHIS,
    SCORES,
    all_params,
    graded_loss,
    listce_loss,
    logistic_pair_sum,
    loss_params,
    pwiser_loss,
    ranknet_loss,
)

F64 = torch.float64


# ---- independent scalar references ----------------------------------------------------------


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


PHI_REF = {
    "squared_hinge": lambda x: max(0.0, x) ** 2,
    "hinge": lambda x: max(0.0, x),
    "logistic": _softplus,
}


def _brute_pair_sum(pos: list[float], neg: list[float]):
    """(value, d/d pos, d/d neg) of sum_{i, j} softplus(neg_j - pos_i), by a double loop."""
    terms, g_pos, g_neg = [], [0.0] * len(pos), [0.0] * len(neg)
    for i, p in enumerate(pos):
        for j, n in enumerate(neg):
            terms.append(_softplus(n - p))
            sig = _sigmoid(n - p)
            g_pos[i] -= sig
            g_neg[j] += sig
    return math.fsum(terms), g_pos, g_neg


def _grade(c: float, v: float) -> int:
    return 2 if (c > 0.5 and v > 0.5) else (1 if c > 0.5 else 0)


def _brute_graded(s: list[float], click, conversion, t: float):
    """(value, gradient) of the mean over {g_i > g_j} of softplus(-(s_i - s_j) / T)."""
    g = [_grade(c, v) for c, v in zip(click, conversion)]
    n = len(s)
    pairs = [(i, j) for i in range(n) for j in range(n) if g[i] > g[j]]
    grad = [0.0] * n
    if not pairs:
        return 0.0, grad
    terms = []
    for i, j in pairs:
        x = -(s[i] - s[j]) / t
        terms.append(_softplus(x))
        d = _sigmoid(x) / t / len(pairs)
        grad[i] -= d
        grad[j] += d
    return math.fsum(terms) / len(pairs), grad


def _brute_listce(s: list[float], labels) -> float:
    """mean over positives of -log(sigmoid(s_i) / sum_j sigmoid(s_j)); 0 without positives."""
    pos = [i for i, y in enumerate(labels) if y > 0.5]
    if not pos:
        return 0.0
    total = math.fsum(_sigmoid(x) for x in s)
    return math.fsum(-(math.log(_sigmoid(s[i])) - math.log(total)) for i in pos) / len(pos)


def _brute_ranknet(s: list[float], labels) -> float:
    """mean over (positive i, negative k) of softplus(-(s_i - s_k)); 0 without pairs."""
    pos = [x for x, y in zip(s, labels) if y > 0.5]
    neg = [x for x, y in zip(s, labels) if y <= 0.5]
    terms = [_softplus(-(p - n)) for p in pos for n in neg]
    return math.fsum(terms) / len(terms) if terms else 0.0


def _brute_pwiser(s_raw: list[float], click, conversion, m1, m2, phi, score, norm) -> float:
    s = [_sigmoid(x) for x in s_raw] if score == "prob" else list(s_raw)
    idx = range(len(s))
    p = [i for i in idx if click[i] > 0.5 and conversion[i] > 0.5]
    c = [i for i in idx if click[i] > 0.5 and conversion[i] <= 0.5]
    u = [i for i in idx if click[i] <= 0.5]
    total = 0.0
    for neg, m in ((c, m1), (u, m2)):
        pair_sum = math.fsum(PHI_REF[phi](m - (s[i] - s[k])) for i in p for k in neg)
        divisor = {"pairs": len(p) * len(neg), "paper": len(neg), "sum": 1}[norm]
        total += pair_sum / max(divisor, 1)
    return total


def _brute_bce_one(z: list[float], y: list[float]) -> float:
    # -(y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))) = softplus(z) - y z
    return math.fsum(_softplus(zi) - yi * zi for zi, yi in zip(z, y)) / len(z)


def _brute_bce(outputs, click, conversion) -> float:
    return (_brute_bce_one(outputs["ctr"].tolist(), click.tolist())
            + _brute_bce_one(outputs["ctcvr"].tolist(), conversion.tolist())) / 2


# ---- batches --------------------------------------------------------------------------------


def _random_batch(seed: int, n: int = 14, dtype=F64, conv_without_click: bool = False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=dtype) * 2
    click = (torch.rand(n, generator=g) < 0.5).to(dtype)
    converts = (torch.rand(n, generator=g) < 0.5).to(dtype)
    conversion = converts if conv_without_click else click * converts
    return logits, click, conversion


def _outputs(seed: int, n: int = 20):
    """Two heads' float64 logits with clicks, conversions, click-only and non-click rows."""
    for k in range(100):
        logits, click, conversion = _random_batch(seed * 1000 + k, n=n)
        grades = {_grade(c, v) for c, v in zip(click.tolist(), conversion.tolist())}
        if grades == {0, 1, 2} and 0 < conversion.sum() < n:
            break
    g = torch.Generator().manual_seed(seed + 99)
    ctcvr = logits - 1.0 + 0.3 * torch.randn(n, generator=g, dtype=F64)
    return {"ctr": logits, "ctcvr": ctcvr}, click, conversion


def _value_and_grad(fn, *inputs):
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*xs)
    grads = torch.autograd.grad(out, xs, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)]
    return out.detach(), grads


def _spread_pos_neg(seed: int, n_pos: int, n_neg: int, scale: float = 3.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n_pos, generator=g, dtype=dtype) * scale
    neg = torch.randn(n_neg, generator=g, dtype=dtype) * scale
    return pos, neg


def _assert_pair_sum_matches_brute(pos, neg, rel=1e-12):
    value, (g_pos, g_neg) = _value_and_grad(logistic_pair_sum, pos, neg)
    ref, r_pos, r_neg = _brute_pair_sum(pos.tolist(), neg.tolist())
    assert value.dtype == pos.dtype and value.dim() == 0
    assert value.item() == pytest.approx(ref, rel=rel, abs=1e-13)
    torch.testing.assert_close(g_pos, torch.tensor(r_pos, dtype=pos.dtype), rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(g_neg, torch.tensor(r_neg, dtype=neg.dtype), rtol=1e-11, atol=1e-13)
    return value, g_pos, g_neg


# =============================================================================================
# 1. logistic_pair_sum
# =============================================================================================

SIZES = [(0, 5), (5, 0), (0, 0), (1, 1), (1, 9), (9, 1), (3, 7), (20, 13), (40, 33)]


@pytest.mark.parametrize("n_pos,n_neg", SIZES)
@pytest.mark.parametrize("seed", range(2))
def test_pair_sum_matches_double_loop(n_pos, n_neg, seed):
    pos, neg = _spread_pos_neg(seed, n_pos, n_neg)
    value, g_pos, g_neg = _assert_pair_sum_matches_brute(pos, neg)
    if n_pos == 0 or n_neg == 0:
        assert value.item() == 0.0
        assert torch.equal(g_pos, torch.zeros(n_pos, dtype=F64))
        assert torch.equal(g_neg, torch.zeros(n_neg, dtype=F64))


@pytest.mark.parametrize("force", ["fast", "wide"])
def test_pair_sum_empty_side_is_exactly_zero_on_both_paths(monkeypatch, force):
    monkeypatch.setattr(pairs_mod, "MAX_SPREAD", 0.0 if force == "wide" else 1e30)
    for n_pos, n_neg in [(0, 4), (4, 0), (0, 0)]:
        pos, neg = _spread_pos_neg(3, n_pos, n_neg, scale=50.0)
        value, (g_pos, g_neg) = _value_and_grad(logistic_pair_sum, pos, neg)
        assert value.item() == 0.0 and value.dtype == F64
        assert g_pos.abs().sum().item() == 0.0 and g_neg.abs().sum().item() == 0.0


def test_pair_sum_ties_and_one_by_one_closed_form():
    value = logistic_pair_sum(torch.tensor([0.3], dtype=F64), torch.tensor([1.1], dtype=F64))
    assert value.item() == pytest.approx(_softplus(0.8), rel=1e-14)
    # equal scores across and within the sides: every tied pair is log 2
    pos, neg = torch.tensor([0.0, 0.0, 1.0], dtype=F64), torch.tensor([0.0, 1.0, 1.0], dtype=F64)
    _assert_pair_sum_matches_brute(pos, neg)


def _count_calls(monkeypatch):
    """Spy on torch.exp (the fast path's) and torch.sigmoid (the wide path's)."""
    calls = {"exp": 0, "sigmoid": 0}
    real_exp, real_sigmoid = torch.exp, torch.sigmoid

    def exp(*a, **k):
        calls["exp"] += 1
        return real_exp(*a, **k)

    def sigmoid(*a, **k):
        calls["sigmoid"] += 1
        return real_sigmoid(*a, **k)

    monkeypatch.setattr(torch, "exp", exp)
    monkeypatch.setattr(torch, "sigmoid", sigmoid)
    return calls


def test_pair_sum_takes_the_wide_path_past_max_spread_and_the_fast_path_below(monkeypatch):
    narrow = _spread_pos_neg(0, 6, 7, scale=1.0)
    wide = _spread_pos_neg(0, 6, 7, scale=100.0)
    assert float(torch.cat(narrow).max() - torch.cat(narrow).min()) < pairs_mod.MAX_SPREAD
    assert float(torch.cat(wide).max() - torch.cat(wide).min()) > pairs_mod.MAX_SPREAD
    with monkeypatch.context() as m:
        calls = _count_calls(m)
        logistic_pair_sum(*narrow)
        assert calls["exp"] > 0 and calls["sigmoid"] == 0
    with monkeypatch.context() as m:
        calls = _count_calls(m)
        logistic_pair_sum(*wide)
        assert calls["sigmoid"] > 0 and calls["exp"] == 0


@pytest.mark.parametrize("seed", range(3))
def test_pair_sum_wide_spread_matches_double_loop(seed):
    pos, neg = _spread_pos_neg(seed, 11, 17, scale=100.0)  # spread far beyond MAX_SPREAD
    _assert_pair_sum_matches_brute(pos, neg, rel=1e-12)
    # float32, where exp(spread / 2) would overflow on the fast path
    p32, n32 = pos.float(), neg.float()
    ref, _, _ = _brute_pair_sum(p32.double().tolist(), n32.double().tolist())
    got = logistic_pair_sum(p32, n32)
    assert torch.isfinite(got) and got.item() == pytest.approx(ref, rel=1e-6)


def test_pair_sum_fast_path_would_overflow_where_the_wide_one_is_taken(monkeypatch):
    """Proof that MAX_SPREAD matters: forcing the fast path on a float64 spread of ~4000
    (exp(2000) = inf) breaks it, the default result is right."""
    pos, neg = _spread_pos_neg(4, 5, 6, scale=1000.0)
    ref, _, _ = _brute_pair_sum(pos.tolist(), neg.tolist())
    assert logistic_pair_sum(pos, neg).item() == pytest.approx(ref, rel=1e-12)
    monkeypatch.setattr(pairs_mod, "MAX_SPREAD", math.inf)
    forced = logistic_pair_sum(pos, neg).item()
    assert not (forced == pytest.approx(ref, rel=1e-6))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n_pos,n_neg", [(1, 1), (7, 5), (25, 30)])
def test_pair_sum_both_paths_agree_when_forced(monkeypatch, seed, n_pos, n_neg):
    pos, neg = _spread_pos_neg(seed, n_pos, n_neg, scale=4.0)
    monkeypatch.setattr(pairs_mod, "MAX_SPREAD", 0.0)  # every input takes the wide path
    wide = _assert_pair_sum_matches_brute(pos, neg)
    monkeypatch.setattr(pairs_mod, "MAX_SPREAD", 1e30)  # every input takes the fast path
    fast = _assert_pair_sum_matches_brute(pos, neg)
    assert wide[0].item() == pytest.approx(fast[0].item(), rel=1e-13)
    torch.testing.assert_close(wide[1], fast[1], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(wide[2], fast[2], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("force,scale", [("fast", 3.0), ("wide", 3.0), ("default", 100.0)])
def test_pair_sum_gradcheck_float64(monkeypatch, force, scale):
    if force != "default":
        monkeypatch.setattr(pairs_mod, "MAX_SPREAD", 0.0 if force == "wide" else 1e30)
    pos, neg = _spread_pos_neg(5, 6, 8, scale=scale)
    if force == "default":
        assert float(torch.cat([pos, neg]).max() - torch.cat([pos, neg]).min()) > 160
    assert torch.autograd.gradcheck(logistic_pair_sum,
                                    (pos.requires_grad_(True), neg.requires_grad_(True)))


@pytest.mark.parametrize("force", ["fast", "wide"])
@pytest.mark.parametrize(
    "block,group,n_pos,n_neg",
    [
        (7, 32, 9, 3),    # 2 rows a block, 5 blocks, the last one row; each block < GROUP
        (7, 3, 9, 3),     # 6 pairs a block = 2 whole groups; the last block 1 group
        (7, 4, 10, 3),    # 6 pairs a block = 1 group + remainder 2
        (70, 32, 9, 33),  # 66 pairs a block = 2 groups + 2; last block 33 = 1 group + 1
        (7, 5, 4, 10),    # n_neg > BLOCK: one row a block (rows = max(1, 0))
        (50, 7, 31, 6),   # 8 rows a block, last block 7 rows; 48 pairs = 6 groups + 6
    ],
)
def test_pair_sum_blocks_and_groups_equal_the_unblocked_result(monkeypatch, force, block, group,
                                                               n_pos, n_neg):
    monkeypatch.setattr(pairs_mod, "MAX_SPREAD", 0.0 if force == "wide" else 1e30)
    pos, neg = _spread_pos_neg(block + n_pos, n_pos, n_neg)
    whole, (w_pos, w_neg) = _value_and_grad(logistic_pair_sum, pos, neg)  # one block
    monkeypatch.setattr(pairs_mod, "BLOCK", block)
    monkeypatch.setattr(pairs_mod, "GROUP", group)
    rows = max(1, block // n_neg)
    assert -(-n_pos // rows) >= 2  # several blocks really happen
    blocked, g_pos, g_neg = _assert_pair_sum_matches_brute(pos, neg)
    assert blocked.item() == pytest.approx(whole.item(), rel=1e-13)
    torch.testing.assert_close(g_pos, w_pos, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g_neg, w_neg, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("force", ["default", "wide"])
@pytest.mark.parametrize("offset,scale", [(0.0, 2.0), (-6.0, 1.5), (3.0, 0.5)])
def test_pair_sum_float32_large_batch_accuracy(monkeypatch, force, offset, scale):
    if force == "wide":
        monkeypatch.setattr(pairs_mod, "MAX_SPREAD", 0.0)
    g = torch.Generator().manual_seed(17)
    x = (torch.randn(2048, generator=g) * scale + offset)  # float32
    positive = torch.rand(2048, generator=g) < 0.45
    assert 0.40 < positive.float().mean().item() < 0.50
    (value, (g_pos, g_neg)) = _value_and_grad(logistic_pair_sum, x[positive], x[~positive])
    assert value.dtype == torch.float32
    # reference: the pair matrix in float64 on the very same (float32-rounded) scores
    p = x[positive].double().requires_grad_(True)
    n = x[~positive].double().requires_grad_(True)
    ref = F.softplus(n[None, :] - p[:, None]).sum()
    ref.backward()
    assert abs(value.item() - ref.item()) / ref.item() < 1e-5
    for got, want in ((g_pos, p.grad), (g_neg, n.grad)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5,
                                   atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize(
    "pos,neg,match",
    [
        (torch.zeros(3), torch.zeros(4, dtype=F64), "dtype"),
        (torch.zeros(3, dtype=F64), torch.zeros(4), "dtype"),
        (torch.zeros(3, 1), torch.zeros(4), "1-D"),
        (torch.zeros(3), torch.zeros(2, 2), "1-D"),
        (torch.zeros(()), torch.zeros(4), "1-D"),
    ],
)
def test_pair_sum_rejects_bad_input(pos, neg, match):
    with pytest.raises(ValueError, match=match):
        logistic_pair_sum(pos, neg)


def test_pair_sum_float16_input_spread_below_max_spread():
    # float16's exp overflows at a spread of ~22: the sum is computed in float32
    pos = torch.tensor([-15.0, 0.0], dtype=torch.float16)
    neg = torch.tensor([15.0, 1.0], dtype=torch.float16)  # spread 30 < MAX_SPREAD
    ref, _, _ = _brute_pair_sum(pos.double().tolist(), neg.double().tolist())
    got = logistic_pair_sum(pos, neg)
    assert got.dtype == torch.float32
    assert torch.isfinite(got) and got.item() == pytest.approx(ref, rel=1e-5)


# =============================================================================================
# 2. graded_loss
# =============================================================================================


def _graded_cases():
    cases = []
    for seed in range(4):
        cases.append((f"random{seed}", *_random_batch(seed, n=16, conv_without_click=True)))
    logits = _random_batch(9, n=10)[0]
    t = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    cases += [
        ("no conversions (1 > 0 only)", logits, t([1, 0, 1, 0, 0, 1, 0, 0, 1, 0]), t([0] * 10)),
        ("every click converts (2 > 0 only)", logits, t([1, 0, 1, 0, 0, 1, 0, 0, 1, 0]),
         t([1, 0, 1, 0, 0, 1, 0, 0, 1, 0])),
        ("every row clicked (2 > 1 only)", logits, t([1] * 10), t([1, 0, 0, 1, 0, 0, 0, 1, 0, 0])),
        ("conversions without clicks are grade 0", logits, t([1, 0, 0, 0, 1, 0, 0, 0, 0, 0]),
         t([1, 1, 1, 0, 0, 1, 0, 0, 1, 0])),
    ]
    return cases


GRADED_CASES = _graded_cases()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("case", GRADED_CASES, ids=[c[0] for c in GRADED_CASES])
def test_graded_matches_double_loop(case, temperature):
    _, logits, click, conversion = case
    (value, (grad,)) = _value_and_grad(
        lambda z: graded_loss(z, click, conversion, temperature=temperature), logits)
    ref, ref_grad = _brute_graded(logits.tolist(), click.tolist(), conversion.tolist(),
                                  temperature)
    assert ref > 0
    assert value.dtype == F64
    assert value.item() == pytest.approx(ref, rel=1e-12)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=F64), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "click,conversion",
    [
        ([0, 0, 0, 0], [0, 0, 0, 0]),  # all grade 0
        ([0, 0, 0, 0], [1, 0, 1, 1]),  # conversions without clicks: still all grade 0
        ([1, 1, 1, 1], [0, 0, 0, 0]),  # all grade 1
        ([1, 1, 1, 1], [1, 1, 1, 1]),  # all grade 2
        ([1], [1]),                    # one row
        ([], []),                      # empty batch
    ],
)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_graded_without_pairs_is_exactly_zero(click, conversion, temperature):
    n = len(click)
    logits = torch.tensor([3.0, -2.0, 50.0, 0.1][:n], dtype=F64).requires_grad_(True)
    click, conversion = torch.tensor(click, dtype=F64), torch.tensor(conversion, dtype=F64)
    loss = graded_loss(logits, click, conversion, temperature=temperature)
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and logits.grad.abs().sum().item() == 0.0


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_graded_gradcheck_float64(temperature):
    logits, click, conversion = GRADED_CASES[0][1:]
    assert torch.autograd.gradcheck(
        lambda z: graded_loss(z, click, conversion, temperature=temperature),
        (logits.clone().requires_grad_(True),))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_graded_rejects_bad_temperature(temperature):
    logits, click, conversion = _random_batch(0)
    with pytest.raises(ValueError, match="temperature"):
        graded_loss(logits, click, conversion, temperature=temperature)


@pytest.mark.parametrize("lam,temperature", [(0.5, 1.0), (2.0, 0.5), (0.3, 2.0)])
def test_graded_objective_is_bce_plus_lambda_term(lam, temperature):
    outputs, click, conversion = _outputs(1)
    total, parts = LOSSES.get("graded")(outputs, click, conversion, lam=lam,
                                        temperature=temperature)
    term, _ = _brute_graded(outputs["ctr"].tolist(), click.tolist(), conversion.tolist(),
                            temperature)
    bce = _brute_bce(outputs, click, conversion)
    assert total.item() == pytest.approx(bce + lam * term, rel=1e-12)
    assert parts["graded"].item() == pytest.approx(term, rel=1e-12)
    assert parts["bce"].item() == pytest.approx(bce, rel=1e-12)
    assert not parts["graded"].requires_grad and not parts["bce"].requires_grad


@pytest.mark.parametrize("name,params", [("graded", dict(lam=0)), ("listce", dict(alpha=1.0)),
                                         ("ranknet", dict(lam=0, head="both")),
                                         ("pwiser", dict(lam=0, norm="paper"))])
def test_control_setting_equals_bce_exactly(name, params):
    outputs, click, conversion = _outputs(4)

    def grads(loss_name, **p):
        xs = {k: v.clone().requires_grad_(True) for k, v in outputs.items()}
        total, _ = LOSSES.get(loss_name)(xs, click, conversion, **p)
        return total, torch.autograd.grad(total, [xs["ctr"], xs["ctcvr"]])

    total, g = grads(name, **params)
    base, gb = grads("bce")
    assert total.item() == base.item()
    assert torch.equal(g[0], gb[0]) and torch.equal(g[1], gb[1])


# =============================================================================================
# 3. listce_loss
# =============================================================================================


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("positives", ["random", "one", "all"])
def test_listce_matches_brute_force(seed, positives):
    logits, labels, _ = _random_batch(seed, n=15)
    if positives == "one":
        labels = torch.zeros_like(labels)
        labels[seed] = 1.0
    elif positives == "all":
        labels = torch.ones_like(labels)
    assert labels.sum() > 0
    (value, (grad,)) = _value_and_grad(lambda z: listce_loss(z, labels), logits)
    assert value.item() == pytest.approx(_brute_listce(logits.tolist(), labels.tolist()),
                                         rel=1e-12)

    def naive(z):  # the formula as written, on the sigmoids themselves
        sig = torch.sigmoid(z)
        return -(torch.log(sig[labels > 0.5]) - torch.log(sig.sum())).mean()

    (_, (ref_grad,)) = _value_and_grad(naive, logits)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-14)


def test_listce_without_positives_is_exactly_zero():
    logits = torch.tensor([3.0, -2.0, 40.0, 0.1], dtype=F64).requires_grad_(True)
    loss = listce_loss(logits, torch.zeros(4, dtype=F64))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and logits.grad.abs().sum().item() == 0.0


def test_listce_gradcheck_float64():
    logits, labels, _ = _random_batch(2, n=12)
    assert torch.autograd.gradcheck(lambda z: listce_loss(z, labels),
                                    (logits.clone().requires_grad_(True),))


def test_listce_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        listce_loss(torch.zeros(4), torch.zeros(3))


@pytest.mark.parametrize("alpha", [0.9, 0.5, 0.0])
@pytest.mark.parametrize("seed", range(2))
def test_listce_objective_mixes_bce_and_the_two_heads(alpha, seed):
    outputs, click, conversion = _outputs(seed)
    total, parts = LOSSES.get("listce")(outputs, click, conversion, alpha=alpha)
    bce = _brute_bce(outputs, click, conversion)
    term = (_brute_listce(outputs["ctr"].tolist(), click.tolist())
            + _brute_listce(outputs["ctcvr"].tolist(), conversion.tolist())) / 2
    assert total.item() == pytest.approx(alpha * bce + (1 - alpha) * term, rel=1e-12)
    assert parts["listce"].item() == pytest.approx(term, rel=1e-12)
    assert parts["bce"].item() == pytest.approx(bce, rel=1e-12)


def test_listce_objective_default_alpha_is_bce_plus_one_ninth_scaled():
    outputs, click, conversion = _outputs(3)
    total, parts = LOSSES.get("listce")(outputs, click, conversion)
    expected = 0.9 * (parts["bce"].item() + parts["listce"].item() / 9)
    assert total.item() == pytest.approx(expected, rel=1e-12)


# =============================================================================================
# 4. ranknet heads and Combined-Pair
# =============================================================================================


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("head", ["ctr", "ctcvr", "both"])
def test_ranknet_heads_match_brute_force(seed, head):
    outputs, click, conversion = _outputs(seed)
    per_head = {"ctr": _brute_ranknet(outputs["ctr"].tolist(), click.tolist()),
                "ctcvr": _brute_ranknet(outputs["ctcvr"].tolist(), conversion.tolist())}
    assert min(per_head.values()) > 0
    term = (per_head["ctr"] + per_head["ctcvr"]) / 2 if head == "both" else per_head[head]
    total, parts = LOSSES.get("ranknet")(outputs, click, conversion, lam=0.4, head=head)
    assert parts["ranknet"].item() == pytest.approx(term, rel=1e-12)
    assert total.item() == pytest.approx(_brute_bce(outputs, click, conversion) + 0.4 * term,
                                         rel=1e-12)


def test_ranknet_ctcvr_head_ranks_conversions_and_ignores_the_ctr_logits():
    outputs, click, conversion = _outputs(5)
    _, parts = LOSSES.get("ranknet")(outputs, click, conversion, head="ctcvr")
    moved = {**outputs, "ctr": outputs["ctr"] * 3 + 1}
    _, moved_parts = LOSSES.get("ranknet")(moved, torch.zeros_like(click), conversion,
                                           head="ctcvr")
    assert parts["ranknet"].item() == moved_parts["ranknet"].item()
    assert parts["ranknet"].item() == pytest.approx(
        ranknet_loss(outputs["ctcvr"], conversion).item(), rel=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_ranknet_both_with_lambda_3_7_is_combined_pair_over_0_7(seed):
    """Lin et al.'s Combined-Pair: per task 0.7 BCE + 0.3 RankNet, averaged over the tasks."""
    outputs, click, conversion = _outputs(seed)
    ctr, ctcvr = outputs["ctr"].tolist(), outputs["ctcvr"].tolist()
    tasks = [(ctr, click.tolist()), (ctcvr, conversion.tolist())]
    combined = sum(0.7 * _brute_bce_one(z, y) + 0.3 * _brute_ranknet(z, y) for z, y in tasks) / 2
    total, _ = LOSSES.get("ranknet")(outputs, click, conversion, lam=3 / 7, head="both")
    assert total.item() == pytest.approx(combined / 0.7, rel=1e-12)

    # the gradients too, against a naive pair-matrix Combined-Pair in torch
    def naive(zc, zv):
        def task(z, y):
            bce = F.binary_cross_entropy_with_logits(z, y)
            d = z[y > 0.5][:, None] - z[y <= 0.5][None, :]
            return 0.7 * bce + 0.3 * F.softplus(-d).mean()
        return (task(zc, click) + task(zv, conversion)) / 2 / 0.7

    _, (gc, gv) = _value_and_grad(
        lambda zc, zv: LOSSES.get("ranknet")({"ctr": zc, "ctcvr": zv}, click, conversion,
                                             lam=3 / 7, head="both")[0],
        outputs["ctr"], outputs["ctcvr"])
    _, (rc, rv) = _value_and_grad(naive, outputs["ctr"], outputs["ctcvr"])
    torch.testing.assert_close(gc, rc, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(gv, rv, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("score,reduction", list(itertools.product(SCORES, ["mean", "sum"])))
def test_ranknet_gradcheck_float64(score, reduction):
    logits, click, _ = _random_batch(6, n=12)
    assert torch.autograd.gradcheck(
        lambda z: ranknet_loss(z, click, score=score, reduction=reduction),
        (logits.clone().requires_grad_(True),))


def test_ranknet_sum_is_pairs_times_mean():
    logits, click, _ = _random_batch(8, n=17)
    n_pos = int(click.sum())
    mean = ranknet_loss(logits, click).item()
    total = ranknet_loss(logits, click, reduction="sum").item()
    assert total == pytest.approx(mean * n_pos * (17 - n_pos), rel=1e-12)


# =============================================================================================
# 5. PWiseR's norms, shift invariance
# =============================================================================================


def _pwiser_batch(kind: str):
    logits = _random_batch(21, n=9)[0]
    t = lambda v: torch.tensor(v, dtype=F64)  # noqa: E731
    if kind == "C empty":  # P = 3, U = 6: term 2 alone
        return logits, t([1, 1, 1, 0, 0, 0, 0, 0, 0]), t([1, 1, 1, 0, 0, 0, 0, 0, 0])
    if kind == "U empty":  # P = 2, C = 7: term 1 alone
        return logits, t([1] * 9), t([1, 0, 0, 1, 0, 0, 0, 0, 0])
    return logits, t([1, 1, 1, 1, 0, 0, 0, 0, 0]), t([1, 0, 1, 0, 0, 0, 0, 0, 0])  # P2 C2 U5


@pytest.mark.parametrize("kind,n_p", [("C empty", 3), ("U empty", 2), ("both", 2)])
@pytest.mark.parametrize("phi,score", list(itertools.product(PHIS, SCORES)))
def test_pwiser_paper_norm_is_p_times_pairs_norm(kind, n_p, phi, score):
    logits, click, conversion = _pwiser_batch(kind)
    opts = dict(m1=0.3, m2=0.6, phi=phi, score=score)
    pairs = pwiser_loss(logits, click, conversion, norm="pairs", **opts).item()
    paper = pwiser_loss(logits, click, conversion, norm="paper", **opts).item()
    assert pairs > 0
    assert paper == pytest.approx(n_p * pairs, rel=1e-12)
    for norm, got in (("pairs", pairs), ("paper", paper)):
        ref = _brute_pwiser(logits.tolist(), click.tolist(), conversion.tolist(), 0.3, 0.6, phi,
                            score, norm)
        assert got == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("norm", ["pairs", "paper", "sum"])
@pytest.mark.parametrize("phi,score", list(itertools.product(PHIS, SCORES)))
def test_pwiser_norms_match_brute_force(seed, norm, phi, score):
    outputs, click, conversion = _outputs(seed, n=24)
    logits = outputs["ctr"]
    got = pwiser_loss(logits, click, conversion, m1=0.2, m2=0.5, phi=phi, score=score,
                      norm=norm).item()
    ref = _brute_pwiser(logits.tolist(), click.tolist(), conversion.tolist(), 0.2, 0.5, phi,
                        score, norm)
    assert got == pytest.approx(ref, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("norm", ["pairs", "paper", "sum"])
def test_pwiser_gradcheck_every_norm(norm):
    logits, click, conversion = _pwiser_batch("both")
    assert torch.autograd.gradcheck(
        lambda z: pwiser_loss(z, click, conversion, phi="logistic", score="logit", norm=norm),
        (logits.clone().requires_grad_(True),))


@pytest.mark.parametrize("norm", ["pairs", "paper", "sum"])
def test_pwiser_empty_p_is_exactly_zero_for_every_norm(norm):
    logits = torch.tensor([0.3, -0.2, 1.5, 0.4], dtype=F64).requires_grad_(True)
    click, conversion = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.zeros(4)
    loss = pwiser_loss(logits.double(), click.double(), conversion.double(), norm=norm,
                       phi="logistic", score="logit")
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().sum().item() == 0.0


@pytest.mark.parametrize("head", ["ctr", "both"])
def test_pwiser_objective_paper_norm(head):
    outputs, click, conversion = _outputs(2)
    total, parts = LOSSES.get("pwiser")(outputs, click, conversion, lam=0.7, m1=0.1, m2=0.2,
                                        phi="logistic", score="logit", head=head, norm="paper")
    heads = ("ctr", "ctcvr") if head == "both" else ("ctr",)
    term = sum(_brute_pwiser(outputs[h].tolist(), click.tolist(), conversion.tolist(), 0.1, 0.2,
                             "logistic", "logit", "paper") for h in heads)
    assert parts["pwiser"].item() == pytest.approx(term, rel=1e-12)
    assert total.item() == pytest.approx(_brute_bce(outputs, click, conversion) + 0.7 * term,
                                         rel=1e-12)


def test_pwiser_registered_norm_offers_pairs_and_paper_only():
    outputs, click, conversion = _outputs(0)
    with pytest.raises(ConfigError, match="pairs, paper"):
        LOSSES.get("pwiser")(outputs, click, conversion, norm="sum")


SHIFTS = [-7.5, 0.25, 12.0]


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("phi,norm", list(itertools.product(PHIS, ["pairs", "paper", "sum"])))
def test_pwiser_logit_score_is_shift_invariant(shift, phi, norm):
    outputs, click, conversion = _outputs(3, n=24)
    logits = outputs["ctr"]
    opts = dict(m1=0.3, m2=0.8, phi=phi, score="logit", norm=norm)
    a = pwiser_loss(logits, click, conversion, **opts).item()
    b = pwiser_loss(logits + shift, click, conversion, **opts).item()
    assert a > 0 and b == pytest.approx(a, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("shift", SHIFTS)
def test_ranknet_logit_and_graded_are_shift_invariant(shift):
    for seed in range(3):
        outputs, click, conversion = _outputs(seed, n=24)
        z = outputs["ctr"]
        for fn in (lambda x: ranknet_loss(x, click, score="logit"),
                   lambda x: ranknet_loss(x, click, score="logit", reduction="sum"),
                   lambda x: graded_loss(x, click, conversion),
                   lambda x: graded_loss(x, click, conversion, temperature=0.5)):
            (a, (ga,)), (b, (gb,)) = _value_and_grad(fn, z), _value_and_grad(fn, z + shift)
            assert b.item() == pytest.approx(a.item(), rel=1e-12)
            torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-13)


def test_ranknet_prob_score_is_not_shift_invariant():
    outputs, click, _ = _outputs(0)
    z = outputs["ctr"]
    a = ranknet_loss(z, click, score="prob").item()
    assert ranknet_loss(z + 3.0, click, score="prob").item() != pytest.approx(a, rel=1e-6)


# =============================================================================================
# 6. bfloat16 / autocast
# =============================================================================================

VARIANTS = [(name, {}) for name in LOSSES.names()] + [
    ("ranknet", dict(head="both")), ("ranknet", dict(head="ctcvr", score="prob")),
    ("pwiser", dict(norm="paper", score="logit", phi="logistic", head="both")),
    ("graded", dict(temperature=0.5)), ("listce", dict(alpha=0.3)),
]
VARIANT_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'default'}"
               for n, p in VARIANTS]


def test_variants_cover_every_registered_loss():
    assert {n for n, _ in VARIANTS} == set(LOSSES.names())


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_bfloat16_logits_give_a_float32_finite_total(name, params):
    outputs, click, conversion = _outputs(7, n=64)
    low = {k: v.bfloat16().requires_grad_(True) for k, v in outputs.items()}
    total, parts = LOSSES.get(name)(low, click.float(), conversion.float(), **params)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert all(p.dtype in (torch.float32, torch.float64) for p in parts.values())
    # the same numbers as float32 logits holding the bf16-rounded values
    high = {k: v.detach().float() for k, v in low.items()}
    ref, _ = LOSSES.get(name)(high, click.float(), conversion.float(), **params)
    assert total.item() == pytest.approx(ref.item(), rel=1e-6)
    total.backward()
    for v in low.values():
        assert v.grad.dtype == torch.bfloat16 and torch.isfinite(v.grad.float()).all()


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_autocast_bf16_model_outputs(name, params):
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 2)
    outputs, click, conversion = _outputs(8, n=64)
    x = torch.randn(64, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        assert out.dtype == torch.bfloat16
        total, _ = LOSSES.get(name)({"ctr": out[:, 0], "ctcvr": out[:, 1]}, click.float(),
                                    conversion.float(), **params)
    assert total.dtype in (torch.float32, torch.float64) and torch.isfinite(total)
    total.backward()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


def test_pure_functions_compute_bf16_in_float32():
    logits, click, conversion = _random_batch(12, n=64, dtype=torch.float32)
    low = logits.bfloat16()
    high = low.float()
    pure = {
        "graded": lambda z: graded_loss(z, click, conversion),
        "listce": lambda z: listce_loss(z, click),
        "ranknet": lambda z: ranknet_loss(z, click),
        "ranknet-sum": lambda z: ranknet_loss(z, conversion, reduction="sum"),
        "pwiser": lambda z: pwiser_loss(z, click, conversion, norm="paper"),
    }
    for name, fn in pure.items():
        got = fn(low)
        assert got.dtype == torch.float32, name
        assert got.item() == pytest.approx(fn(high).item(), rel=1e-6), name
    for fn in pure.values():  # float64 stays float64
        assert fn(logits.double()).dtype == F64


# =============================================================================================
# 7. every loss x every model through the engine
# =============================================================================================


def _engine_cfg(model: str, loss: str, params: dict | None = None, **train):
    from prlbench.config import resolve

    t = {"epochs": 1, "batch_size": 1024, "threads": 1, **train}
    return resolve(None, {"model": {"name": model},
                          "loss": {"name": loss, "params": params or {}}, "train": t})


def _assert_finished_with_finite_metrics(run):
    from prlbench.fileio import read_json

    metrics = read_json(run / "metrics.json")
    numbers = {k: v for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert {"ctr_auc", "ctcvr_auc"} <= set(numbers)
    bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
    assert not bad, bad
    history = read_json(run / "history.json")
    assert len(history) == 1
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_score"]) for h in history)
    assert read_json(run / "run.json")["status"] == "done"


def _model_names():
    from prlbench.models import MODELS

    return MODELS.names()


@pytest.mark.slow  # 40 short runs through the real engine, about 25 s
@pytest.mark.parametrize("model", _model_names())
@pytest.mark.parametrize("loss", LOSSES.names())
def test_every_loss_trains_every_model_one_epoch(data_dir, tmp_path, loss, model):
    from prlbench.engine.run import train_run

    run = train_run(_engine_cfg(model, loss), data_dir=data_dir, out=tmp_path, progress=False)
    _assert_finished_with_finite_metrics(run)


@pytest.mark.parametrize("name,params", VARIANTS[len(LOSSES.names()):],
                         ids=VARIANT_IDS[len(LOSSES.names()):])
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_loss_variants_train_through_the_engine(data_dir, tmp_path, name, params, precision):
    from prlbench.engine.run import train_run

    cfg = _engine_cfg("mmoe", name, params, precision=precision)
    run = train_run(cfg, data_dir=data_dir, out=tmp_path, progress=False)
    _assert_finished_with_finite_metrics(run)


# =============================================================================================
# 8. bad input
# =============================================================================================


@pytest.mark.parametrize("name", LOSSES.names())
def test_unknown_parameter_names_the_valid_ones(name):
    outputs, click, conversion = _outputs(0)
    with pytest.raises(ConfigError) as info:
        LOSSES.get(name)(outputs, click, conversion, gamma=2.0)
    msg = str(info.value)
    assert "'gamma'" in msg and repr(name) in msg
    valid = list(loss_params(name))
    for key in valid:
        assert key in msg.split("its parameters:")[1], (key, msg)
    if not valid:
        assert "none" in msg


@pytest.mark.parametrize("name", LOSSES.names())
def test_a_parameter_of_another_loss_names_this_loss(name):
    outputs, click, conversion = _outputs(0)
    foreign = sorted(set(all_params()) - set(loss_params(name)))
    assert foreign
    for key in foreign:
        value = all_params()[key].default
        with pytest.raises(ConfigError) as info:
            LOSSES.get(name)(outputs, click, conversion, **{key: value})
        msg = str(info.value)
        assert f"loss {name!r}" in msg and repr(key) in msg, msg


def _nan_at_a_conversion(outputs, conversion, head):
    i = int(torch.nonzero(conversion).flatten()[0])  # a grade-2 row: in every pair family
    z = outputs[head].clone()
    z[i] = math.nan
    return {**outputs, head: z}


@pytest.mark.parametrize("head", ["ctr", "ctcvr"])
@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_nan_logit_gives_a_nan_total(name, params, head):
    outputs, click, conversion = _outputs(1)
    total, _ = LOSSES.get(name)(_nan_at_a_conversion(outputs, conversion, head), click,
                                conversion, **params)
    assert torch.isnan(total)


@pytest.mark.parametrize("name,params", [(n, p) for n, p in VARIANTS if n != "bce"],
                         ids=[i for (n, _), i in zip(VARIANTS, VARIANT_IDS) if n != "bce"])
def test_nan_reaches_the_pair_term_itself(name, params):
    """Not only through BCE: the ranking term of the NaN row's head is NaN too."""
    outputs, click, conversion = _outputs(1)
    head = "ctcvr" if params.get("head") == "ctcvr" else "ctr"
    _, parts = LOSSES.get(name)(_nan_at_a_conversion(outputs, conversion, head), click,
                                conversion, **params)
    term = [v for k, v in parts.items() if k != "bce"]
    assert len(term) == 1 and torch.isnan(term[0])


@pytest.mark.parametrize("force", ["fast", "wide"])
@pytest.mark.parametrize("where", ["pos", "neg"])
def test_nan_in_pair_sum_is_nan(monkeypatch, force, where):
    monkeypatch.setattr(pairs_mod, "MAX_SPREAD", 0.0 if force == "wide" else 1e30)
    pos, neg = _spread_pos_neg(0, 4, 5)
    (pos if where == "pos" else neg)[1] = math.nan
    assert torch.isnan(logistic_pair_sum(pos, neg))


def test_pair_sum_of_a_positive_at_plus_infinity_is_finite():
    # every pair of the +inf row adds softplus(neg_j - inf) = 0, not 0 * inf = NaN
    pos, neg = torch.tensor([math.inf, 2.0], dtype=F64), torch.tensor([1.0, 3.0], dtype=F64)
    ref = _softplus(1.0 - 2.0) + _softplus(3.0 - 2.0)  # the +inf row's pairs add 0
    assert logistic_pair_sum(pos, neg).item() == pytest.approx(ref, rel=1e-12)

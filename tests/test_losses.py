"""Losses tested by identities (fvcore's focal-loss style): closed forms on one pair, gradients
by gradcheck, empty sets, permutation invariance, and a brute-force double loop reference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from prlbench.errors import ConfigError
from prlbench.losses import (
    HEADS,
    LOSSES,
    PHIS,
    SCORES,
    bce_loss,
    loss_info,
    loss_params,
    pwiser_loss,
    ranknet_loss,
)

# Independent scalar references (Python math, not the module's torch functions).
PHI_REF = {
    "squared_hinge": lambda x: max(0.0, x) ** 2,
    "hinge": lambda x: max(0.0, x),
    "logistic": lambda x: math.log1p(math.exp(x)),
}


def _score(z: float, score: str) -> float:
    return 1 / (1 + math.exp(-z)) if score == "prob" else z


def _t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def _random_batch(seed: int, n: int = 14, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=dtype) * 2
    click = (torch.rand(n, generator=g) < 0.5).float()
    conversion = click * (torch.rand(n, generator=g) < 0.5).float()
    return logits, click, conversion


def _brute_pwiser(logits, click, conversion, m1, m2, phi, score):
    """Double Python loop over pairs, on autograd scalars (so gradients can be compared)."""
    s = torch.sigmoid(logits) if score == "prob" else logits
    idx = range(len(logits))
    p = [i for i in idx if click[i] == 1 and conversion[i] == 1]
    c = [i for i in idx if click[i] == 1 and conversion[i] == 0]
    u = [i for i in idx if click[i] == 0]
    total = logits.sum() * 0
    for neg, m in ((c, m1), (u, m2)):
        pairs = [PHIS[phi](m - (s[i] - s[k])) for i in p for k in neg]
        if pairs:
            total = total + sum(pairs) / len(pairs)
    return total


def _value_and_grad(fn, logits):
    x = logits.detach().clone().requires_grad_(True)
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x, allow_unused=False)
    return out.detach(), grad


# ---- closed forms on one pair ---------------------------------------------------------------


@pytest.mark.parametrize("phi,score", list(itertools.product(PHIS, SCORES)))
@pytest.mark.parametrize("other", ["C", "U"])
def test_one_pair_equals_closed_form(phi, score, other):
    a, b = 0.1, 0.7  # P scores below the other's: every phi is active (away from kinks)
    m1, m2 = 0.05, 0.3
    click = _t([1.0, 1.0 if other == "C" else 0.0])
    conversion = _t([1.0, 0.0])
    margin = m1 if other == "C" else m2
    expected = PHI_REF[phi](margin - (_score(a, score) - _score(b, score)))
    logits = _t([a, b]).requires_grad_(True)

    def fn(z):
        return pwiser_loss(z, click, conversion, m1=m1, m2=m2, phi=phi, score=score)

    assert fn(logits).item() == pytest.approx(expected, rel=1e-12)
    assert torch.autograd.gradcheck(fn, (logits,))


def test_squared_hinge_gradient_closed_form():
    a, b = 0.2, 0.5
    logits = _t([a, b]).requires_grad_(True)
    loss = pwiser_loss(logits, _t([1.0, 1.0]), _t([1.0, 0.0]), m1=0.05)
    loss.backward()
    sa, sb = _score(a, "prob"), _score(b, "prob")
    x = 0.05 - (sa - sb)
    expected = [-2 * x * sa * (1 - sa), 2 * x * sb * (1 - sb)]
    assert logits.grad.tolist() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("phi", ["squared_hinge", "hinge"])
def test_inactive_hinge_is_zero_with_zero_grad(phi):
    logits = _t([3.0, -3.0]).requires_grad_(True)  # P far above C: margin satisfied
    loss = pwiser_loss(logits, _t([1.0, 1.0]), _t([1.0, 0.0]), phi=phi)
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad.abs().sum().item() == 0.0


# ---- empty sets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "click,conversion",
    [
        ([1, 1, 0, 0], [0, 0, 0, 0]),  # no P
        ([1, 1, 1], [1, 1, 1]),  # P only: no C, no U
        ([], []),  # empty batch
    ],
)
@pytest.mark.parametrize("phi", list(PHIS))
def test_no_pairs_is_exactly_zero(click, conversion, phi):
    n = len(click)
    logits = torch.tensor([math.inf, -math.inf, 5.0, 0.0][:n]).requires_grad_(True)
    click, conversion = torch.tensor(click).float(), torch.tensor(conversion).float()
    loss = pwiser_loss(logits, click, conversion, phi=phi)
    loss.backward()
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    assert not torch.isnan(logits.grad).any() and logits.grad.abs().sum().item() == 0.0


def test_empty_c_or_u_gives_the_other_term_alone():
    logits = _t([0.3, -0.2, 1.5, 0.4, -1.0])
    click, conversion = _t([1, 1, 0, 0, 0]), _t([1, 1, 0, 0, 0])  # P = {0, 1}, C empty
    expected_u = _brute_pwiser(logits, click, conversion, 0.05, 0.1, "squared_hinge", "prob")
    got = pwiser_loss(logits, click, conversion)
    assert got.item() == pytest.approx(expected_u.item(), rel=1e-12) and got.item() > 0
    # m1 has nothing to act on without C
    assert pwiser_loss(logits, click, conversion, m1=0.9).item() == got.item()
    click = _t([1, 1, 1, 1, 1])  # U empty: only the C term, m2 irrelevant
    got = pwiser_loss(logits, click, conversion)
    assert got.item() == pytest.approx(
        _brute_pwiser(logits, click, conversion, 0.05, 0.1, "squared_hinge", "prob").item()
    )
    assert pwiser_loss(logits, click, conversion, m2=0.9).item() == got.item()


# ---- identities on random batches -----------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("phi,score", list(itertools.product(PHIS, SCORES)))
def test_matches_brute_force_double_loop(seed, phi, score):
    logits, click, conversion = _random_batch(seed)
    opts = dict(m1=0.2, m2=0.4, phi=phi, score=score)
    got, got_grad = _value_and_grad(lambda z: pwiser_loss(z, click, conversion, **opts), logits)
    ref, ref_grad = _value_and_grad(
        lambda z: _brute_pwiser(z, click, conversion, opts["m1"], opts["m2"], phi, score), logits
    )
    assert got.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-14)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-10, atol=1e-14)


def test_permutation_invariance():
    logits, click, conversion = _random_batch(7, n=40)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    for phi, score in itertools.product(PHIS, SCORES):
        fn = lambda z, c, v: pwiser_loss(z, c, v, phi=phi, score=score)  # noqa: E731
        val, grad = _value_and_grad(lambda z: fn(z, click, conversion), logits)
        pval, pgrad = _value_and_grad(lambda z: fn(z, click[perm], conversion[perm]), logits[perm])
        assert pval.item() == pytest.approx(val.item(), rel=1e-12)
        torch.testing.assert_close(pgrad, grad[perm])


def test_sum_and_mean_relation():
    logits, click, conversion = _random_batch(3, n=30)
    p = (click == 1) & (conversion == 1)
    c, u = (click == 1) & (conversion == 0), click == 0
    n_p, n_c, n_u = int(p.sum()), int(c.sum()), int(u.sum())
    assert min(n_p, n_c, n_u) > 0
    pc, pu = p | c, p | u  # sub-batches holding one term each
    mean_pc = pwiser_loss(logits[pc], click[pc], conversion[pc])
    mean_pu = pwiser_loss(logits[pu], click[pu], conversion[pu])
    mean = pwiser_loss(logits, click, conversion)
    total = pwiser_loss(logits, click, conversion, norm="sum")
    assert mean.item() == pytest.approx((mean_pc + mean_pu).item(), rel=1e-12)
    assert total.item() == pytest.approx((n_p * n_c * mean_pc + n_p * n_u * mean_pu).item())


def test_sparse_large_batch_two_positives():
    # Real data's shape: B = 2048 with 2 conversions; reference by plain float loops.
    logits, click, _ = _random_batch(11, n=2048, dtype=torch.float32)
    conversion = torch.zeros_like(click)
    pos = torch.nonzero(click).flatten()[:2]
    conversion[pos] = 1.0
    got = pwiser_loss(logits, click, conversion, phi="logistic", score="logit").item()
    s, ck, cv = logits.tolist(), click.tolist(), conversion.tolist()
    p = [i for i in range(2048) if cv[i] == 1]
    terms = []
    for neg, m in (([k for k in range(2048) if ck[k] == 1 and cv[k] == 0], 0.05),
                   ([k for k in range(2048) if ck[k] == 0], 0.1)):
        vals = [PHI_REF["logistic"](m - (s[i] - s[k])) for i in p for k in neg]
        terms.append(sum(vals) / len(vals))
    assert got == pytest.approx(sum(terms), rel=1e-5)


# ---- dtypes ---------------------------------------------------------------------------------


def test_bfloat16_and_autocast():
    logits, click, conversion = _random_batch(5, n=64, dtype=torch.float32)
    low = logits.bfloat16().requires_grad_(True)
    loss = pwiser_loss(low, click, conversion)
    assert loss.dtype == torch.float32
    assert loss.item() == pwiser_loss(low.detach().float(), click, conversion).item()
    loss.backward()
    assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = LOSSES.get("pwiser")({"ctr": low, "ctcvr": low - 1}, click, conversion)
    assert total.dtype == torch.float32 and torch.isfinite(total)


# ---- argument checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(phi="square"), "squared_hinge, hinge, logistic"),
        (dict(score="probability"), "prob, logit"),
        (dict(norm="none"), "pairs, paper, sum"),
        (dict(m1=-0.1), "m1"),
        (dict(m2=float("nan")), "m2"),
    ],
)
def test_pure_function_rejects_bad_arguments(kwargs, match):
    logits, click, conversion = _random_batch(0)
    with pytest.raises(ValueError, match=match):
        pwiser_loss(logits, click, conversion, **kwargs)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="conversion"):
        pwiser_loss(torch.zeros(4), torch.zeros(4), torch.zeros(3))


# ---- registered losses ----------------------------------------------------------------------


def _outputs(seed: int, n: int = 20):
    logits, click, conversion = _random_batch(seed, n=n)
    ctcvr = logits - 1.0 + 0.3 * torch.randn(n, generator=torch.Generator().manual_seed(99),
                                             dtype=torch.float64)
    return {"ctr": logits, "ctcvr": ctcvr}, click, conversion


def _brute_bce(outputs, click, conversion):
    def one(z, y):
        terms = [-(yi * math.log(_score(zi, "prob")) + (1 - yi) * math.log(1 - _score(zi, "prob")))
                 for zi, yi in zip(z.tolist(), y.tolist())]
        return sum(terms) / len(terms)

    return (one(outputs["ctr"], click) + one(outputs["ctcvr"], conversion)) / 2


def test_registry_names_defaults_and_summaries():
    assert LOSSES.names() == ["bce", "pwiser", "graded", "ranknet", "listce"]
    assert all(loss_info(n).summary and loss_info(n).display_name for n in LOSSES.names())
    assert loss_params("bce") == {}
    assert loss_params("pwiser") == dict(lam=0.5, m1=0.05, m2=0.1, phi="squared_hinge",
                                         score="prob", head="ctr", norm="pairs")
    assert loss_params("ranknet") == dict(lam=0.5, score="logit", head="ctr")
    assert loss_params("graded") == dict(lam=0.5, temperature=1.0)
    assert loss_params("listce") == dict(alpha=0.9)


@pytest.mark.parametrize("seed", range(2))
def test_bce_matches_per_sample_formula(seed):
    outputs, click, conversion = _outputs(seed)
    total, parts = LOSSES.get("bce")(outputs, click, conversion)
    assert total.item() == pytest.approx(_brute_bce(outputs, click, conversion), rel=1e-12)
    assert parts["bce"].item() == total.item() and not parts["bce"].requires_grad


@pytest.mark.parametrize("head,phi,score", list(itertools.product(HEADS, PHIS, SCORES)))
def test_pwiser_objective_matches_brute_force(head, phi, score):
    outputs, click, conversion = _outputs(2)
    opts = dict(lam=0.7, m1=0.1, m2=0.2, phi=phi, score=score, head=head)
    total, parts = LOSSES.get("pwiser")(outputs, click, conversion, **opts)
    heads = ("ctr", "ctcvr") if head == "both" else (head,)
    term = sum(_brute_pwiser(outputs[h], click, conversion, 0.1, 0.2, phi, score) for h in heads)
    expected = _brute_bce(outputs, click, conversion) + 0.7 * term.item()
    assert total.item() == pytest.approx(expected, rel=1e-10)
    assert parts["pwiser"].item() == pytest.approx(term.item(), rel=1e-10)


@pytest.mark.parametrize("name", ["pwiser", "ranknet"])
def test_lambda_zero_equals_bce_exactly(name):
    outputs, click, conversion = _outputs(4)
    x = outputs["ctr"].clone().requires_grad_(True)
    total, _ = LOSSES.get(name)({**outputs, "ctr": x}, click, conversion, lam=0)
    (g,) = torch.autograd.grad(total, x)
    y = outputs["ctr"].clone().requires_grad_(True)
    base, _ = LOSSES.get("bce")({**outputs, "ctr": y}, click, conversion)
    (gb,) = torch.autograd.grad(base, y)
    assert total.item() == base.item() and torch.equal(g, gb)


@pytest.mark.parametrize("seed,score", list(itertools.product(range(3), SCORES)))
def test_ranknet_matches_brute_force(seed, score):
    outputs, click, conversion = _outputs(seed)
    logits = outputs["ctr"]

    def brute(z):
        s = torch.sigmoid(z) if score == "prob" else z
        pairs = [F.softplus(-(s[i] - s[k])) for i in range(len(z)) for k in range(len(z))
                 if click[i] == 1 and click[k] == 0]
        return sum(pairs) / len(pairs)

    got, got_grad = _value_and_grad(lambda z: ranknet_loss(z, click, score=score), logits)
    ref, ref_grad = _value_and_grad(brute, logits)
    assert got.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(got_grad, ref_grad)
    total, parts = LOSSES.get("ranknet")(outputs, click, conversion, lam=0.3, score=score)
    expected = _brute_bce(outputs, click, conversion) + 0.3 * ref.item()
    assert total.item() == pytest.approx(expected, rel=1e-12)
    assert ranknet_loss(logits, torch.ones_like(click)).item() == 0.0  # no non-clicks


def test_ranknet_ignores_conversions():
    outputs, click, conversion = _outputs(1)
    a = ranknet_loss(outputs["ctr"], click)
    _, parts = LOSSES.get("ranknet")(outputs, click, torch.zeros_like(conversion))
    assert parts["ranknet"].item() == a.item()


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("pwiser", dict(lam=-0.1), "--lambda"),
        ("ranknet", dict(lam=-1), "--lambda"),
        ("pwiser", dict(lam="0.5"), "--lambda"),
        ("pwiser", dict(gamma=2.0), "gamma"),
        ("bce", dict(lam=0.5), "'lam'"),
        ("pwiser", dict(phi="cube"), "squared_hinge, hinge, logistic"),
        ("pwiser", dict(head="cvr"), "ctr, ctcvr, both"),
        ("pwiser", dict(m2=-0.1), "--m2"),
        ("ranknet", dict(norm="paper"), "'norm'"),
        ("graded", dict(temperature=0.0), "> 0"),
        ("graded", dict(m1=0.1), "'m1'"),
        ("listce", dict(alpha=1.5), "<= 1"),
        ("listce", dict(lam=0.5), "'lam'"),
        ("ranknet", dict(head="cvr"), "ctr, ctcvr, both"),
    ],
)
def test_bad_params_raise_config_error(name, params, match):
    outputs, click, conversion = _outputs(0)
    with pytest.raises(ConfigError, match=match):
        LOSSES.get(name)(outputs, click, conversion, **params)


def test_none_params_mean_default():
    outputs, click, conversion = _outputs(0)
    fn = LOSSES.get("pwiser")
    a, _ = fn(outputs, click, conversion, lam=None, phi=None)
    b, _ = fn(outputs, click, conversion)
    assert a.item() == b.item()
    assert LOSSES.get("bce")(outputs, click, conversion, **{})[0].item() == pytest.approx(
        _brute_bce(outputs, click, conversion), rel=1e-12)


@pytest.mark.parametrize("name", ["bce", "pwiser", "ranknet"])
def test_aux_loss_is_added(name):
    outputs, click, conversion = _outputs(6)
    aux = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)
    plain, parts = LOSSES.get(name)({**outputs, "cvr": outputs["ctr"] + 5}, click, conversion)
    with_aux, aux_parts = LOSSES.get(name)({**outputs, "aux_loss": aux}, click, conversion)
    assert with_aux.item() == pytest.approx(plain.item() + 0.25, rel=1e-12)
    assert "aux" not in parts and aux_parts["aux"].item() == 0.25
    with_aux.backward()
    assert aux.grad.item() == 1.0


def test_bce_loss_pure_function_float32_labels_int8():
    outputs, click, conversion = _outputs(8)
    got = bce_loss(outputs["ctr"].float(), outputs["ctcvr"].float(), click.to(torch.int8),
                   conversion.to(torch.int8))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_brute_bce(outputs, click, conversion), rel=1e-5)

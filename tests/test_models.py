"""Tests of the model zoo, parametrised over the registry: a new model is tested by existing
tests."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SAMPLES as CONFTEST_SAMPLES
from prlbench.errors import ConfigError
from prlbench.models import (MODEL_PRESETS, MODELS, create_model, hyperparameters,
                             model_summaries, presets)
from prlbench.models.layers import MLP, ExpertBank, Gate, logit_of_product
from prlbench.models.metaheac import logit_of_mixture

VOCAB = [7, 5, 11]  # three categorical fields
NUM = 4  # numerical features
B = 32
NAMES = MODELS.names()
PRESETS = list(MODEL_PRESETS)
ALLOWED_KEYS = {"ctr", "ctcvr", "cvr", "aux_loss"}
SAMPLES = CONFTEST_SAMPLES / "aliexpress_mtreclib_format"


def make_batch(seed: int = 0, vocab=VOCAB, num=NUM, batch=B):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, v, (batch,), generator=g) for v in vocab], dim=1)
    numerical = torch.rand(batch, num, generator=g)
    click = (torch.rand(batch, generator=g) < 0.5).float()
    conversion = click * (torch.rand(batch, generator=g) < 0.5).float()  # conversion implies click
    return cat, numerical, click, conversion


def build(name: str, preset: str = "small", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_model(name, vocab_sizes=VOCAB, num_numerical=NUM, preset=preset, **overrides)


def graph_leaves(output: torch.Tensor) -> list[torch.Tensor]:
    """The trainable leaf tensors that `output` was computed from (walks the autograd graph)."""
    leaves, seen, stack = [], set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf
            leaves.append(node.variable)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return leaves


def bce_total(out: dict, click, conversion) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(out["ctr"], click)
    loss = loss + F.binary_cross_entropy_with_logits(out["ctcvr"], conversion)
    return loss + (out["aux_loss"].mean() if "aux_loss" in out else 0.0)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_finite_logits_of_shape_b(name, preset):
    cat, num, _, _ = make_batch()
    model = build(name, preset)
    for mode in (model.train, model.eval):
        mode()
        out = model(cat, num)
        assert {"ctr", "ctcvr"} <= set(out) <= ALLOWED_KEYS
        for key, value in out.items():
            assert value.shape == (B,), key
            assert torch.isfinite(value).all(), key


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name, preset):
    cat, num, click, conversion = make_batch()
    model = build(name, preset)
    loss = bce_total(model(cat, num), click, conversion)
    assert torch.isfinite(loss)
    # Every weight the forward pass uses must be registered (MTReclib's PLE kept gates in plain
    # lists: used, but invisible to the optimizer and to state_dict).
    registered = {id(p) for p in model.parameters()}
    assert all(id(leaf) in registered
               for leaf in graph_leaves(loss)), f"{name}: unregistered weights"
    loss.backward()
    for pname, p in model.named_parameters():
        # None means the parameter is not in the graph: an unregistered / unused gate or expert.
        assert p.grad is not None, f"{name}: {pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), pname
    for mname, module in model.named_modules():
        if isinstance(module, Gate):
            assert module.linear.weight.grad.abs().sum() > 0, f"{name}: gate {mname} does not learn"


@pytest.mark.parametrize("name", NAMES)
def test_gates_are_per_example_softmaxes(name):
    """A gate's weights for one example must not depend on the rest of the batch (a BatchNorm
    inside the gate, torch-rechub's fault, would make them) and must sum to 1."""
    model = build(name)  # train mode
    gates = [m for m in model.modules() if isinstance(m, Gate)]
    for gate in gates:
        x = torch.randn(B, gate.linear.in_features)
        w = gate(x)
        torch.testing.assert_close(w.sum(-1), torch.ones(B))
        torch.testing.assert_close(gate(x[:2])[0], w[0])


@pytest.mark.parametrize("name", NAMES)
def test_seeded_determinism(name):
    cat, num, click, conversion = make_batch()
    a, b, other = build(name, seed=3), build(name, seed=3), build(name, seed=4)
    for m in (a, b, other):
        m.eval()
    with torch.no_grad():
        assert torch.equal(a(cat, num)["ctr"], b(cat, num)["ctr"])
        assert not torch.equal(a(cat, num)["ctr"], other(cat, num)["ctr"])
    grads = []
    for m in (a, b):
        m.train()
        torch.manual_seed(11)  # dropout masks
        bce_total(m(cat, num), click, conversion).backward()
        grads.append([p.grad for p in m.parameters()])
    assert all(torch.equal(x, y) for x, y in zip(*grads))


@pytest.mark.parametrize("name", [n for n in NAMES if MODELS.get(n).guarantees_ctcvr_le_ctr])
def test_ctcvr_at_most_ctr_where_guaranteed(name):
    cat, num, _, _ = make_batch()
    model = build(name)
    for mode in (model.train, model.eval):
        mode()
        out = model(cat, num)
        assert (torch.sigmoid(out["ctcvr"]) <= torch.sigmoid(out["ctr"]) * (1 + 1e-6)).all()
        if "cvr" in out:  # ctcvr = ctr * cvr
            prod = torch.sigmoid(out["ctr"]) * torch.sigmoid(out["cvr"])
            torch.testing.assert_close(torch.sigmoid(out["ctcvr"]), prod)


def test_logit_of_product_is_exact_and_finite_at_extremes():
    a = torch.tensor([-60.0, -20.0, -3.0, 0.0, 2.0, 15.0, 40.0, 200.0]).repeat_interleave(8)
    b = torch.tensor([-60.0, -20.0, -3.0, 0.0, 2.0, 15.0, 40.0, 200.0]).repeat(8)
    a.requires_grad_(True), b.requires_grad_(True)
    got = logit_of_product(a, b)
    assert torch.isfinite(got).all()
    got.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    a, b, got = a.detach(), b.detach(), got.detach()
    assert (got <= a + 1e-4).all()  # ctcvr <= ctr in logit space too
    # Reference in float64 from the definition, where float64 can still represent it.
    p = torch.sigmoid(a.double()) * torch.sigmoid(b.double())
    ok = (p < 1 - 1e-9) & (p > 1e-300)
    ref = torch.log(p) - torch.log1p(-p)
    torch.testing.assert_close(got[ok].double(), ref[ok], rtol=1e-5, atol=1e-4)


def test_logit_of_mixture_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    w = torch.softmax(torch.randn(64, 5, generator=g), dim=-1)
    z = torch.randn(64, 5, generator=g) * 6
    p = (w.double() * torch.sigmoid(z.double())).sum(-1)
    torch.testing.assert_close(logit_of_mixture(w, z).double(), torch.log(p / (1 - p)),
                               rtol=1e-5, atol=1e-5)


def test_metaheac_output_is_not_capped_at_one_fifth():
    cat, num, _, _ = make_batch()
    model = build("metaheac").eval()
    with torch.no_grad():
        model.critics.biases[-1].fill_(3.0)  # every critic says p = sigmoid(3) = 0.95
        out = model(cat, num)
    expected = torch.full((B,), 1 / (1 + np.exp(-3.0)), dtype=torch.float32)
    torch.testing.assert_close(torch.sigmoid(out["ctr"]), expected, atol=0.05, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_works_without_numerical_features(name):
    cat, _, click, conversion = make_batch()
    torch.manual_seed(0)
    model = create_model(name, vocab_sizes=VOCAB, num_numerical=0)
    out = model(cat, torch.zeros(B, 0))
    assert out["ctr"].shape == (B,) and torch.isfinite(out["ctcvr"]).all()
    bce_total(out, click, conversion).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_with_weights_only(name, tmp_path):
    cat, num, click, conversion = make_batch()
    model = build(name, seed=1)
    bce_total(model(cat, num), click, conversion)  # train-mode pass: BatchNorm stats move
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    fresh = build(name, seed=2)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    model.eval(), fresh.eval()
    with torch.no_grad():
        for key in ("ctr", "ctcvr"):
            assert torch.equal(model(cat, num)[key], fresh(cat, num)[key])


def test_aitm_transfers_click_to_conversion_only():
    cat, num, _, _ = make_batch()
    model = build("aitm")
    out = model(cat, num)
    conversion_side = [p for n, p in model.named_parameters()
                       if n.split(".")[0] in model.conversion_side]
    click_side = list(model.click_tower.parameters())
    grads = torch.autograd.grad(out["ctr"].sum(), conversion_side, allow_unused=True,
                                retain_graph=True)
    assert all(g is None or not g.any() for g in grads)
    # ... while the click tower does reach the conversion output (the transfer exists).
    grads = torch.autograd.grad(out["ctcvr"].sum(), click_side, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_aitm_calibrator_is_weighted_mean_of_excess():
    cat, num, _, _ = make_batch()
    for weight in (0.6, 1.5):
        out = build("aitm", calibrator_weight=weight).eval()(cat, num)
        excess = (torch.sigmoid(out["ctcvr"]) - torch.sigmoid(out["ctr"])).clamp_min(0)
        torch.testing.assert_close(out["aux_loss"].mean(), weight * excess.mean())


def mlp_params(in_dim: int, dims) -> int:
    """Linear (weights + bias) and BatchNorm (scale + shift) per layer."""
    total = 0
    for width in dims:
        total += in_dim * width + width + 2 * width
        in_dim = width
    return total


def test_paper_mmoe_parameter_count_matches_the_architecture():
    p = MODEL_PRESETS["paper"]
    d, E, bottom, tower = p["embed_dim"], p["num_experts"], p["bottom_dims"], p["tower_dims"]
    in_dim = (len(VOCAB) + 1) * d
    expected = (
        sum(VOCAB) * d + NUM * d + d  # embedding table + numerical field
        + E * mlp_params(in_dim, bottom)  # experts
        + 2 * (in_dim * E + E)  # one gate per task
        + 2 * (mlp_params(bottom[-1], tower) + tower[-1] + 1)  # towers + output layer
    )
    model = build("mmoe", "paper")
    assert sum(p.numel() for p in model.parameters()) == expected
    assert d == 128 and E == 8 and tuple(bottom) == (512, 256) and tuple(tower) == (128, 64)


def test_ple_has_the_configured_experts_and_gates():
    model = build("ple", "paper")
    s, k = MODEL_PRESETS["paper"]["shared_experts"], MODEL_PRESETS["paper"]["task_experts"]
    assert len(model.levels) == len(MODEL_PRESETS["paper"]["bottom_dims"])
    for i, level in enumerate(model.levels):
        assert level.experts.num_experts == s + 2 * k
        assert [g.linear.out_features for g in level.task_gates] == [s + k, s + k]
        assert (level.shared_gate is None) == (i == len(model.levels) - 1)


def copy_into_bank(bank: ExpertBank, mlps: list[MLP], outs: list[torch.nn.Linear] | None) -> None:
    """Load E separate MLPs (and optional output Linears) into a bank's stacked tensors."""
    with torch.no_grad():
        for layer in range(len(bank.norms)):
            linears = [m[4 * layer] for m in mlps]
            norms = [m[4 * layer + 1] for m in mlps]
            bank.weights[layer].copy_(torch.stack([lin.weight for lin in linears]))
            bank.biases[layer].copy_(torch.stack([lin.bias for lin in linears]))
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(bank.norms[layer], attr).copy_(torch.cat([getattr(n, attr) for n in norms]))
        if outs:
            bank.weights[-1].copy_(torch.stack([o.weight for o in outs]))
            bank.biases[-1].copy_(torch.stack([o.bias for o in outs]))


@pytest.mark.parametrize("per_expert_input", [False, True])
@pytest.mark.parametrize("out_dim", [None, 1])
def test_expert_bank_equals_a_loop_of_mlps(per_expert_input, out_dim):
    torch.manual_seed(0)
    E, in_dim, dims = 3, 10, (8, 6)
    mlps = [MLP(in_dim, dims, dropout=0.0) for _ in range(E)]
    outs = [torch.nn.Linear(dims[-1], out_dim) for _ in range(E)] if out_dim else None
    for m in mlps:  # non-trivial BatchNorm state, so eval mode tests it too
        for layer in m:
            if isinstance(layer, torch.nn.BatchNorm1d):
                layer.running_mean.uniform_(-1, 1), layer.running_var.uniform_(0.5, 2)
                layer.weight.data.uniform_(0.5, 2), layer.bias.data.uniform_(-1, 1)
    bank = ExpertBank(in_dim, dims, E, dropout=0.0, out_dim=out_dim)
    copy_into_bank(bank, mlps, outs)
    x = torch.randn(16, E, in_dim) if per_expert_input else torch.randn(16, in_dim)
    for train in (False, True):  # eval: running stats; train: batch stats (dropout 0)
        bank.train(train), [m.train(train) for m in mlps]
        looped = []
        for e, m in enumerate(mlps):
            h = m(x[:, e] if per_expert_input else x)
            looped.append(outs[e](h) if outs else h)
        torch.testing.assert_close(bank(x), torch.stack(looped, dim=1), rtol=1e-5, atol=1e-5)


def test_dropout_keeps_units_at_its_rate_and_a_seed_fixes_the_mask():
    from prlbench.models.layers import dropout

    x = torch.ones(200_000)
    torch.manual_seed(5)
    a = dropout(x, 0.2, training=True)
    torch.manual_seed(5)
    b = dropout(x, 0.2, training=True)
    assert torch.equal(a, b)
    kept = (a > 0).float().mean().item()
    assert abs(kept - 0.8) < 4 * (0.8 * 0.2 / x.numel()) ** 0.5  # binomial sd
    assert abs(a.mean().item() - 1.0) < 0.01  # inverted: the expectation is kept
    assert a.unique().tolist() == pytest.approx([0.0, 65536 / round(0.8 * 65536)])
    assert torch.equal(dropout(x, 0.2, training=False), x)
    assert torch.equal(dropout(x, 0.0, training=True), x)
    g = torch.ones(1000, requires_grad=True)
    y = dropout(g, 0.5, training=True)
    y.sum().backward()  # the gradient flows through the kept units only, scaled like them
    assert torch.equal(g.grad, y.detach()) and g.grad.unique().tolist() == [0.0, 2.0]


def test_a_version_1_checkpoint_of_a_bank_loads_into_the_new_layout():
    torch.manual_seed(0)
    bank = ExpertBank(10, (8, 6), 3, dropout=0.0, out_dim=2).eval()
    old = bank.state_dict()
    for i in range(3):  # version 1 stored [E, in, out]
        old[f"weights.{i}"] = old[f"weights.{i}"].transpose(1, 2).contiguous()
    old._metadata[""]["version"] = 1
    fresh = ExpertBank(10, (8, 6), 3, dropout=0.0, out_dim=2).eval()
    fresh.load_state_dict(old)
    x = torch.randn(5, 10)
    torch.testing.assert_close(fresh(x), bank(x), rtol=0, atol=0)
    unmarked = dict(old)  # no metadata: read by shape
    fresh = ExpertBank(10, (8, 6), 3, dropout=0.0, out_dim=2).eval()
    fresh.load_state_dict(unmarked)
    torch.testing.assert_close(fresh(x), bank(x), rtol=0, atol=0)


def test_create_model_errors_name_the_fix():
    with pytest.raises(ConfigError) as err:
        create_model("mmoee", vocab_sizes=VOCAB, num_numerical=NUM)
    assert all(n in str(err.value) for n in NAMES)
    with pytest.raises(ConfigError) as err:
        create_model("mmoe", vocab_sizes=VOCAB, num_numerical=NUM, num_expert=3)
    assert "num_expert" in str(err.value) and "num_experts" in str(err.value)
    with pytest.raises(ConfigError) as err:
        create_model("mmoe", vocab_sizes=VOCAB, num_numerical=NUM, preset="huge")
    assert all(p in str(err.value) for p in PRESETS)
    with pytest.raises(ConfigError, match="bottom_dims"):
        create_model("mmoe", vocab_sizes=VOCAB, num_numerical=NUM, bottom_dims="a,b")
    with pytest.raises(ConfigError, match="dropout"):
        create_model("mmoe", vocab_sizes=VOCAB, num_numerical=NUM, dropout=1.5)
    with pytest.raises(ConfigError, match="vocab_sizes"):
        create_model("mmoe", vocab_sizes=[3, 0], num_numerical=NUM)


def test_overrides_apply_and_none_means_preset():
    model = create_model("mmoe", vocab_sizes=VOCAB, num_numerical=NUM, num_experts=None,
                         dropout=None)
    assert model.experts.num_experts == MODEL_PRESETS["small"]["num_experts"]
    model = create_model("mmoe", vocab_sizes=VOCAB, num_numerical=NUM, num_experts=3,
                         bottom_dims="12,6")
    assert model.experts.num_experts == 3 and model.experts.output_dim == 6
    assert "num_experts" in hyperparameters("mmoe") and "num_experts" not in hyperparameters("aitm")


def test_listing_helpers():
    assert set(presets()) == set(MODEL_PRESETS)
    summaries = model_summaries()
    assert list(summaries) == NAMES and len(NAMES) == 8
    assert all(s and "\n" not in s for s in summaries.values())


def read_sample_rows():
    if not (SAMPLES / "train.csv").exists():
        pytest.skip("real samples absent (fresh clone)")
    with open(SAMPLES / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cat_cols = [c for c in rows[0] if c.startswith("categorical_")]
    num_cols = [c for c in rows[0] if c.startswith("numerical_")]
    codes, vocab = [], []
    for c in cat_cols:  # code 0 is reserved for unseen values, as in the cache
        _, inv = np.unique([r[c] for r in rows], return_inverse=True)
        codes.append(inv + 1), vocab.append(int(inv.max()) + 2)
    cat = torch.from_numpy(np.stack(codes, 1)).long()
    num = torch.tensor([[float(r[c]) for c in num_cols] for r in rows])
    click = torch.tensor([float(r["click"]) for r in rows])
    conversion = torch.tensor([float(r["conversion"]) for r in rows])
    return cat, num, click, conversion, vocab


@pytest.mark.parametrize("name", NAMES)
def test_fits_real_aliexpress_sample_rows(name):
    cat, num, click, conversion, vocab = read_sample_rows()
    torch.manual_seed(0)
    model = create_model(name, vocab_sizes=vocab, num_numerical=num.shape[1], dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = bce_total(model(cat, num), click, conversion)
        opt.zero_grad(), loss.backward(), opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_one_layer_bottom_and_tower(name):
    """Depth comes from the dims: one-width dims give one expert layer (and one PLE level)."""
    cat, num, click, conversion = make_batch()
    model = build(name, bottom_dims=(8,), tower_dims=(4,))
    bce_total(model(cat, num), click, conversion).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_create_model_takes_the_manifests_vocab_mapping():
    from prlbench.models import create_model

    sizes = {"categorical_1": 5, "categorical_2": 7}
    a = create_model("mmoe", vocab_sizes=sizes, num_numerical=3)
    b = create_model("mmoe", vocab_sizes=[5, 7], num_numerical=3)
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    with pytest.raises(ConfigError, match="vocab_sizes: expected sizes"):
        create_model("mmoe", vocab_sizes=["a", "b"], num_numerical=3)

"""train.embedding_optimizer: dense Adam (the default, unchanged), sparse_adam and
rowwise_adagrad (sparse table gradients, only the rows in the batch updated)."""

import hashlib
import json

import numpy as np
import pytest
import torch

from prlbench.models.layers import COMPUTATION
from typer.testing import CliRunner

from prlbench.cli import app
from prlbench.config import config_hash, resolve, run_id
from prlbench.data.cache import open_cache
from prlbench.data.loader import batches, load_split
from prlbench.engine import loop as loop_mod
from prlbench.engine import run as train_mod
from prlbench.engine.optim import (LazyAdam, _rows_and_values, OptimizerPair, RowWiseAdagrad,
                                   embedding_tables, make_optimizer)
from prlbench.errors import ConfigError, Interrupted
from prlbench.experiment.grid import CompareConfig
from prlbench.fileio import read_json
from prlbench.losses import LOSSES
from prlbench.models import create_model
from prlbench.report.analysis import _read_run
from prlbench.report.caption import _embedding_text

SPARSE = ("sparse_adam", "rowwise_adagrad")
VOCAB = [10, 20, 30]


def _cfg(**train):
    return resolve(None, {"train": {"threads": 1, **train}})


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("mmoe", vocab_sizes=VOCAB, num_numerical=2, preset="small")


def _batch(ids, n: int = 8, seed: int = 0):
    """A batch whose categorical columns (field-local ids) are drawn from `ids`."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(ids)
    cat = ids[torch.randint(len(ids), (n, len(VOCAB)), generator=g)]
    num = torch.randn(n, 2, generator=g)
    click = torch.tensor([1.0, 0.0] * (n // 2))
    return cat, num, click, click * torch.tensor([1.0, 0.0, 0.0, 0.0] * (n // 4))


def _step(model, opt, batch):
    cat, num, click, conv = batch
    loss, _ = LOSSES.get("bce")(model(cat, num), click, conv)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _table_rows(ids):
    """The global rows of the one table that field-local `ids` reach, in every field."""
    offsets = np.cumsum([0, *VOCAB[:-1]])
    return sorted({int(o + i) for o in offsets for i in ids})


# ---------------------------------------------------------------------------- the default
def test_default_is_one_dense_adam_and_keeps_existing_run_ids():
    cfg = _cfg()
    assert cfg.train.embedding_optimizer == "adam"
    model = _tiny_model()
    opt = make_optimizer(model, cfg.train)
    assert isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))
    assert opt.defaults["weight_decay"] == cfg.train.weight_decay
    assert not any(t.sparse for t in embedding_tables(model))
    # The run id is what it was before the field existed: the identity without the key.
    ident = cfg.identity()
    assert "embedding_optimizer" not in ident["train"]
    before = cfg.to_dict()
    for key in ("device", "threads", "checkpoint_every_s", "eval_batch_size",
                "embedding_optimizer", "max_steps"):  # the last three: left out at defaults
        before["train"].pop(key)
    before["model"]["computation"] = COMPUTATION  # the kernels' version (models.layers)
    assert ident == before
    payload = json.dumps({"config": before, "data": "sha"}, sort_keys=True)
    assert config_hash(cfg, "sha") == hashlib.sha256(payload.encode()).hexdigest()
    # A non-default choice is part of the identity, so it is a run of its own.
    for kind in SPARSE:
        other = _cfg(embedding_optimizer=kind)
        assert other.identity()["train"]["embedding_optimizer"] == kind
        assert run_id(other, "sha") != run_id(cfg, "sha")
    assert len({run_id(_cfg(embedding_optimizer=k), "sha") for k in SPARSE}) == 2


def test_default_loop_step_is_bit_for_bit_the_old_adam():
    batch = _batch(range(5))
    a, b = _tiny_model(), _tiny_model()
    cfg = _cfg().train
    opt_a = make_optimizer(a, cfg)
    opt_b = torch.optim.Adam(b.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(3):
        torch.manual_seed(5)
        _step(a, opt_a, batch)
        torch.manual_seed(5)
        _step(b, opt_b, batch)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


# ---------------------------------------------------------------------------- sparse options
@pytest.mark.parametrize("kind", SPARSE)
def test_sparse_options_update_only_the_rows_in_the_batch(kind):
    model = _tiny_model()
    opt = make_optimizer(model, _cfg(embedding_optimizer=kind).train)
    assert isinstance(opt, OptimizerPair)
    (table,) = embedding_tables(model)
    assert table.sparse
    dense_ids = {id(p) for g in opt.dense.param_groups for p in g["params"]}
    assert id(table.weight) not in dense_ids
    assert len(dense_ids) == len(list(model.parameters())) - 1

    first = _table_rows([0, 1, 2])
    w0 = table.weight.detach().clone()
    _step(model, opt, _batch([0, 1, 2]))
    assert table.weight.grad is not None and table.weight.grad.is_sparse
    w1 = table.weight.detach().clone()
    changed = torch.nonzero((w1 != w0).any(dim=1)).squeeze(1).tolist()
    assert changed == first  # the batch's rows moved, every other row kept its exact value
    state = opt.sparse.state[table.weight]
    moment = state["exp_avg"] if kind == "sparse_adam" else state["sum"].unsqueeze(1)
    assert torch.nonzero(moment.abs().sum(dim=1)).squeeze(1).tolist() == first
    kept = moment.clone()

    second = _table_rows([5, 6])
    _step(model, opt, _batch([5, 6], seed=1))
    w2 = table.weight.detach()
    changed = torch.nonzero((w2 != w1).any(dim=1)).squeeze(1).tolist()
    assert changed == second
    moment = state["exp_avg"] if kind == "sparse_adam" else state["sum"].unsqueeze(1)
    assert torch.equal(moment[first], kept[first])  # lazy: no decay of rows not in the batch


def test_dense_adam_with_weight_decay_moves_every_row():
    """The contrast that makes the option worth having: dense Adam touches the whole table."""
    model = _tiny_model()
    opt = make_optimizer(model, _cfg().train)
    (table,) = embedding_tables(model)
    w0 = table.weight.detach().clone()
    _step(model, opt, _batch([0]))
    _step(model, opt, _batch([0]))
    assert (table.weight.detach() != w0).any(dim=1).all()


def test_rowwise_adagrad_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 3)).astype(np.float32)
    lr, eps, wd = 0.1, 1e-8, 0.01
    p = torch.nn.Parameter(torch.from_numpy(w.copy()))
    opt = RowWiseAdagrad([p], lr=lr, eps=eps, weight_decay=wd)
    ref, acc = w.astype(np.float64), np.zeros(6)
    steps = [([1, 3, 1], rng.normal(size=(3, 3))), ([3, 4], rng.normal(size=(2, 3)))]
    for rows, g in steps:
        p.grad = torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(g, dtype=torch.float32),
                                         (6, 3), check_invariants=True)
        opt.step()
        dense = np.zeros((6, 3))
        np.add.at(dense, rows, g.astype(np.float32))  # a repeated id's gradients are summed
        for r in sorted(set(rows)):
            gr = dense[r] + wd * ref[r]
            acc[r] += np.mean(gr ** 2)
            ref[r] -= lr * gr / (np.sqrt(acc[r]) + eps)
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.state[p]["sum"].numpy(), acc, rtol=1e-5)
    assert opt.state[p]["sum"][[0, 2, 5]].eq(0).all()  # rows never in a batch: no state
    np.testing.assert_array_equal(p.detach().numpy()[[0, 2, 5]], w[[0, 2, 5]])


# ---------------------------------------------------------------------------- LazyAdam
ROWS, DIMS = 12, 4


def _sparse_grads(n_steps: int, seed: int = 0, ids_per_step: int = 9):
    """Embedding-style gradients (sparse_dim 1, uncoalesced), repeated ids in every batch,
    rows 10 and 11 in none."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_steps):
        ids = torch.randint(6, (ids_per_step,), generator=g)
        ids = torch.cat([ids, ids[:3], torch.randint(6, 10, (2,), generator=g)])  # repeats
        out.append(torch.sparse_coo_tensor(ids.unsqueeze(0), torch.randn(len(ids), DIMS,
                                                                        generator=g),
                                           (ROWS, DIMS), check_invariants=True))
    return out


def _table(seed: int = 0):
    return torch.nn.Parameter(torch.randn(ROWS, DIMS, generator=torch.Generator().manual_seed(
        seed)))


def _assert_same_trajectory(p, opt, q, ref):
    torch.testing.assert_close(p.detach(), q.detach())
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(opt.state[p][key], ref.state[q][key])
    assert opt.state[p]["step"] == ref.state[q]["step"]


def test_rows_and_values_sum_repeated_ids_as_coalesce_does_bit_for_bit():
    # ids repeated thousands of times: where the order of summation shows in the last bits
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.Embedding(500, 16, sparse=True)
    ids = torch.randint(500, (512, 18), generator=g)
    ids[:, :5] = torch.randint(5, (512, 5), generator=g)
    (emb(ids) * torch.randn(512, 18, 16, generator=g)).sum().backward()
    grad = emb.weight.grad
    assert not grad.is_coalesced()
    rows, values = _rows_and_values(grad, emb.weight)
    ref = grad.coalesce()
    assert torch.equal(rows, ref.indices()[0]) and torch.equal(values, ref.values())
    # coalesced already: taken as it is, no copy
    assert _rows_and_values(ref, emb.weight)[1].data_ptr() == ref._values().data_ptr()
    dense_rows, dense_values = _rows_and_values(ref.to_dense(), emb.weight)
    assert torch.equal(dense_rows, rows) and torch.equal(dense_values, values)


def test_lazy_adam_matches_sparse_adam():
    p, q = _table(), _table()
    opt, ref = LazyAdam([p], lr=0.01), torch.optim.SparseAdam([q], lr=0.01)
    for grad in _sparse_grads(10):
        assert not grad.is_coalesced()
        p.grad, q.grad = grad, grad.clone()
        opt.step()
        ref.step()
        _assert_same_trajectory(p, opt, q, ref)
    state = opt.state[p]
    assert type(state["step"]) is int and state["step"] == 10
    for key in ("exp_avg", "exp_avg_sq"):  # SparseAdam's state: shapes and dtypes
        assert state[key].shape == ref.state[q][key].shape and state[key].dtype == p.dtype


def test_lazy_adam_weight_decay_is_sparse_adam_on_the_decayed_batch_rows():
    wd = 0.1
    p, q = _table(), _table()
    opt, ref = LazyAdam([p], lr=0.01, weight_decay=wd), torch.optim.SparseAdam([q], lr=0.01)
    for grad in _sparse_grads(10, seed=1):
        p.grad = grad
        g = grad.coalesce()
        rows = g.indices()[0]
        q.grad = torch.sparse_coo_tensor(g.indices(), g.values() + wd * q.detach()[rows],
                                         g.shape, check_invariants=True)
        opt.step()
        ref.step()
        _assert_same_trajectory(p, opt, q, ref)


def test_a_sparse_adam_state_dict_loads_into_lazy_adam_and_continues(tmp_path):
    grads = _sparse_grads(9, seed=2)
    q = _table()
    ref = torch.optim.SparseAdam([q], lr=0.01)
    for grad in grads[:4]:
        q.grad = grad
        ref.step()
    torch.save({"optimizer": ref.state_dict(), "table": q.detach()}, tmp_path / "state.pt")
    saved = torch.load(tmp_path / "state.pt", weights_only=True)  # as a checkpoint resumes
    p = torch.nn.Parameter(saved["table"].clone())
    opt = LazyAdam([p], lr=0.5, weight_decay=0.0)
    opt.load_state_dict(saved["optimizer"])
    assert opt.param_groups[0]["lr"] == 0.01  # the checkpoint's hyperparameters, as any optimizer
    assert opt.param_groups[0]["weight_decay"] == 0.0  # SparseAdam has none: the constructor's
    _assert_same_trajectory(p, opt, q, ref)
    for grad in grads[4:]:
        p.grad, q.grad = grad, grad.clone()
        opt.step()
        ref.step()
        _assert_same_trajectory(p, opt, q, ref)
    # its own state_dict round-trips, weight decay included
    other = LazyAdam([torch.nn.Parameter(p.detach().clone())], weight_decay=0.3)
    other.load_state_dict(LazyAdam([_table()], weight_decay=0.2).state_dict())
    assert other.param_groups[0]["weight_decay"] == 0.2


def test_lazy_adam_leaves_the_rows_not_in_the_batch_bit_for_bit():
    p = _table()
    opt = LazyAdam([p], lr=0.01, weight_decay=0.1)
    for grad in _sparse_grads(3, seed=3):  # rows 10 and 11 never in a batch
        p.grad = grad
        opt.step()
    state = opt.state[p]
    assert state["exp_avg"][10:].eq(0).all() and state["exp_avg_sq"][10:].eq(0).all()
    before = [t.clone() for t in (p.detach(), state["exp_avg"], state["exp_avg_sq"])]
    batch = torch.tensor([[1, 4, 1, 7]])
    p.grad = torch.sparse_coo_tensor(batch, torch.randn(4, DIMS), (ROWS, DIMS),
                                     check_invariants=True)
    opt.step()
    after = (p.detach(), state["exp_avg"], state["exp_avg_sq"])
    others = [r for r in range(ROWS) if r not in (1, 4, 7)]
    for b, a in zip(before, after):
        assert torch.equal(a[others], b[others])  # values and both moments, bit for bit
        assert (a[[1, 4, 7]] != b[[1, 4, 7]]).any(dim=1).all()


def test_lazy_adam_takes_a_dense_gradient_as_its_non_zero_rows():
    p, q = _table(), _table()
    opt, ref = LazyAdam([p], lr=0.01, weight_decay=0.1), LazyAdam([q], lr=0.01, weight_decay=0.1)
    for grad in _sparse_grads(4, seed=4):
        p.grad, q.grad = grad.to_dense(), grad
        opt.step()
        ref.step()
        _assert_same_trajectory(p, opt, q, ref)
    p.grad = torch.zeros(ROWS, DIMS)  # nothing in the batch: the step is counted, nothing moves
    w = p.detach().clone()
    opt.step()
    assert opt.state[p]["step"] == 5 and torch.equal(p.detach(), w)
    with pytest.raises(ValueError, match="2-D"):
        v = torch.nn.Parameter(torch.zeros(3))
        v.grad = torch.ones(3)
        LazyAdam([v]).step()


def test_sparse_adam_option_is_lazy_adam_with_the_configured_weight_decay():
    opt = make_optimizer(_tiny_model(), _cfg(embedding_optimizer="sparse_adam",
                                             weight_decay=0.01).train)
    assert type(opt.sparse) is LazyAdam
    assert opt.sparse.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("kind", ("adam", *SPARSE))
def test_each_option_lowers_the_training_loss_on_synthetic_data(data_dir, kind):
    manifest = open_cache(data_dir, "synthetic")
    train = load_split(data_dir, "synthetic", "train", manifest=manifest)
    cols = manifest["columns"]
    torch.manual_seed(0)
    model = create_model("mmoe", vocab_sizes=[manifest["vocab_sizes"][c]
                                              for c in cols["categorical"]],
                         num_numerical=len(cols["numerical"]), preset="small")
    # rowwise_adagrad's step shrinks as 1/sqrt(sum): a larger lr than Adam's suits it
    opt = make_optimizer(model, _cfg(embedding_optimizer=kind,
                                     lr=0.05 if kind == "rowwise_adagrad" else 0.01).train)
    batch = next(batches(train, 512, shuffle=True, generator=torch.Generator().manual_seed(0)))
    fixed = (batch.categorical, batch.numerical, batch.click, batch.conversion)
    model.train()
    losses = [_step(model, opt, fixed) for _ in range(25)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])


# ---------------------------------------------------------------------------- checkpoints
def test_optimizer_pair_state_dict_holds_both_and_round_trips():
    model = _tiny_model()
    opt = make_optimizer(model, _cfg(embedding_optimizer="rowwise_adagrad").train)
    _step(model, opt, _batch([0, 1]))
    sd = opt.state_dict()
    assert set(sd) == {"dense", "sparse"}
    other = make_optimizer(_tiny_model(), _cfg(embedding_optimizer="rowwise_adagrad").train)
    other.load_state_dict(sd)
    (p,) = other.sparse.param_groups[0]["params"]
    assert torch.equal(other.sparse.state[p]["sum"], opt.sparse.state[
        opt.sparse.param_groups[0]["params"][0]]["sum"])
    with pytest.raises(KeyError):  # a dense Adam's state is not this run's: DamagedCheckpoint
        other.load_state_dict(torch.optim.Adam(model.parameters()).state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("kind", SPARSE)
def test_interrupted_then_resumed_equals_uninterrupted(data_dir, tmp_path, monkeypatch,
                                                       stop_after, kind):
    cfg = resolve(None, {"loss": {"name": "pwiser"}, "train": {
        "epochs": 2, "batch_size": 512, "threads": 1, "embedding_optimizer": kind}})
    whole = train_mod.train_run(cfg, data_dir=data_dir, out=tmp_path / "whole", progress=False)
    assert read_json(whole / "config.json")["train"]["embedding_optimizer"] == kind
    assert _read_run(whole)["embedding_optimizer"] == kind  # the report's runs frame
    with monkeypatch.context() as m:
        m.setattr(loop_mod, "StopFlag", lambda: stop_after(15))  # mid-epoch 2 (~12 steps/epoch)
        with pytest.raises(Interrupted, match="--resume"):
            train_mod.train_run(cfg, data_dir=data_dir, out=tmp_path / "cut", progress=False)
    part = next((tmp_path / "cut" / "runs").glob("*.partial"))
    state = torch.load(part / "state.pt", weights_only=True)
    assert set(state["optimizer"]) == {"dense", "sparse"}
    resumed = train_mod.train_run(cfg, data_dir=data_dir, out=tmp_path / "cut", resume=True,
                                  progress=False)
    a = torch.load(whole / "best.pt", weights_only=True)
    b = torch.load(resumed / "best.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    m1, m2 = read_json(whole / "metrics.json"), read_json(resumed / "metrics.json")
    m1.pop("seconds"), m2.pop("seconds")
    assert m1 == m2


# ---------------------------------------------------------------------------- flags
def test_a_bad_value_is_a_config_error_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="adam, sparse_adam, rowwise_adagrad, got 'sgd'"):
        _cfg(embedding_optimizer="sgd")
    with pytest.raises(ConfigError, match="--embedding-optimizer.*sparse_adam"):
        CompareConfig.resolve(None, {"datasets": "synthetic", "models": "mmoe",
                                     "losses": "bce", "seeds": "2", "format": "md",
                                     "embedding_optimizer": "sgd"})
    r = CliRunner().invoke(app, ["train", "--embedding-optimizer", "sgd", "--quiet"])
    assert r.exit_code != 0 and "rowwise_adagrad" in r.output


def test_compare_passes_the_choice_to_every_run():
    cc = CompareConfig.resolve(None, {"datasets": "synthetic", "models": "mmoe",
                                      "losses": "bce", "seeds": "2", "format": "md",
                                      "embedding_optimizer": "sparse_adam"})
    assert cc.grid.base.train.embedding_optimizer == "sparse_adam"


# ---------------------------------------------------------------------------- report
def test_the_caption_names_a_non_default_embedding_optimizer():
    from types import SimpleNamespace

    import pandas as pd

    def text(*kinds):
        return _embedding_text(SimpleNamespace(runs=pd.DataFrame({"embedding_optimizer": kinds})))

    assert text("adam", "adam") == ""
    assert text("sparse_adam", "sparse_adam") == ("Embeddings trained with sparse Adam (rows in "
                                                  "the batch only).")
    assert "row-wise Adagrad" in text("rowwise_adagrad") and "some runs" not in text(
        "rowwise_adagrad")
    assert "some runs; the others dense Adam" in text("adam", "sparse_adam")
    assert _embedding_text(SimpleNamespace(runs=pd.DataFrame({"seed": [1]}))) == ""


def test_training_steps_never_import_torch_dynamo():
    """Every optimizer option steps, saves and loads without importing torch._dynamo (70 MB of
    a job's own memory); a fresh interpreter, as this one may have imported it already."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from prlbench.config import resolve\n"
        "from prlbench.engine.optim import make_optimizer\n"
        "from prlbench.models import create_model\n"
        "for kind in ('adam', 'sparse_adam', 'rowwise_adagrad'):\n"
        "    m = create_model('mmoe', vocab_sizes=[5] * 3, num_numerical=2, preset='small')\n"
        "    cfg = resolve(None, {'train': {'embedding_optimizer': kind}})\n"
        "    opt = make_optimizer(m, cfg.train)\n"
        "    out = m(torch.randint(0, 5, (8, 3)), torch.randn(8, 2))\n"
        "    (out['ctr'].sum() + out['ctcvr'].sum()).backward()\n"
        "    opt.step(); opt.zero_grad(); opt.load_state_dict(opt.state_dict())\n"
        "print('torch._dynamo' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False", done.stderr

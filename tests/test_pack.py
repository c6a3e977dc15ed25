"""Packed seeds (prlbench.models.packed, prlbench.engine.pack): every member of a pack keeps its
solo run's semantics. Initial weights bit for bit; forward passes (dropout masks included) and
first steps to float tolerance; test metrics over seeds without a systematic difference; the
same run ids and files; resume after an interrupt; one member's failure leaves the others."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from prlbench.config import resolve
from prlbench.data.synthetic import preprocess_synthetic
from prlbench.engine import pack as pack_mod
from prlbench.engine import run as run_mod
from prlbench.engine.pack import (pack_key, slice_optimizer_state, stack_optimizer_states,
                                  train_pack)
from prlbench.errors import Interrupted
from prlbench.experiment.executors import LocalExecutor, pack_plan
from prlbench.fileio import read_json
from prlbench.losses import LOSSES
from prlbench.models import MODELS, create_model
from prlbench.models.packed import (CannotPack, member_state_dict, pack, shrink,
                                    split_outputs)

VOCAB, NUMERICAL, B = [7, 11, 5], 2, 48


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    preprocess_synthetic(d, rows=20_000, seed=0, progress=False)
    return d


def _cfg(seed=1, loss="bce", model="mmoe", **train):
    t = {"epochs": 2, "batch_size": 1024, "threads": 1, "seed": seed, **train}
    return resolve(None, {"model": {"name": model, "preset": "small"}, "loss": {"name": loss},
                          "train": t})


def _solo_models(name, seeds, **overrides):
    """Each seed's model as a solo run builds it, and the global RNG state right after (where
    its dropout draws start)."""
    models, states = [], []
    for s in seeds:
        torch.manual_seed(s)
        models.append(create_model(name, vocab_sizes=VOCAB, num_numerical=NUMERICAL,
                                   preset="small", **overrides))
        states.append(torch.get_rng_state())
    return models, states


def _generators(states):
    gens = []
    for st in states:
        g = torch.Generator()
        g.set_state(st)
        gens.append(g)
    return gens


def _batch(members=1):
    g = torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(0, v, (B,), generator=g) for v in VOCAB], 1)
    num = torch.randn(B, NUMERICAL, generator=g)
    return cat.repeat(members, 1), num.repeat(members, 1)


# ------------------------------------------------------------------------ the packed model
@pytest.mark.parametrize("name", MODELS.names())
def test_packed_initial_weights_are_the_solo_ones_bit_for_bit(name):
    models, states = _solo_models(name, (1, 2, 3))
    packed = pack(models, _generators(states))
    for s, m in enumerate(models):
        mine, solo = member_state_dict(packed, s), m.state_dict()
        assert mine.keys() == solo.keys()
        for k in solo:
            assert torch.equal(mine[k], solo[k]), (name, s, k)
        fresh = create_model(name, vocab_sizes=VOCAB, num_numerical=NUMERICAL, preset="small")
        fresh.load_state_dict(mine)  # a member's state loads into the solo model as it is


@pytest.mark.parametrize("name", MODELS.names())
def test_packed_forward_equals_each_solo_forward_dropout_masks_included(name):
    seeds = (1, 2, 3)
    models, states = _solo_models(name, seeds, dropout=0.3)
    packed = pack(models, _generators(states))
    cat, num = _batch()
    solo_out = []
    for m, st in zip(models, states):
        torch.set_rng_state(st)  # the solo run's dropout draws start here
        solo_out.append(m.train()(cat, num))
    packed.train()
    for mode in ("train", "eval"):
        if mode == "eval":
            packed.eval()
            solo_out = [m.eval()(cat, num) for m in models]
        got = split_outputs(packed(*_batch(len(seeds))), len(seeds))
        for s in range(len(seeds)):
            assert got[s].keys() == solo_out[s].keys()
            for k in solo_out[s]:
                torch.testing.assert_close(got[s][k], solo_out[s][k], rtol=1e-5, atol=1e-5,
                                           msg=f"{name} {mode} member {s} {k}")


def test_packed_dropout_draws_the_solo_masks_exactly():
    from prlbench.models.packed import PackedDropout, PackInfo

    x = torch.ones(3 * 64, 40)
    solo = []
    states = []
    for seed in (5, 6, 7):
        torch.manual_seed(seed)
        states.append(torch.get_rng_state())
        solo.append(torch.nn.Dropout(0.25).train()(x[:64]))
    layer = PackedDropout(torch.nn.Dropout(0.25), PackInfo(_generators(states))).train()
    assert torch.equal(layer(x), torch.cat(solo))


def test_a_layer_with_weights_of_an_unknown_kind_is_refused():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))

    with pytest.raises(CannotPack, match="scale"):
        pack([Scaled(), Scaled()])


def test_shrink_keeps_the_remaining_members_weights_and_optimizer_state():
    models, states = _solo_models("mmoe", (1, 2, 3))
    packed = pack(models, _generators(states))
    opt = torch.optim.Adam(packed.parameters(), lr=1e-2)
    cat, num = _batch(3)
    out = split_outputs(packed.train()(cat, num), 3)
    sum(o["ctr"].mean() + o["ctcvr"].mean() for o in out).backward()
    opt.step()
    before = [member_state_dict(packed, s) for s in (0, 2)]
    opt_before = slice_optimizer_state(opt.state_dict(), 2)
    shrink(packed, [0, 2], [opt])
    assert packed.pack_info.members == 2
    for s, state in enumerate(before):
        after = member_state_dict(packed, s)
        assert all(torch.equal(after[k], state[k]) for k in state)
    opt_after = slice_optimizer_state(opt.state_dict(), 1)
    for i, st in opt_before["state"].items():
        for k, v in st.items():
            assert torch.equal(opt_after["state"][i][k], v)
    split_outputs(packed(*_batch(2)), 2)  # the smaller pack still runs


def test_optimizer_states_round_trip_between_solo_and_packed():
    models, states = _solo_models("mmoe", (1, 2))
    packed = pack(models, _generators(states))
    opt = torch.optim.Adam(packed.parameters())
    out = split_outputs(packed.train()(*_batch(2)), 2)
    sum(o["ctr"].sum() for o in out).backward()
    opt.step()
    full = opt.state_dict()
    stacked = stack_optimizer_states([slice_optimizer_state(full, s) for s in (0, 1)])
    for i, st in full["state"].items():
        for k, v in st.items():
            assert torch.equal(stacked["state"][i][k], v)


# ----------------------------------------------------------------------- packed training
@pytest.mark.slow
def test_first_steps_agree_and_the_run_folders_are_the_solo_ones(data_dir, tmp_path):
    cfgs = [_cfg(seed=1, epochs=1), _cfg(seed=2, loss="pwiser", epochs=1)]
    solo = [run_mod.train_run(c, data_dir=data_dir, out=tmp_path / "solo", progress=False)
            for c in cfgs]
    packed = train_pack(cfgs, data_dir=data_dir, out=tmp_path / "pack", progress=False)
    assert [r.error for r in packed] == ["", ""]
    for a, r in zip(solo, packed):
        b = Path(r.run_dir)
        assert a.name == b.name  # the same run id
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        # One epoch (~18 steps) of Adam from the same start: the test predictions agree to
        # within 1 % of their mean at every row. (The weights are not compared one by one: a
        # bias right before a BatchNorm has a true gradient of zero, so its gradient is float
        # noise, which Adam scales to full-size steps in either run; BatchNorm cancels it.)
        pa, pb = (pd.read_parquet(d / "predictions.parquet") for d in (a, b))
        for col in ("p_ctr", "p_ctcvr"):
            assert (pa[col] - pb[col]).abs().max() < 0.01 * pa[col].mean(), col
        record = read_json(b / "run.json")
        assert record["status"] == "done"
        assert record["packed_with"] == [p.name for p in map(Path, (x.run_dir for x in packed))]
        assert "packed_with" not in read_json(a / "run.json")
        assert read_json(b / "config.json") == read_json(a / "config.json")


@pytest.mark.slow
def test_packed_and_solo_metrics_show_no_systematic_difference(data_dir, tmp_path):
    cfgs = [_cfg(seed=s, loss=loss, epochs=2) for loss in ("bce", "pwiser") for s in (1, 2)]
    solo = [read_json(run_mod.train_run(c, data_dir=data_dir, out=tmp_path / "solo",
                                        progress=False) / "metrics.json") for c in cfgs]
    packed = [read_json(Path(r.run_dir) / "metrics.json")
              for r in train_pack(cfgs, data_dir=data_dir, out=tmp_path / "pack",
                                  progress=False)]
    for key in ("ctr_auc", "ctcvr_auc"):
        deltas = [p[key] - s[key] for p, s in zip(packed, solo)]
        assert abs(sum(deltas) / len(deltas)) < 0.003, (key, deltas)
        assert max(map(abs, deltas)) < 0.02, (key, deltas)


@pytest.mark.slow
def test_an_interrupted_pack_resumes_to_the_uninterrupted_numbers(data_dir, tmp_path,
                                                                  monkeypatch, stop_after):
    cfgs = [_cfg(seed=s, epochs=2) for s in (1, 2)]
    whole = train_pack(cfgs, data_dir=data_dir, out=tmp_path / "whole", progress=False)
    with monkeypatch.context() as m:
        m.setattr(pack_mod, "StopFlag", lambda: stop_after(25))  # mid-epoch 2 (~18 steps each)
        with pytest.raises(Interrupted, match="--resume"):
            train_pack(cfgs, data_dir=data_dir, out=tmp_path / "cut", progress=False)
    parts = sorted((tmp_path / "cut" / "runs").glob("*.partial"))
    assert len(parts) == 2
    for part in parts:
        assert (part / "state.pt").exists()
        assert read_json(part / "run.json")["status"] == "interrupted"
    resumed = train_pack(cfgs, data_dir=data_dir, out=tmp_path / "cut", progress=False)
    for a, b in zip(whole, resumed):
        ma, mb = (read_json(Path(r.run_dir) / "metrics.json") for r in (a, b))
        ma.pop("seconds"), mb.pop("seconds")
        assert ma == mb
        assert read_json(Path(b.run_dir) / "run.json")["status"] == "done"
    # and a member's state.pt is a solo run's: one member resumes alone
    with monkeypatch.context() as m:
        m.setattr(pack_mod, "StopFlag", lambda: stop_after(25))
        with pytest.raises(Interrupted):
            train_pack(cfgs, data_dir=data_dir, out=tmp_path / "solo", progress=False)
    alone = run_mod.train_run(cfgs[0], data_dir=data_dir, out=tmp_path / "solo", resume=True,
                              progress=False)
    assert alone.name == Path(whole[0].run_dir).name
    assert read_json(alone / "run.json")["status"] == "done"


@pytest.mark.slow
def test_a_member_with_a_nan_loss_fails_alone_and_the_others_finish(data_dir, tmp_path,
                                                                    monkeypatch):
    real = LOSSES.get("pwiser")

    def poisoned(outputs, click, conversion, **params):
        total, parts = real(outputs, click, conversion, **params)
        return total * float("nan"), parts

    monkeypatch.setitem(LOSSES._items, "pwiser", poisoned)
    cfgs = [_cfg(seed=1), _cfg(seed=1, loss="pwiser"), _cfg(seed=2)]
    results = train_pack(cfgs, data_dir=data_dir, out=tmp_path, progress=False)
    assert results[1].run_dir is None and "became nan" in results[1].error
    assert all(r.run_dir and not r.error for r in (results[0], results[2]))
    failed = next((tmp_path / "runs").glob("*pwiser*.partial"))
    assert json.loads((failed / "run.json").read_text())["status"] == "failed"


# ------------------------------------------------------------------------------ planning
def test_pack_plan_groups_runs_that_differ_only_in_seed_and_loss():
    cfgs = ([_cfg(seed=s, loss=loss) for loss in ("bce", "pwiser") for s in (1, 2, 3)]
            + [_cfg(seed=1, model="ple"), _cfg(seed=2, model="ple"),
               _cfg(seed=1, embedding_optimizer="sparse_adam")])
    assert pack_key(cfgs[0]) == pack_key(cfgs[5]) != pack_key(cfgs[6])
    plan = pack_plan(cfgs, pack=True, workers=2)
    assert sorted(i for job in plan for i in job) == list(range(len(cfgs)))
    assert [0, 1, 2] in plan and [3, 4, 5] in plan  # six mmoe runs: one pack per worker
    assert [6] in plan and [7] in plan  # two ple runs, two workers: one each
    assert [8] in plan  # sparse embeddings are not packed
    assert pack_plan(cfgs, pack=False, workers=2) == [[i] for i in range(len(cfgs))]
    assert len(pack_plan(cfgs[:6], pack=True, workers=1, max_members=4)) == 2


@pytest.mark.slow
def test_compare_packed_gives_the_runs_of_compare_solo(data_dir, tmp_path):
    from prlbench.experiment.compare import compare
    from prlbench.experiment.grid import CompareConfig, Grid

    base = resolve(None, {"model": {"preset": "small"},
                          "train": {"epochs": 1, "batch_size": 1024, "threads": 1}},
                   finish=False)
    grid = Grid(datasets=("synthetic",), models=("mmoe",), losses=("bce", "pwiser"),
                seeds=(1, 2), loss_grid={}, base=base)
    found = {}
    for packed in (False, True):
        out = tmp_path / str(packed)
        res = compare(CompareConfig(grid=grid, formats=("md",), pack=packed),
                      data_dir=data_dir, out=out, progress=False,
                      executor=LocalExecutor(1, 1, pack=packed))
        found[packed] = sorted(o.run_id for o in res.outcomes)
        records = [read_json(o.run_dir / "run.json") for o in res.outcomes]
        assert all(("packed_with" in r) == packed for r in records)
        assert (out / "tables" / "auc.md").exists()
    assert found[True] == found[False]


def test_runs_pack_by_default_where_it_measured_faster():
    from prlbench.engine.pack import CPU_PACK_MAX_BATCH, pack_by_default
    from prlbench.experiment.grid import CompareConfig, Grid

    assert pack_by_default("cuda", 2048) and pack_by_default("cuda:1", 8192)
    assert pack_by_default("cpu", CPU_PACK_MAX_BATCH) and not pack_by_default("cpu", 2048)

    def cc(batch_size, pack=None):
        base = resolve(None, {"train": {"batch_size": batch_size}}, finish=False)
        grid = Grid(datasets=("synthetic",), models=("mmoe",), losses=("bce",), seeds=(1,),
                    base=base)
        return CompareConfig(grid=grid, pack=pack)

    assert cc(256).packed and not cc(2048).packed
    assert cc(2048, pack=True).packed and not cc(256, pack=False).packed

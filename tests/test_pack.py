"""Packed runs (prlbench.engine.pack): a pack's members take turns, each with its solo run's
arithmetic, so a run id gives the same bytes (best.pt, metrics.json, predictions) whether the run
trained alone or in a pack, whatever the pack's size, order or slot; the same run ids and files;
resume after an interrupt, as a pack or alone; one member's failure leaves the others."""

import json
from pathlib import Path

import pytest

from prlbench.config import resolve
from prlbench.data.synthetic import preprocess_synthetic
from prlbench.engine import loop as loop_mod
from prlbench.engine import run as run_mod
from prlbench.engine.pack import pack_key, train_pack
from prlbench.errors import Interrupted
from prlbench.experiment.executors import LocalExecutor, pack_plan
from prlbench.fileio import read_json
from prlbench.losses import LOSSES


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    preprocess_synthetic(d, rows=20_000, seed=0, progress=False)
    return d


def _cfg(seed=1, loss="bce", model="mmoe", **train):
    t = {"epochs": 2, "batch_size": 1024, "threads": 1, "seed": seed, **train}
    return resolve(None, {"model": {"name": model, "preset": "small"}, "loss": {"name": loss},
                          "train": t})


def _bytes(run_dir: Path) -> dict:
    """What a run id promises: its weights, test metrics and predictions, byte for byte (the
    timings in metrics.json aside)."""
    metrics = read_json(run_dir / "metrics.json")
    metrics.pop("seconds")
    return {"best.pt": (run_dir / "best.pt").read_bytes(), "metrics": metrics,
            "predictions": (run_dir / "predictions.parquet").read_bytes(),
            "history": [{k: v for k, v in e.items() if k != "train_seconds"}
                        for e in read_json(run_dir / "history.json")]}


# ------------------------------------------------------------------- a run id, its bytes
@pytest.mark.slow
def test_a_packed_run_is_its_solo_run_byte_for_byte_whatever_the_pack(data_dir, tmp_path):
    """Solo; a pack of two in either order; a pack of three with another loss and a run that
    stops at another epoch (members leave at different times): seed 1's files are the same."""
    one = _cfg(seed=1, epochs=2)
    solo = _bytes(run_mod.train_run(one, data_dir=data_dir, out=tmp_path / "solo",
                                    progress=False))
    packs = {"1,2": [one, _cfg(seed=2, epochs=2)], "2,1": [_cfg(seed=2, epochs=2), one],
             "3 mixed": [_cfg(seed=3, loss="pwiser", epochs=2), _cfg(seed=2, epochs=2), one]}
    for name, cfgs in packs.items():
        results = train_pack(cfgs, data_dir=data_dir, out=tmp_path / name, progress=False)
        assert [r.error for r in results] == [""] * len(cfgs), name
        mine = next(Path(r.run_dir) for r in results if Path(r.run_dir).name.endswith(
            Path(results[cfgs.index(one)].run_dir).name))
        assert _bytes(mine) == solo, name
        record = read_json(mine / "run.json")
        assert record["status"] == "done"
        assert record["packed_with"] == [Path(r.run_dir).name for r in results]


@pytest.mark.slow
def test_sparse_embedding_optimizers_pack_too(data_dir, tmp_path):
    cfgs = [_cfg(seed=s, epochs=1, embedding_optimizer="sparse_adam") for s in (1, 2)]
    solo = _bytes(run_mod.train_run(cfgs[1], data_dir=data_dir, out=tmp_path / "solo",
                                    progress=False))
    results = train_pack(cfgs, data_dir=data_dir, out=tmp_path / "pack", progress=False)
    assert [r.error for r in results] == ["", ""]
    assert _bytes(Path(results[1].run_dir)) == solo


@pytest.mark.slow
def test_an_interrupted_pack_resumes_to_the_uninterrupted_numbers(data_dir, tmp_path,
                                                                  monkeypatch, stop_after):
    cfgs = [_cfg(seed=s, epochs=2) for s in (1, 2)]
    whole = train_pack(cfgs, data_dir=data_dir, out=tmp_path / "whole", progress=False)
    with monkeypatch.context() as m:
        m.setattr(loop_mod, "StopFlag", lambda: stop_after(45))  # mid-epoch 2 (~18 steps each)
        with pytest.raises(Interrupted, match="--resume"):
            train_pack(cfgs, data_dir=data_dir, out=tmp_path / "cut", progress=False)
    parts = sorted((tmp_path / "cut" / "runs").glob("*.partial"))
    assert len(parts) == 2
    for part in parts:
        assert (part / "state.pt").exists()
        assert read_json(part / "run.json")["status"] == "interrupted"
    resumed = train_pack(cfgs, data_dir=data_dir, out=tmp_path / "cut", progress=False)
    for a, b in zip(whole, resumed):
        assert _bytes(Path(a.run_dir)) == _bytes(Path(b.run_dir))
        assert read_json(Path(b.run_dir) / "run.json")["status"] == "done"
    # a member's state.pt is a solo run's: one member resumes alone, to the same bytes
    with monkeypatch.context() as m:
        m.setattr(loop_mod, "StopFlag", lambda: stop_after(45))
        with pytest.raises(Interrupted):
            train_pack(cfgs, data_dir=data_dir, out=tmp_path / "solo", progress=False)
    alone = run_mod.train_run(cfgs[0], data_dir=data_dir, out=tmp_path / "solo", resume=True,
                              progress=False)
    assert alone.name == Path(whole[0].run_dir).name
    assert _bytes(alone) == _bytes(Path(whole[0].run_dir))


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
    assert [8] in plan  # another training setting: its own pack
    assert pack_plan(cfgs, pack=False, workers=2) == [[i] for i in range(len(cfgs))]
    assert len(pack_plan(cfgs[:6], pack=True, workers=1, max_members=4)) == 2


@pytest.mark.slow
def test_compare_packed_gives_the_runs_of_compare_solo_byte_for_byte(data_dir, tmp_path):
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
        found[packed] = {o.run_id: _bytes(o.run_dir) for o in res.outcomes}
        records = [read_json(o.run_dir / "run.json") for o in res.outcomes]
        assert all(("packed_with" in r) == packed for r in records)
        assert (out / "tables" / "auc.md").exists()
    assert found[True] == found[False]


def test_runs_are_not_packed_unless_asked():
    from prlbench.experiment.grid import CompareConfig, Grid

    def cc(batch_size, pack=None):
        base = resolve(None, {"train": {"batch_size": batch_size}}, finish=False)
        grid = Grid(datasets=("synthetic",), models=("mmoe",), losses=("bce",), seeds=(1,),
                    base=base)
        return CompareConfig(grid=grid, pack=pack)

    assert not cc(256).packed and not cc(2048).packed
    assert cc(2048, pack=True).packed and not cc(256, pack=False).packed

"""`prlbench compare`: the resumable grid, end to end on a tiny synthetic data set.

Each run is one epoch of a small model on ~6,000 rows (well under a second). Runs train in this
process (LocalExecutor(jobs=1)) so that a test can count, interrupt or poison training; one test
uses the process pool and one runs two `prlbench compare` processes at once.
"""

import itertools
from dataclasses import replace
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from prlbench.cli import app
from prlbench.config import resolve, run_id
from prlbench.data.cache import data_hash
from prlbench.engine import loop as loop_mod
from prlbench.engine import run as train_mod
from prlbench.engine import session as session_mod
from prlbench.errors import ConfigError, Interrupted
from prlbench.losses import LOSSES
from prlbench.experiment.compare import compare
from prlbench.experiment.executors import LocalExecutor, make_executor
from prlbench.experiment.grid import CompareConfig, Grid
from prlbench.store import PARTIAL, RunFolder, Store
from prlbench.fileio import read_json

SEEDS = (1, 2)
# The same settings as the CLI flags below (`--threads` is the executor's, not part of a run id).
BASE = {"model": {"preset": "small"}, "train": {"epochs": 1, "batch_size": 1024, "threads": 1}}
CLI_TRAIN = ["--epochs", "1", "--batch-size", "1024", "--preset", "small", "--jobs", "1",
             "--threads", "1", "-q"]
RUN_FILES = ("config.json", "run.json", "history.json", "best.pt", "metrics.json",
             "predictions.parquet")


def make_grid(models=("shared_bottom",), losses=("bce", "pwiser"), seeds=SEEDS,
              loss_grid=None) -> Grid:
    base = resolve(None, BASE, finish=False)
    return Grid(datasets=("synthetic",), models=tuple(models), losses=tuple(losses),
                seeds=tuple(seeds), loss_grid=loss_grid or {}, base=base)


def run_compare(grid: Grid, data_dir: Path, out: Path, executor=None):
    return compare(CompareConfig(grid=grid, formats=("md", "tex", "csv")), data_dir=data_dir,
                   out=out, progress=False, executor=executor or LocalExecutor(1, 1))


def expected_ids(data_dir: Path, models=("shared_bottom",)) -> list[str]:
    """The table's runs in the grid's order: per model and loss, every seed."""
    grid, sha = make_grid(models), data_hash(data_dir / "synthetic")
    return [run_id(grid.config("synthetic", m, loss, s, {}), sha)
            for m in models for loss in ("bce", "pwiser") for s in SEEDS]


def invoke_compare(data_dir: Path, out: Path, *args: str):
    if "--losses" not in args:  # the grid these tests were written for, whatever the default
        args = ("--losses", "bce,pwiser", *args)
    r = CliRunner().invoke(app, ["compare", "--datasets", "synthetic", "--data-dir",
                                 str(data_dir), "--out", str(out), *CLI_TRAIN, *args],
                           catch_exceptions=False)
    return r, " ".join(r.output.split())  # rich wraps long lines


@pytest.fixture
def fits(monkeypatch) -> list[str]:
    """Run ids whose training loop ran in this process, in order."""
    seen: list[str] = []
    real = loop_mod.Loop.steps

    def counted(self, **kw):  # the one training loop, alone or in a pack
        seen.append(self.folder.path.name.removesuffix(PARTIAL))
        yield from real(self, **kw)

    monkeypatch.setattr(loop_mod.Loop, "steps", counted)
    return seen


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """One finished grid: shared_bottom x (bce, pwiser) x seeds 1, 2 (read-only: copy it)."""
    out = tmp_path_factory.mktemp("finished")
    return out, run_compare(make_grid(), data_dir, out)


def copy_of(out: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(out, tmp_path / "copy"))


def metrics(run_dir: Path) -> dict:
    m = read_json(run_dir / "metrics.json")
    m.pop("seconds", None)
    return m


def run_names(runs: Path) -> list[str]:
    """The run folders (finished or partial), not the hidden lock folder."""
    return sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def run_stamps(out: Path) -> dict:
    """mtime of every run folder and every file in it (not the lock files in runs/.locks)."""
    stamps = {}
    for d in (out / "runs").iterdir():
        if d.is_dir() and not d.name.startswith("."):
            stamps[d.name] = d.stat().st_mtime_ns
            stamps.update({f"{d.name}/{p.name}": p.stat().st_mtime_ns for p in d.iterdir()})
    return stamps


def run_configs(out: Path) -> dict[str, dict]:
    return {d.name: read_json(d / "config.json")
            for d in (out / "runs").iterdir() if d.is_dir() and not d.name.startswith(".")}


# ----------------------------------------------------------------------- (a) full grid
@pytest.mark.slow
def test_a_small_grid_trains_every_run_and_writes_tables_plots_and_record(finished, data_dir):
    out, res = finished
    ids = expected_ids(data_dir)
    assert [o.run_id for o in res.outcomes] == ids
    assert [o.status for o in res.outcomes] == ["done"] * 4 and not res.failed
    for o in res.outcomes:
        assert o.run_dir == out / "runs" / o.run_id
        assert RunFolder(o.run_dir).is_finished()
        for name in RUN_FILES:
            assert (o.run_dir / name).exists(), (o.run_id, name)
        cfg = read_json(o.run_dir / "config.json")
        assert (cfg["model"]["name"], cfg["loss"]["name"], cfg["train"]["seed"]) == (
            o.cfg.model.name, o.cfg.loss.name, o.cfg.train.seed)
    assert not list((out / "runs").glob("*.partial"))

    record = read_json(out / "compare.json")
    assert [r["run_id"] for r in record["runs"]] == ids
    assert {(r["status"], r["error"]) for r in record["runs"]} == {("done", "")}
    assert record["models"] == ["shared_bottom"] and record["seeds"] == [1, 2]
    assert record["test"] == {"name": "twolevel", "correction": "holm", "alpha": 0.05,
                              "equivalence": None}

    tables = out / "tables"
    for name in ("auc.md", "auc.tex", "cells.csv"):
        assert (tables / name).stat().st_size > 0, name
    assert "PWiseR" in (tables / "auc.md").read_text()
    tex = (tables / "auc.tex").read_text()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") >= 1
    cells = pd.read_csv(tables / "cells.csv")
    # every CSV reads back as numbers where it holds numbers (lr once read np.float64(0.001))
    for name in ("cells.csv", "runs.csv", "delong.csv"):
        assert "np.float" not in (tables / name).read_text(), name
    for col in ("lr", "weight_decay", "mean", "delta_mean", "p", "twolevel_p"):
        assert pd.api.types.is_float_dtype(cells[col]), col
    ctr = cells[cells["metric"] == "ctr_auc"].set_index("arm")
    assert sorted(ctr.index) == ["bce", "pwiser"]
    # the marker's p is the two-level t's (the default test), computed from the predictions
    compared = cells[~cells["is_baseline"]]
    assert compared["twolevel_p"].notna().all()
    assert np.allclose(compared["p"], compared["twolevel_p"], equal_nan=False)
    for loss in ("bce", "pwiser"):  # the table's mean is the mean of the runs' test metrics
        values = [metrics(o.run_dir)["ctr_auc"] for o in res.outcomes if o.cfg.loss.name == loss]
        assert ctr.loc[loss, "n"] == 2
        assert ctr.loc[loss, "mean"] == pytest.approx(sum(values) / 2, rel=1e-12)

    for stem in ("forest", "validation"):
        assert (out / "plots" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "plots" / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    assert {tables / "auc.md", out / "plots" / "forest.png"} <= set(res.written)


# ----------------------------------------------------------------- (b) (c) reuse runs
@pytest.mark.slow
def test_b_a_second_compare_trains_nothing(finished, data_dir, tmp_path, fits):
    out = copy_of(finished[0], tmp_path)
    before = run_stamps(out)
    res = run_compare(make_grid(), data_dir, out)
    assert fits == []
    assert [o.status for o in res.outcomes] == ["reused"] * 4
    assert [o.run_id for o in res.outcomes] == expected_ids(data_dir)
    assert run_stamps(out) == before
    assert (out / "tables" / "cells.csv").read_text() == (
        finished[0] / "tables" / "cells.csv").read_text()
    statuses = {r["status"] for r in read_json(out / "compare.json")["runs"]}
    assert statuses == {"reused"}


@pytest.mark.slow
def test_c_one_more_model_trains_only_that_model(finished, data_dir, tmp_path, fits):
    out = copy_of(finished[0], tmp_path)
    before = run_stamps(out)
    res = run_compare(make_grid(models=("shared_bottom", "mmoe")), data_dir, out)
    new = [i for i in expected_ids(data_dir, ("shared_bottom", "mmoe")) if "-mmoe-" in i]
    assert sorted(fits) == sorted(new) and len(new) == 4
    assert {o.run_id: o.status for o in res.outcomes} == {
        **{i: "reused" for i in expected_ids(data_dir)}, **{i: "done" for i in new}}
    after = run_stamps(out)
    assert {k: after[k] for k in before} == before
    cells = pd.read_csv(out / "tables" / "cells.csv")
    assert set(cells["model"]) == {"shared_bottom", "mmoe"}


# --------------------------------------------------------------------- (d) interrupted
@pytest.mark.slow
def test_d_an_interrupted_compare_stops_and_then_continues_where_it_stopped(
        finished, data_dir, tmp_path, monkeypatch, fits, stop_after):
    out, ids = tmp_path / "cut", expected_ids(data_dir)
    flags = iter([stop_after(10**9), stop_after(3)])  # run 1 finishes; Ctrl-C at step 4 of run 2
    with monkeypatch.context() as m:
        m.setattr(loop_mod, "StopFlag", lambda: next(flags))
        with pytest.raises(Interrupted, match="interrupted at epoch 1, batch 4"):
            run_compare(make_grid(), data_dir, out)
    assert fits == ids[:2]  # Ctrl-C stops the grid: run 3 never starts
    assert RunFolder(Store(out).finished(ids[0]).path).is_finished()
    assert (Store(out).partial(ids[1]).path / "state.pt").exists()
    assert run_names(out / "runs") == sorted(
        [ids[0], ids[1] + PARTIAL])

    resumed: list[str] = []
    real_load = loop_mod.Loop.load_state

    def load_state(self, opt):
        resumed.append(self.folder.path.name)
        return real_load(self, opt)

    monkeypatch.setattr(loop_mod.Loop, "load_state", load_state)
    fits.clear()
    res = run_compare(make_grid(), data_dir, out)
    assert [o.status for o in res.outcomes] == ["reused", "done", "done", "done"]
    assert fits == ids[1:] and resumed == [ids[1] + PARTIAL]
    for o, whole in zip(res.outcomes, finished[1].outcomes):  # as if never interrupted
        assert o.run_id == whole.run_id and metrics(o.run_dir) == metrics(whole.run_dir)
    assert not list((out / "runs").glob("*.partial"))


# ------------------------------------------------------------------------ (e) failures
def _mmoe_explodes_at_batch_4(monkeypatch) -> None:
    """Every mmoe run raises in its 4th forward pass (mid-epoch); other models train."""
    real = session_mod.create_model

    def create_model(name, **kw):
        model = real(name, **kw)
        if name == "mmoe":
            calls, forward = itertools.count(), model.forward

            def exploding(*args):
                if next(calls) == 3:
                    raise RuntimeError("mmoe exploded")
                return forward(*args)

            model.forward = exploding
        return model

    monkeypatch.setattr(session_mod, "create_model", create_model)


@pytest.mark.slow
def test_e_a_failed_run_is_recorded_reported_and_the_rest_goes_on(data_dir, tmp_path,
                                                                 monkeypatch):
    out, args = tmp_path / "out", ("--models", "shared_bottom,mmoe", "--seeds", "1,2")
    with monkeypatch.context() as m:
        _mmoe_explodes_at_batch_4(m)
        r, text = invoke_compare(data_dir, out, *args)
    assert r.exit_code == 1
    assert "failed:" in text and "RuntimeError: mmoe exploded" in text
    runs = read_json(out / "compare.json")["runs"]
    assert len(runs) == 8
    for x in runs:
        if x["model"] == "shared_bottom":
            assert (x["status"], x["error"]) == ("done", "")
            assert RunFolder(Path(x["run_dir"])).is_finished()
            continue
        assert (x["status"], x["error"], x["run_dir"]) == (
            "failed", "RuntimeError: mmoe exploded", None)
        assert not Store(out).finished(x["run_id"]).path.exists()
        failure = read_json(Store(out).partial(x["run_id"]).path / "failure.json")
        assert failure["error"] == x["error"] and "in exploding" in failure["trace"]
    cells = pd.read_csv(out / "tables" / "cells.csv")  # the report of the runs that finished
    assert set(cells["model"]) == {"shared_bottom"}

    # Fixed: the next compare trains the failed runs, reuses the rest, leaves no stale failure.
    r, text = invoke_compare(data_dir, out, *args)
    assert r.exit_code == 0, text
    runs = read_json(out / "compare.json")["runs"]
    assert {(x["model"], x["status"]) for x in runs} == {("shared_bottom", "reused"),
                                                         ("mmoe", "done")}
    assert not list((out / "runs").glob("*.partial"))
    assert not list((out / "runs").glob("*/failure.json"))


def test_e_a_run_that_failed_elsewhere_gets_its_failure_record_in_this_store(tmp_path):
    # A run failing on a Ray worker left no partial folder in the driver's store.
    from prlbench.experiment.compare import record_failure
    from prlbench.experiment.executors import RunResult
    from prlbench.store import Outcome

    out = tmp_path / "out"
    record_failure(Store(out), RunResult("synthetic-mmoe-bce-s1-0123456789", Outcome.FAILED,
                                         error="RuntimeError: boom", trace="Traceback ... boom"))
    failure = read_json(Store(out).partial("synthetic-mmoe-bce-s1-0123456789").path
                                / "failure.json")
    assert failure == {"run_id": "synthetic-mmoe-bce-s1-0123456789",
                       "error": "RuntimeError: boom", "trace": "Traceback ... boom"}
    record_failure(Store(out), RunResult(None, Outcome.FAILED,
                                         error="CacheError: not preprocessed"))
    assert [p.name for p in (out / "runs").iterdir()] == [
        "synthetic-mmoe-bce-s1-0123456789" + PARTIAL]


def _poisoned(outputs, click, conversion, **params):
    raise ValueError("poisoned pwiser loss")


@pytest.mark.slow
def test_e_the_report_survives_a_grid_where_only_the_baseline_finished(data_dir, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setitem(LOSSES._items, "pwiser", _poisoned)
    res = run_compare(make_grid(seeds=(1,)), data_dir, tmp_path / "out")
    assert [(o.cfg.loss.name, o.status) for o in res.outcomes] == [("bce", "done"),
                                                                   ("pwiser", "failed")]
    assert (tmp_path / "out" / "tables" / "auc.md").exists()


@pytest.mark.slow
def test_e_a_failed_lambda_candidate_is_reported_too(data_dir, tmp_path, monkeypatch):
    real = LOSSES.get("pwiser")

    def fails_at_lambda_1(outputs, click, conversion, **params):
        if params["lam"] == 1.0:
            raise ValueError("lambda 1 diverged")
        return real(outputs, click, conversion, **params)

    monkeypatch.setitem(LOSSES._items, "pwiser", fails_at_lambda_1)
    grid = replace(make_grid(seeds=(1,), loss_grid={"lam": [0.1, 1.0]}), tune_seeds=(1001,))
    res = run_compare(grid, data_dir, tmp_path / "out")
    assert [(o.cfg.loss.params["lam"], o.cfg.train.seed, o.error) for o in res.failed] == [
        (1.0, 1001, "ValueError: lambda 1 diverged")]
    table = [o for o in res.outcomes if o.role == "table"]
    assert [(o.cfg.loss.name, o.cfg.loss.params.get("lam"), o.cfg.train.seed) for o in table] == [
        ("bce", None, 1), ("pwiser", 0.1, 1)]
    record = read_json(tmp_path / "out" / "compare.json")
    assert [x["status"] for x in record["runs"]].count("failed") == 1


# ------------------------------------------------------------------ (f) lambda on val
@pytest.mark.slow
def test_f_a_lambda_list_is_chosen_on_the_tuning_seeds_and_reported_on_the_others(
        data_dir, tmp_path, fits):
    out = tmp_path / "out"
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom", "--seeds", "1,2",
                             "--lambda", "0.1,1", "--tune-seeds", "7,8")
    assert r.exit_code == 0, text
    cfgs = run_configs(out)
    pw = {(c["train"]["seed"], c["loss"]["params"]["lam"]): name for name, c in cfgs.items()
          if c["loss"]["name"] == "pwiser"}
    bce = {c["train"]["seed"]: name for name, c in cfgs.items() if c["loss"]["name"] == "bce"}
    # bce has one setting: no tuning run; pwiser: both candidates on both tuning seeds
    assert sorted(bce) == [1, 2] and len(fits) == 2 + 4 + 2 and sorted(fits) == sorted(cfgs)
    # The winner has the best MEAN validation score over the tuning seeds 7 and 8.
    score = {lam: sum(max(h["val_score"] for h in read_json(
        out / "runs" / pw[s, lam] / "history.json")) for s in (7, 8)) / 2 for lam in (0.1, 1.0)}
    assert score[0.1] != score[1.0]
    winner = max(score, key=score.get)
    assert sorted(pw) == sorted([(7, 0.1), (7, 1.0), (8, 0.1), (8, 1.0), (1, winner),
                                 (2, winner)])

    record = read_json(out / "compare.json")
    listed = {x["run_id"]: x for x in record["runs"]}
    assert record["tune_seeds"] == [7, 8]
    assert {i for i, x in listed.items() if x["role"] == "table"} == set(bce.values()) | {
        pw[1, winner], pw[2, winner]}
    # every tuning run, the winner's included, is a candidate: never in the tables
    assert {i for i, x in listed.items() if x["role"] == "candidate"} == {
        pw[s, lam] for s in (7, 8) for lam in (0.1, 1.0)}
    caption = " ".join((out / "tables" / "auc_detail.md").read_text().split())
    assert "over tuning seeds 7, 8 (never reported): λ ∈ {0.1, 1} for PWiseR" in caption
    assert "settings tried per arm (each on 2 seeds): PWiseR 2; not tuned (one setting): BCE" \
        in caption
    setup = " ".join((out / "tables" / "setup.md").read_text().split())
    assert "chosen on the tuning seeds 7, 8, which are never reported" in setup
    cells = pd.read_csv(out / "tables" / "cells.csv")
    assert sorted(cells["arm"].unique()) == ["bce", "pwiser"]
    assert set(cells["seeds"].astype(str)) == {"1;2"}  # the tuning seeds are not reported
    params = cells.loc[cells["arm"] == "pwiser", "params"].unique()
    assert len(params) == 1 and json.loads(params[0])["lam"] == winner

    # --tables-only with a tuning run gone: refused, naming it, never another candidate chosen
    loser = 1.0 if winner == 0.1 else 0.1
    shutil.rmtree(out / "runs" / pw[7, loser])
    before = (out / "tables" / "auc.md").read_text()
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom", "--seeds", "1,2",
                             "--lambda", "0.1,1", "--tune-seeds", "7,8", "--tables-only")
    assert r.exit_code != 0
    assert (f"--tables-only: 1 of the 4 tuning runs that choose the settings on validation have "
            f"not finished under {out} (first: {pw[7, loser]}, pwiser seed 7)") in text, text
    assert "run the same command without --tables-only" in text
    assert (out / "tables" / "auc.md").read_text() == before


# ------------------------------------------------------------- (g) two processes at once
_COUNTING_CLI = """
import os, sys
import prlbench.engine.loop as t
real = t.Loop.steps
def steps(self, **kw):
    with open(os.environ["FIT_LOG"], "a") as f:  # one short O_APPEND write per run
        f.write(self.folder.path.name + "\\n")
    yield from real(self, **kw)
t.Loop.steps = steps
from prlbench.cli import app
app()
"""


@pytest.mark.slow
def test_g_two_compares_on_one_folder_train_each_run_once(data_dir, tmp_path):
    out, log = tmp_path / "out", tmp_path / "fits.log"
    args = [sys.executable, "-c", _COUNTING_CLI, "compare", "--datasets", "synthetic",
            "--models", "shared_bottom,mmoe", "--losses", "bce,pwiser", "--seeds", "1,2",
            "--data-dir", str(data_dir),
            "--out", str(out), *CLI_TRAIN]
    env = {**os.environ, "FIT_LOG": str(log), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    ids = expected_ids(data_dir, ("shared_bottom", "mmoe"))
    trained = log.read_text().split()
    assert sorted(trained) == sorted(i + PARTIAL for i in ids)  # each run once
    runs = out / "runs"
    assert run_names(runs) == sorted(ids)
    assert not [p for p in runs.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]
    for i in ids:
        assert RunFolder(runs / i).is_finished()
        assert read_json(runs / i / "config.json")["train"]["seed"] in SEEDS
        assert metrics(runs / i)["ctr_auc"] > 0
        assert len(pd.read_parquet(runs / i / "predictions.parquet")) > 0
    record = read_json(out / "compare.json")
    assert sorted(x["run_id"] for x in record["runs"]) == sorted(ids)
    assert {x["status"] for x in record["runs"]} <= {"done", "reused"}
    cells = pd.read_csv(out / "tables" / "cells.csv")
    assert set(cells["model"]) == {"shared_bottom", "mmoe"} and cells["mean"].notna().all()
    assert "PWiseR" in (out / "tables" / "auc.md").read_text()


# --------------------------------------------------------- process pool and executors
@pytest.mark.slow
def test_the_process_pool_gives_the_numbers_of_one_process(finished, data_dir, tmp_path):
    ex = make_executor("local", jobs=2, ray_address=None, threads=1)
    assert (ex.jobs, ex.threads) == (2, 1)
    # Seed 1 only: two runs, one on each worker.
    res = run_compare(make_grid(seeds=(1,)), data_dir, tmp_path / "pool", executor=ex)
    assert [o.status for o in res.outcomes] == ["done"] * 2
    pids = {read_json(o.run_dir / "run.json")["pid"] for o in res.outcomes}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # trained in the workers
    refs = [o for o in finished[1].outcomes if o.cfg.train.seed == 1]
    for o, ref in zip(res.outcomes, refs, strict=True):
        assert o.run_id == ref.run_id and metrics(o.run_dir) == metrics(ref.run_dir)
        assert pd.read_parquet(o.run_dir / "predictions.parquet").equals(
            pd.read_parquet(ref.run_dir / "predictions.parquet"))


@pytest.mark.parametrize("cores, jobs", [(1, None), (2, None), (16, None), (16, 3), (2, 4)])
def test_local_executor_fits_jobs_times_threads_into_the_cores(monkeypatch, cores, jobs):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    ex = make_executor("local", jobs=jobs, ray_address=None)
    assert ex.jobs == (jobs or min(cores, 2))
    assert ex.threads >= 1 and ex.jobs * ex.threads <= max(cores, ex.jobs)
    assert ex.jobs * (ex.threads + 1) > cores  # and one more thread each would not fit


@pytest.mark.parametrize("flag, value", [("jobs", 0), ("jobs", -1), ("threads", 0)])
def test_jobs_and_threads_below_one_are_refused(flag, value):
    with pytest.raises(ConfigError, match=rf"--{flag} must be >= 1, got {value}"):
        make_executor("local", ray_address=None, **{"jobs": None, flag: value})


@pytest.mark.slow
@pytest.mark.parametrize("pack", ["--pack", "--no-pack"])
def test_ctrl_c_on_a_pooled_compare_stops_cleanly(data_dir, tmp_path, pack):
    """Ctrl-C reaches the whole process group: the driver and both workers, one of them
    perhaps still starting. Exit 130, no traceback from any process, no run left 'running'
    (packed: 3 losses x 2 models in 4 packs of 1-2 runs, one still building its members)."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "prlbench", "compare", "--datasets", "synthetic",
            "--models", "shared_bottom,mmoe", "--seeds", "1", "--data-dir", str(data_dir),
            "--out", str(out), "--epochs", "50", "--batch-size", "256", "--preset", "small",
            "--jobs", "2", "--threads", "1", "-q", pack]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list((out / "runs").glob("*.partial/run.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((out / "runs").glob("*.partial/run.json")), "no run started"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    for record in (out / "runs").glob("*.partial/run.json"):
        assert read_json(record)["status"] == "interrupted"
    assert not list((out / "runs").glob("*/*.tmp"))


def test_ray_executor_without_ray_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'prlbench\[ray\]'"):
        make_executor("ray", jobs=None, ray_address=None)


# ------------------------------------------------------------------ (h) --tables-only
def test_h_tables_only_without_runs_trains_nothing_and_says_so(data_dir, tmp_path, fits):
    out = tmp_path / "out"
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom", "--seeds", "1,2",
                             "--tables-only")
    assert r.exit_code == 1, text  # nothing to report is an error, not an empty success
    assert "--tables-only: none of the 4 runs of this grid has finished" in text
    assert "without --tables-only" in text and fits == []
    assert not out.exists() or list(out.rglob("*")) == []  # no compare.json, no tables


@pytest.mark.slow
def test_h_tables_only_reports_the_finished_runs_and_trains_no_other(finished, data_dir,
                                                                   tmp_path, fits):
    out = copy_of(finished[0], tmp_path)
    shutil.rmtree(out / "tables")
    before = run_stamps(out)
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom,mmoe", "--seeds", "1,2",
                             "--tables-only")
    assert r.exit_code == 0, text
    assert "4 runs not trained yet" in text and fits == [] and run_stamps(out) == before
    assert (out / "tables" / "cells.csv").read_text() == (
        finished[0] / "tables" / "cells.csv").read_text()
    # the grid record is the compare's that trained the runs, not this reading's
    assert (out / "compare.json").read_bytes() == (finished[0] / "compare.json").read_bytes()
    # ... except for the test its tables now use
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom", "--seeds", "1,2",
                             "--tables-only", "--test", "wilcoxon", "--equivalence",
                             "auc=0.01,logloss=0.005")
    assert r.exit_code == 0, text
    record, before = read_json(out / "compare.json"), read_json(finished[0] / "compare.json")
    assert record["test"] == {"name": "wilcoxon", "correction": "holm", "alpha": 0.05,
                              "equivalence": {"auc": 0.01, "logloss": 0.005}}
    assert {k: v for k, v in record.items() if k != "test"} == {
        k: v for k, v in before.items() if k != "test"}
    assert "Wilcoxon signed-rank" in (out / "tables" / "auc.md").read_text()


@pytest.mark.slow
def test_h_the_record_and_the_report_are_written_under_the_experiment_lock(
        finished, data_dir, tmp_path, monkeypatch):
    import fcntl

    from prlbench.experiment import compare as cmp
    out = copy_of(finished[0], tmp_path)
    real, held = cmp._report, []

    def report(res, run_dirs, store, cc, notes):  # could another compare take the lock now?
        fd = os.open(store.compare_lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)
        return real(res, run_dirs, store, cc, notes)

    monkeypatch.setattr(cmp, "_report", report)
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom", "--seeds", "1,2",
                             "--tables-only")
    assert r.exit_code == 0, text
    assert held == [True]


@pytest.mark.slow
def test_h_a_new_report_removes_the_files_it_did_not_write(finished, data_dir, tmp_path, fits):
    out = copy_of(finished[0], tmp_path)
    assert (out / "tables" / "auc.tex").exists()
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom", "--seeds", "1",
                             "--format", "md", "--tables-only")
    assert r.exit_code == 0, text
    names = sorted(p.name for p in (out / "tables").iterdir())
    # the LaTeX tables (auc.tex, auc_detail.tex, setup.tex, references.bib) are gone
    assert names == ["auc.md", "auc_detail.md", "cells.csv", "delong.csv", "logloss.md",
                     "logloss_detail.md", "runs.csv", "setup.md"]
    assert "over 2 seeds" not in (out / "tables" / "auc.md").read_text()


@pytest.mark.slow
def test_e_a_grid_where_every_run_failed_leaves_no_earlier_tables(finished, data_dir, tmp_path,
                                                                  monkeypatch):
    out = copy_of(finished[0], tmp_path)
    monkeypatch.setitem(LOSSES._items, "bce", _poisoned)
    monkeypatch.setitem(LOSSES._items, "pwiser", _poisoned)
    r, text = invoke_compare(data_dir, out, "--models", "mmoe", "--seeds", "1")
    assert r.exit_code == 1, text
    assert "no run finished, so no table or plot was written" in text
    assert "files of an earlier report were removed" in text
    assert not list((out / "tables").iterdir()) and not list((out / "plots").iterdir())
    record = read_json(out / "compare.json")
    assert {x["status"] for x in record["runs"]} == {"failed"}


# ------------------------------------------------------------------------ (i) bad input
@pytest.mark.parametrize("args, fragments", [
    (["--models", "shared_bottom,transformer"], ["unknown model 'transformer'", "mmoe", "ple"]),
    (["--losses", "bce,focal"], ["unknown loss 'focal'", "pwiser", "ranknet"]),
    (["--datasets", "movielens"], ["unknown data set 'movielens'", "aliexpress_nl", "aliccp"]),
    (["--datasets", "aliexpress_nl"], ["not preprocessed", "prlbench preprocess aliexpress_nl"]),
    (["--losses", "pwiser"], ["--losses must include bce"]),
    (["--lambda", "0.1,big"], ["--lambda: expected a number"]),
    (["--lambda", "0.5,-1"], ["(--lambda) must be a finite number >= 0"]),
    (["--seeds", "0"], ["--seeds: need at least one seed"]),
    (["--seeds", "1,-2"], ["--seeds: need at least one seed, none negative"]),
    (["--executor", "dask"], ["--executor must be local or ray"]),
    (["--format", "html"], ["unknown format 'html'", "md, latex (the CSVs are always written)"]),
])
def test_i_bad_input_fails_before_training_and_names_the_fix(data_dir, tmp_path, fits, args,
                                                            fragments):
    r, text = invoke_compare(data_dir, tmp_path / "out", *args)
    assert r.exit_code == 1, text
    for fragment in fragments:
        assert fragment in text
    assert fits == [] and not (tmp_path / "out").exists()


def test_i_before_training_compare_says_what_the_design_can_reach(data_dir, tmp_path):
    r = CliRunner().invoke(app, ["compare", "--data-dir", str(data_dir), "--out",
                                 str(tmp_path / "out"), "--tables-only"])  # not quiet
    assert ("significance: two-level t-test, Holm correction over the AUC table's 6 "
            "comparisons at 0.05; with 8 seeds p has no floor") in " ".join(r.output.split())
    r, text = invoke_compare(data_dir, tmp_path / "out", "--losses", "bce,pwiser,ranknet",
                             "--seeds", "6", "--test", "wilcoxon", "--tables-only")
    # 2 / 2**6 x 6 comparisons = 0.1875 (-q: the warning only, not the plan's line)
    assert ("warning: with 6 seeds, Wilcoxon and 6 comparisons no cell can be significant "
            "(smallest adjusted p 0.188 >= 0.05); use --seeds 8 or more") in text
    r, text = invoke_compare(data_dir, tmp_path / "out", "--losses",
                             "bce,pwiser,ranknet,graded,listce,pwiser[norm=paper]", "--seeds",
                             "8", "--test", "wilcoxon", "--equivalence", "0.001", "--tables-only")
    # 15 AUC comparisons: 15 / 2**8 > 0.05 for the one-sided Wilcoxon TOST
    assert "cannot call any cell equivalent (smallest adjusted p 0.0586 >= 0.05)" in text
    assert "15 comparisons no cell can be significant (smallest adjusted p 0.117" in text
    r, text = invoke_compare(data_dir, tmp_path / "out", "--equivalence", "0.5",
                             "--tables-only")
    assert r.exit_code != 0 and "above the bound 0.02" in text


def test_i_one_seed_warns_that_no_significance_test_is_possible(data_dir, tmp_path):
    r, text = invoke_compare(data_dir, tmp_path / "out", "--seeds", "1", "--tables-only")
    assert "warning: --seeds 1: with one seed no significance test is possible" in text
    r, text = invoke_compare(data_dir, tmp_path / "out", "--seeds", "2", "--tables-only")
    assert "no significance test" not in text


@pytest.mark.slow
def test_config_file_loss_params_and_train_settings_reach_every_run(data_dir, tmp_path):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("loss:\n  params:\n    lam: 2.0\ntrain:\n  lr: 0.002\n")
    out = tmp_path / "out"
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom", "--seeds", "1",
                             "--config", str(cfg))
    assert r.exit_code == 0, text
    cfgs = {c["loss"]["name"]: c for c in run_configs(out).values()}
    assert cfgs["pwiser"]["loss"]["params"]["lam"] == 2.0
    assert {c["train"]["lr"] for c in cfgs.values()} == {0.002}
    record = read_json(out / "compare.json")
    assert record["loss_grid"] == {"lam": [2.0]}
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom", "--seeds", "1",
                             "--config", str(cfg), "--lambda", "0.5", "--tables-only")
    assert "1 runs not trained yet" in text  # the flag wins over the file: a new pwiser run


@pytest.mark.parametrize("yaml_text, fragment", [
    ("model:\n  name: esmm\n", "model.name is a single run's setting; compare takes it from "
                               "--models"),
    ("loss:\n  name: pwiser\n", "loss.name is a single run's setting; compare takes it from "
                                "--losses"),
    ("train:\n  seed: 3\n", "train.seed is a single run's setting; compare takes it from --seeds"),
    ("loss:\n  params:\n    gamma: 2.0\n", "loss.params.'gamma' is no loss's parameter"),
    ("loss:\n  params:\n    alpha: 0.8\n", "loss.params.alpha: none of the losses bce, pwiser "
                                          "takes it"),
])
def test_config_file_naming_the_grid_is_refused(data_dir, tmp_path, fits, yaml_text, fragment):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml_text)
    r, text = invoke_compare(data_dir, tmp_path / "out", "--config", str(cfg))
    assert r.exit_code == 1 and fragment in text, text
    assert fits == [] and not (tmp_path / "out").exists()


def test_compare_out_defaults_under_prlbench_out(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRLBENCH_OUT", str(tmp_path / "res"))
    r = CliRunner().invoke(app, ["compare", "--data-dir", str(data_dir), "--seeds", "1",
                                 "--tables-only", "-q"])
    assert r.exit_code == 1 and str(tmp_path / "res" / "compare") in " ".join(r.output.split())


def test_config_file_with_an_empty_candidate_list_is_refused(data_dir, tmp_path, fits):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text("loss:\n  params:\n    lam: []\n")
    r, text = invoke_compare(data_dir, tmp_path / "out", "--config", str(cfg))
    assert r.exit_code == 1 and "loss.params.lam is empty" in text, text
    assert fits == []


def test_repeated_candidates_are_tried_once(data_dir, tmp_path):
    grid = CompareConfig.resolve(None, {"models": "mmoe", "losses": "bce,pwiser", "seeds": "2",
                                        "lam": "0.5,0.5,1.0"}).grid
    assert grid.candidates("pwiser") == [{"lam": 0.5}, {"lam": 1.0}]


# ------------------------------------------------- (i) a results folder of prlbench 0.1
@pytest.mark.slow
def test_a_results_folder_of_prlbench_0_1_is_read_and_reused(finished, data_dir, tmp_path,
                                                              fits):
    """prlbench 0.1 wrote the same files without a schema key: its runs are reused and its
    tables rebuilt as they were."""
    out = copy_of(finished[0], tmp_path)
    for record in [*(out / "runs").glob("*/run.json"), out / "compare.json"]:
        data = json.loads(record.read_text())
        data.pop("schema")
        record.write_text(json.dumps(data))
    before = (out / "tables" / "cells.csv").read_text()
    res = run_compare(make_grid(), data_dir, out)
    assert [o.status for o in res.outcomes] == ["reused"] * 4 and fits == []
    assert (out / "tables" / "cells.csv").read_text() == before


# ------------------------------------------- damaged run files: refused, one line, the fix
def report_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for sub in ("tables", "plots")
            for p in sorted((out / sub).iterdir())}


def _one_line_error(r, text: str, path: Path) -> None:
    assert r.exit_code == 1, text
    assert "Traceback" not in r.output and str(path) in text, text
    assert r.exception is None or isinstance(r.exception, SystemExit)


@pytest.mark.slow
@pytest.mark.parametrize("value", [1.7, float("inf"), -0.5])
def test_j_a_metric_out_of_range_is_refused_not_tabled(finished, data_dir, tmp_path, fits,
                                                       value):
    out = copy_of(finished[0], tmp_path)
    before = report_files(out)
    run = out / "runs" / expected_ids(data_dir)[0]
    m = read_json(run / "metrics.json")
    m["ctr_auc" if value != -0.5 else "ctr_logloss"] = value
    (run / "metrics.json").write_text(json.dumps(m))
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom", "--seeds", "1,2",
                             "--tables-only")
    _one_line_error(r, text, run / "metrics.json")
    assert f"prlbench evaluate {run}" in text and "**inf**" not in text
    assert report_files(out) == before and fits == []


@pytest.mark.slow
@pytest.mark.parametrize("name, damage", [
    ("metrics.json", b'{"ctr_auc": 0.7'), ("run.json", b'{"status": "done", "run_id": 3}'),
    ("history.json", b'[{"epoch": "one"}]'), ("predictions.parquet", b"PAR1\x00\x01"),
])
def test_j_a_damaged_run_file_is_one_line_naming_it(finished, data_dir, tmp_path, fits, name,
                                                    damage):
    out = copy_of(finished[0], tmp_path)
    before = report_files(out)
    run = out / "runs" / expected_ids(data_dir)[1]
    (run / name).write_bytes(damage)
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom", "--seeds", "1,2",
                             "--tables-only")
    _one_line_error(r, text, run / name)
    assert report_files(out) == before


@pytest.mark.slow
def test_j_evaluate_with_a_truncated_best_pt_is_one_line_naming_it(finished, data_dir,
                                                                   tmp_path):
    out = copy_of(finished[0], tmp_path)
    best = out / "runs" / expected_ids(data_dir)[0] / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    r = CliRunner().invoke(app, ["evaluate", str(best.parent), "--data-dir", str(data_dir)])
    _one_line_error(r, " ".join(r.output.split()), best)
    assert "damaged or truncated" in " ".join(r.output.split())


@pytest.mark.slow
def test_j_a_report_that_fails_midway_leaves_the_previous_one_whole(finished, data_dir,
                                                                    tmp_path, monkeypatch):
    import errno

    from prlbench.report import plots

    out = copy_of(finished[0], tmp_path)
    before = report_files(out)

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plots, "save", full)  # the tables are written, then the disk fills
    r, text = invoke_compare(data_dir, out, "--models", "shared_bottom", "--seeds", "1",
                             "--format", "md", "--tables-only")
    assert r.exit_code == 1 and "No space left on device" in text, text
    assert report_files(out) == before  # not a new table beside an old plot
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "plots", "runs", "tables"]


# ------------------------------------------------- links planted in a shared --out folder
LINK_REFUSED = "is a symbolic link; prlbench does not follow links it did not make in --out"


def test_a_lock_file_link_is_refused_and_its_target_left_as_it_was(tmp_path):
    """Store.lock once opened runs/.locks/<id>.lock with "w": a link there truncated its
    target (any file the user can write)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    locks = tmp_path / "out" / "runs" / ".locks"
    locks.mkdir(parents=True)
    (locks / "r1.lock").symlink_to(victim)
    with pytest.raises(ConfigError, match=LINK_REFUSED) as e:
        with Store(tmp_path / "out").lock("r1"):
            pass
    assert str(locks / "r1.lock") in str(e.value) and "remove it" in str(e.value)
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("link", ["runs/.locks", "runs"])
def test_a_linked_lock_or_runs_folder_is_refused(tmp_path, link):
    victim = tmp_path / "victim"
    victim.mkdir()
    path = tmp_path / "out" / link
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(victim)
    with pytest.raises(ConfigError, match=LINK_REFUSED):
        with Store(tmp_path / "out").lock("r1"):
            pass
    if link == "runs":  # every run folder lies under it
        with pytest.raises(ConfigError, match=LINK_REFUSED):
            Store(tmp_path / "out").partial("r1")
    assert list(victim.iterdir()) == []


def test_the_lock_file_keeps_its_content_and_serves_again(tmp_path):
    store = Store(tmp_path)
    with store.lock("r1"):
        pass
    (tmp_path / "runs" / ".locks" / "r1.lock").write_text("kept")
    with store.lock("r1"):  # opened without truncation
        pass
    assert (tmp_path / "runs" / ".locks" / "r1.lock").read_text() == "kept"


@pytest.mark.slow
def test_a_partial_folder_link_is_refused_before_training(data_dir, tmp_path, fits):
    """A `.partial` link planted in --out once received a run's files (and was then renamed
    into place as the 'finished' run)."""
    grid = make_grid(losses=("bce",), seeds=(1,))
    rid = run_id(grid.config("synthetic", "shared_bottom", "bce", 1, {}),
                 data_hash(data_dir / "synthetic"))
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "out" / "runs").mkdir(parents=True)
    (tmp_path / "out" / "runs" / f"{rid}{PARTIAL}").symlink_to(victim)
    with pytest.raises(ConfigError, match=LINK_REFUSED):
        run_compare(grid, data_dir, tmp_path / "out")
    assert list(victim.iterdir()) == [] and fits == []
    with pytest.raises(ConfigError, match=LINK_REFUSED):
        train_mod.train_run(grid.config("synthetic", "shared_bottom", "bce", 1, {}),
                            data_dir=data_dir, out=tmp_path / "out", progress=False)
    assert list(victim.iterdir()) == [] and fits == []


@pytest.mark.slow
def test_train_waits_for_the_run_lock_that_another_process_holds(data_dir, tmp_path, fits):
    """Two `prlbench train` of one config once shared a .partial folder; now the second
    waits, then finds the run finished. (Compare's executor holds the lock around train_run.)"""
    import threading

    cfg = make_grid().config("synthetic", "shared_bottom", "bce", 1, {})
    rid = run_id(cfg, data_hash(data_dir / "synthetic"))
    found = []
    with Store(tmp_path).lock(rid):  # as another process would (a separate open file)
        t = threading.Thread(target=lambda: found.append(train_mod.train(
            cfg, data_dir=data_dir, out=tmp_path, progress=False)))
        t.start()
        t.join(timeout=1.5)
        assert t.is_alive() and fits == [] and not (tmp_path / "runs" / f"{rid}{PARTIAL}").exists()
    t.join(timeout=120)
    assert found == [tmp_path / "runs" / rid] and fits == [rid]


def test_plan_counts_runs_times_and_memory_and_refuses_what_cannot_fit(tmp_path, monkeypatch):
    """--plan trains nothing: it counts the runs to train and to reuse, times a few steps of
    each model on this machine, adds up memory; a grid beyond the machine's memory is refused
    with the numbers and the options that make it fit."""
    from typer.testing import CliRunner

    from prlbench.cli import app
    from prlbench.experiment import plan as plan_mod
    from prlbench.experiment.grid import CompareConfig

    data, out = tmp_path / "data", tmp_path / "out"
    cc = CompareConfig.resolve(None, {"seeds": "3", "epochs": 2, "models": "mmoe,ple",
                                      "rows": "20000", "jobs": 2})
    p = plan_mod.make_plan(cc, data, out)
    assert (p.to_train, p.reused, p.jobs) == (2 * 3 * 3, 0, 2)
    assert {g.model for g in p.groups} == {"mmoe", "ple"}
    assert all(g.step_s > 0 and g.steps_per_epoch == 9 and g.epochs == 2 for g in p.groups)
    assert all(0 < g.test_s < g.epoch_s for g in p.groups)
    assert p.run_s == pytest.approx(sum(g.runs * (2 * g.epoch_s + g.test_s) for g in p.groups))
    assert p.wall_s == pytest.approx(p.run_s / 2)
    assert p.data_bytes > 0 and p.job_bytes > p.base_bytes > 1e8 and p.fits
    assert not (out / "runs").exists()  # nothing trained
    text = "\n".join(p.lines())
    assert "18 runs to train, 0 to reuse" in text and "time: about" in text and "GB a job" in text
    # a machine with too little memory: refused, with how many jobs would fit
    small = plan_mod.Plan(**{**p.__dict__, "available": p.data_bytes + 1.5 * p.job_bytes / 0.9})
    assert not small.fits and small.jobs_that_fit() == 1
    assert "--jobs 1" in small.refusal() and "--preset" in small.refusal()
    monkeypatch.setattr(plan_mod, "_available", lambda: 1e8)
    r = CliRunner().invoke(app, ["compare", "--plan", "--seeds", "2", "--epochs", "1",
                                 "--rows", "20000", "--data-dir", str(data), "--out", str(out)])
    assert r.exit_code == 1 and "would need about" in r.output and "available" in r.output


def test_a_step_budget_bounds_the_plans_time():
    from prlbench.experiment.plan import Group

    g = Group("synthetic", "mmoe", "small", "fp32", 2048, runs=1, epochs=10, step_s=0.1,
              steps_per_epoch=100, val_s=1.0, test_s=3.0)
    assert g.run_s == pytest.approx(10 * (100 * 0.1 + 1.0) + 3.0)  # every epoch, then test
    g.max_steps = 150  # one epoch and a half: 150 steps, two validations
    assert g.run_s == pytest.approx(150 * 0.1 + 2 * 1.0 + 3.0)
    g.max_steps = 5000  # beyond the epochs: the epochs bound it
    assert g.run_s == pytest.approx(10 * (100 * 0.1 + 1.0) + 3.0)

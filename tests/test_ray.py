"""The Ray executor (`pip install prlbench[ray]`) on a local Ray instance started by the test:
runs train on Ray workers, the driver alone writes the result store, and the numbers are the
local executor's."""

import os
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from prlbench.config import resolve  # noqa: E402
from prlbench.experiment.compare import compare, run_grid  # noqa: E402
from prlbench.experiment.executors import LocalExecutor, RayExecutor  # noqa: E402
from prlbench.experiment.grid import CompareConfig, Grid  # noqa: E402
from prlbench.store import RunFolder  # noqa: E402
from prlbench.fileio import read_json  # noqa: E402


def run_names(runs: Path) -> list[str]:
    return sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # starts a Ray instance, trains runs

BASE = {"model": {"preset": "small"}, "train": {"epochs": 1, "batch_size": 1024, "threads": 1}}
RUN_FILES = ("config.json", "run.json", "history.json", "best.pt", "metrics.json",
             "predictions.parquet")


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def make_grid(datasets=("synthetic",), losses=("bce", "pwiser"), seeds=(1, 2)) -> Grid:
    return Grid(datasets=datasets, models=("shared_bottom",), losses=losses, seeds=seeds,
                base=resolve(None, BASE, finish=False))


def metrics(run_dir: Path) -> dict:
    m = read_json(run_dir / "metrics.json")
    m.pop("seconds", None)
    return m


def run_stamps(out: Path) -> dict:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for name in run_names(out / "runs") for d in [out / "runs" / name]
            for p in [d, *d.iterdir()]}


class _NoSubmit:
    """Stands in for the Ray task: a submitted run fails the test."""

    def options(self, **kw):
        raise AssertionError("a finished run was submitted to Ray again")


def test_a_grid_on_ray_lands_in_the_drivers_store_with_the_local_numbers(ray_instance,
                                                                         data_dir, tmp_path):
    out = tmp_path / "ray"
    ex = RayExecutor(address=None, threads=1, jobs=2)
    res = compare(CompareConfig(grid=make_grid(), formats=("md", "csv")), data_dir=data_dir,
                  out=out, progress=False, executor=ex)
    assert [o.status for o in res.outcomes] == ["done"] * 4, [o.error for o in res.outcomes]
    for o in res.outcomes:
        assert o.run_dir == out / "runs" / o.run_id and RunFolder(o.run_dir).is_finished()
        for name in (*RUN_FILES, "ray.json"):
            assert (o.run_dir / name).exists(), (o.run_id, name)
        assert read_json(o.run_dir / "run.json")["pid"] != os.getpid()  # a worker's
    assert not list((out / "runs").glob("*.partial"))
    assert set(pd.read_csv(out / "tables" / "cells.csv")["arm"]) == {"bce", "pwiser"}

    # The same configs in this process: the same run ids, metrics and predictions.
    local = run_grid(make_grid(), executor=LocalExecutor(1, 1), data_dir=data_dir,
                     out=tmp_path / "local")
    for o, ref in zip(res.outcomes, local, strict=True):
        assert o.run_id == ref.run_id and metrics(o.run_dir) == metrics(ref.run_dir)
        assert pd.read_parquet(o.run_dir / "predictions.parquet").equals(
            pd.read_parquet(ref.run_dir / "predictions.parquet"))

    # Again: every run is reused by the driver, nothing goes to Ray, nothing is rewritten.
    before = run_stamps(out)
    ex._task = _NoSubmit()
    again = run_grid(make_grid(), executor=ex, data_dir=data_dir, out=out)
    assert [o.status for o in again] == ["reused"] * 4
    assert [o.run_dir for o in again] == [o.run_dir for o in res.outcomes]
    assert run_stamps(out) == before


def test_a_run_failing_on_a_worker_is_recorded_and_the_rest_goes_on(ray_instance, data_dir,
                                                                    tmp_path):
    out = tmp_path / "out"
    ex = RayExecutor(address=None, threads=1, jobs=2)
    # aliccp is not preprocessed in data_dir: its run fails on the worker.
    res = run_grid(make_grid(datasets=("synthetic", "aliccp"), losses=("bce",), seeds=(1,)),
                   executor=ex, data_dir=data_dir, out=out)
    assert [(o.cfg.data.dataset, o.status) for o in res] == [("synthetic", "done"),
                                                             ("aliccp", "failed")]
    assert "CacheError" in res[1].error and "prlbench preprocess aliccp" in res[1].error
    assert run_names(out / "runs") == [res[0].run_id]


def test_packed_runs_on_ray_land_as_their_solo_runs(ray_instance, data_dir, tmp_path):
    out = tmp_path / "ray-packed"
    ex = RayExecutor(address=None, threads=1, jobs=2, pack=True)
    res = compare(CompareConfig(grid=make_grid(), formats=("md",), pack=True),
                  data_dir=data_dir, out=out, progress=False, executor=ex)
    assert [o.status for o in res.outcomes] == ["done"] * 4, [o.error for o in res.outcomes]
    packs = set()
    for o in res.outcomes:
        for name in (*RUN_FILES, "ray.json"):
            assert (o.run_dir / name).exists(), (o.run_id, name)
        packs.add(tuple(read_json(o.run_dir / "run.json")["packed_with"]))
    assert len(packs) == 2 and all(len(p) == 2 for p in packs)  # one pack per worker
    local = run_grid(make_grid(), executor=LocalExecutor(1, 1), data_dir=data_dir,
                     out=tmp_path / "local")
    assert [o.run_id for o in res.outcomes] == [o.run_id for o in local]

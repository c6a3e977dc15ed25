"""The experiment grid: data sets x models x losses (x loss settings) x seeds, run resumably.

Each run's id is the hash of its resolved config (and of the cached data's content), so a finished run
is found again and reused: an interrupted compare continues where it stopped, and a second
compare with one more model trains only that model. A failed run is recorded with its error and
the rest of the grid goes on. Two compare processes on one folder never train the same run at
once: a run holds an exclusive lock (`runs/<id>.lock`) while it trains.

Loss settings given as lists (e.g. --lambda 0.1,0.5,1) are chosen on the validation split per
data set, model and loss: every candidate is trained on the first seed, the best validation
score wins, and the winner alone is run on the remaining seeds.
"""

from __future__ import annotations

import itertools
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from prlbench import results
from prlbench.config import RunConfig, complete, run_id, validate


@dataclass(frozen=True)
class Grid:
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    losses: tuple[str, ...]
    seeds: tuple[int, ...]
    # Loss parameter -> candidate values (one value: fixed; several: chosen on validation).
    loss_grid: dict = field(default_factory=dict)
    base: RunConfig = field(default_factory=RunConfig)

    def candidates(self, loss: str) -> list[dict]:
        """Every combination of the listed loss parameters that `loss` takes."""
        from prlbench.losses import loss_params

        known = loss_params(loss)
        keys = [k for k in self.loss_grid if k in known]
        combos = itertools.product(*(self.loss_grid[k] for k in keys))
        return [dict(zip(keys, values)) for values in combos]

    def check(self) -> None:
        """Validate every configuration of the grid up front: a bad option (e.g. a negative
        value in --lambda) fails before anything is trained, not when its turn comes."""
        for d, m, l in itertools.product(self.datasets, self.models, self.losses):
            for p in self.candidates(l):
                self.config(d, m, l, self.seeds[0], p)

    def config(self, dataset: str, model: str, loss: str, seed: int, params: dict) -> RunConfig:
        b = self.base
        cfg = replace(b, data=replace(b.data, dataset=dataset),
                      model=replace(b.model, name=model),
                      loss=replace(b.loss, name=loss, params=dict(params)),
                      train=replace(b.train, seed=seed))
        validate(cfg)
        return complete(cfg)


@dataclass
class Outcome:
    run_id: str
    cfg: RunConfig
    status: str  # "done", "reused", "failed", "missing"
    run_dir: Path | None = None
    error: str = ""
    seconds: float = 0.0
    # "table": a run the tables report; "candidate": a loss setting tried on the first seed and
    # not chosen on validation (kept in compare.json, never in the tables)
    role: str = "table"


# ------------------------------------------------------------------------------ one run
@contextmanager
def run_lock(out: Path, rid: str):
    """Hold `runs/<id>.lock` exclusively: one process at a time trains or stores a run."""
    import fcntl

    path = results.runs_dir(Path(out)) / ".locks" / f"{rid}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another compare busy with this run: wait for it
        yield


def run_one(cfg_dict: dict, data_dir: str, out: str, threads: int) -> dict:
    """Train (or reuse) one run in this process. A failure is returned, not raised; only
    Ctrl-C / SIGTERM (`Interrupted`) propagates, so that it stops the whole grid."""
    global _IN_RUN
    _IN_RUN = True
    try:
        return _run_one(cfg_dict, data_dir, out, threads)
    finally:
        _IN_RUN = False


def _run_one(cfg_dict: dict, data_dir: str, out: str, threads: int) -> dict:
    import torch

    from prlbench.data.cache import data_hash, open_cache
    from prlbench.engine.train import Interrupted, train_run

    torch.set_num_threads(threads)
    cfg = RunConfig.from_dict(cfg_dict)
    t0 = time.perf_counter()
    rid = cfg_dict.get("_run_id", "?")
    try:
        manifest = open_cache(Path(data_dir), cfg.data.dataset, verify=False)
        rid = run_id(cfg, data_hash(Path(manifest["_dir"])))
        with run_lock(Path(out), rid):
            finished = results.is_finished(results.finished_dir(Path(out), rid))
            # An earlier attempt's failure record must not travel into the finished folder.
            (results.partial_dir(Path(out), rid) / "failure.json").unlink(missing_ok=True)
            run_dir = train_run(cfg, data_dir=Path(data_dir), out=Path(out), resume=True,
                                progress=False)
        return {"run_id": rid, "status": "reused" if finished else "done",
                "run_dir": str(run_dir), "seconds": time.perf_counter() - t0}
    except Interrupted:
        raise  # the checkpoint is saved; the next compare resumes this run
    except Exception as e:  # noqa: BLE001 - a failed run is recorded; the grid goes on
        return {"run_id": rid, "status": "failed", "error": f"{type(e).__name__}: {e}",
                "trace": traceback.format_exc(), "seconds": time.perf_counter() - t0}


def _record_failure(out: Path, result: dict) -> None:
    """`runs/<id>.partial/failure.json`: the error and traceback, next to any checkpoint (the
    driver writes it for a run that failed on a Ray worker too). A run that failed before its id
    was known (e.g. a data set not preprocessed) is reported in compare.json only."""
    if result["run_id"] == "?":
        return
    part = results.partial_dir(out, result["run_id"])
    results.write_json(part / "failure.json",
                       {k: result.get(k, "") for k in ("run_id", "error", "trace")})


# ----------------------------------------------------------------------------- executors
class LocalExecutor:
    """A process pool of `jobs` workers with `threads` torch threads each (jobs x threads <=
    cores). jobs == 1 runs in this process."""

    def __init__(self, jobs: int, threads: int) -> None:
        self.jobs, self.threads = jobs, threads

    def map(self, cfgs: list[RunConfig], data_dir: Path, out: Path,
            on_event: Callable[[str, RunConfig, dict | None], None]) -> list[dict]:
        args = [(c.to_dict(), str(data_dir), str(out), self.threads) for c in cfgs]
        if self.jobs == 1:
            found = []
            for cfg, a in zip(cfgs, args):
                on_event("start", cfg, None)
                found.append(run_one(*a))
                on_event("end", cfg, found[-1])
            return found
        import multiprocessing as mp

        found: dict[int, dict] = {}
        ctx = mp.get_context("spawn")  # fork after torch is imported is not safe
        pool = ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=_worker_init)
        try:
            pending: dict[Future, int] = {}
            queue = list(range(len(cfgs)))
            while queue or pending:
                while queue and len(pending) < self.jobs:
                    i = queue.pop(0)
                    on_event("start", cfgs[i], None)
                    pending[pool.submit(run_one, *args[i])] = i
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    found[i] = fut.result()
                    on_event("end", cfgs[i], found[i])
        except BaseException:  # Ctrl-C, SIGTERM, or a worker's Interrupted
            _stop_workers(pool)
            raise
        pool.shutdown(wait=True)
        return [found[i] for i in range(len(cfgs))]


_IN_RUN = False  # in a pool worker: True while run_one is working


def _worker_init() -> None:
    """Workers ignore SIGINT except while training (the training loop catches it and saves a
    checkpoint), so Ctrl-C reaching the whole process group prints no traceback from them. The
    driver then stops them with SIGTERM: a run that is loading unwinds (its run.json says
    interrupted), an idle worker exits quietly."""
    import signal

    def on_sigterm(signum, frame):
        if _IN_RUN:
            raise KeyboardInterrupt
        raise SystemExit(0)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_sigterm)


def _stop_workers(pool: ProcessPoolExecutor, grace_s: float = 120.0) -> None:
    """SIGTERM every worker: one that is training saves its checkpoint and exits; an idle one
    exits at once. Wait for them, so that every checkpoint is complete when the driver exits."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public accessor
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=grace_s)
        if p.is_alive():
            p.kill()


def make_executor(kind: str, *, jobs: int | None, ray_address: str | None,
                  threads: int | None = None, gpus: float = 0.0):
    """`gpus`: what each Ray task asks for (1 when the runs train on --device cuda)."""
    from prlbench.errors import ConfigError

    for flag, value in (("--jobs", jobs), ("--threads", threads)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value} (leave it out for the default)")
    cores = os.cpu_count() or 1
    if kind == "local":
        jobs = jobs or max(1, min(cores, 2))
        return LocalExecutor(jobs, threads or max(1, cores // jobs))
    if kind == "ray":
        from prlbench.ray_executor import RayExecutor

        return RayExecutor(address=ray_address, threads=threads or 1, jobs=jobs, gpus=gpus)
    raise ConfigError(f"--executor must be local or ray, got {kind!r}")


# ---------------------------------------------------------------------------------- grid
def run_grid(grid: Grid, *, executor, data_dir: Path, out: Path, train: bool = True,
             on_event: Callable | None = None) -> list[Outcome]:
    """Run (or reuse) every run of the grid; returns one Outcome per run of the table, then
    one per candidate setting not chosen on the first seed (role "candidate": recorded with its
    validation score or error, never reported in the tables)."""
    on_event = on_event or (lambda *a: None)
    first, rest = grid.seeds[0], grid.seeds[1:]
    phase1 = [grid.config(d, m, l, first, p) for d, m, l in _arms(grid)
              for p in grid.candidates(l)]
    outcomes = _execute(phase1, executor, data_dir, out, train, on_event)
    chosen = _select(grid, phase1, outcomes)
    phase2 = [replace(c, train=replace(c.train, seed=s)) for c in chosen for s in rest]
    outcomes.update(_execute(phase2, executor, data_dir, out, train, on_event))
    lost = [c for c in phase1 if not any(c is k for k in chosen)]
    for c in lost:
        outcomes[id(c)].role = "candidate"
    return [outcomes[id(c)] for c in chosen + phase2 + lost]


def _arms(grid: Grid) -> Iterable[tuple[str, str, str]]:
    return itertools.product(grid.datasets, grid.models, grid.losses)


def _execute(cfgs: list[RunConfig], executor, data_dir: Path, out: Path, train: bool,
             on_event: Callable) -> dict[int, Outcome]:
    if not train:
        return {id(c): _lookup(c, data_dir, out) for c in cfgs}
    found = executor.map(cfgs, data_dir, out, on_event)
    outcomes = {}
    for cfg, r in zip(cfgs, found):
        if r["status"] == "failed":
            _record_failure(out, r)
        run_dir = Path(r["run_dir"]) if r.get("run_dir") else None
        outcomes[id(cfg)] = Outcome(r["run_id"], cfg, r["status"], run_dir, r.get("error", ""),
                                    r.get("seconds", 0.0))
    return outcomes


def _lookup(cfg: RunConfig, data_dir: Path, out: Path) -> Outcome:
    """--tables-only: a finished run of this config, or 'missing'."""
    from prlbench.data.cache import data_hash

    rid = run_id(cfg, data_hash(Path(data_dir) / cfg.data.dataset))
    d = results.finished_dir(out, rid)
    return Outcome(rid, cfg, "reused" if results.is_finished(d) else "missing",
                   d if results.is_finished(d) else None)


def _select(grid: Grid, phase1: list[RunConfig], outcomes: dict[int, Outcome]) -> list[RunConfig]:
    """Per (dataset, model, loss): the candidate with the best validation score (first seed)."""
    chosen = []
    for key, group in itertools.groupby(phase1, key=lambda c: (c.data.dataset, c.model.name,
                                                               c.loss.name)):
        group = list(group)
        scored = [(_val_score(outcomes[id(c)]), i) for i, c in enumerate(group)]
        best = max(scored)[1] if any(s > float("-inf") for s, _ in scored) else 0
        chosen.append(group[best])
    return chosen


def best_val_score(run_dir: Path | None) -> float | None:
    """The validation score a finished run chose its epoch by (None when unknown)."""
    record = run_dir / "run.json" if run_dir is not None else None
    return results.read_json(record).get("best_val_score") if record and record.exists() else None


def _val_score(o: Outcome) -> float:
    score = best_val_score(o.run_dir)
    return float("-inf") if score is None else float(score)

"""Where the runs of a grid execute: this process, a local process pool, or a Ray cluster.

An executor's `map(cfgs, data_dir, out, on_event)` trains (or reuses) every config and returns one
`RunResult` per config, in order. A failed run is a result, not an exception; only Ctrl-C /
SIGTERM (`Interrupted`, KeyboardInterrupt) stops the grid. Two processes never train the same run
at once: a run holds its lock in the store while it trains or is stored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from prlbench import signals
from prlbench.config import RunConfig, run_id
from prlbench.errors import ConfigError, Interrupted, StoreError
from prlbench.store import Outcome, RunFolder, Store

OnEvent = Callable[[str, RunConfig, "RunResult | None"], None]  # ("start" | "end", cfg, result)


@dataclass(frozen=True)
class RunResult:
    """What executing one run gave."""

    run_id: str | None  # None: it failed before its id was known (data not preprocessed)
    status: Outcome  # TRAINED, REUSED or FAILED
    run_dir: str | None = None  # the finished folder
    error: str = ""
    trace: str = ""
    seconds: float = 0.0
    files: dict = field(default_factory=dict, repr=False)  # Ray: the run folder's files


def run_one(cfg_dict: dict, data_dir: str, out: str, threads: int) -> RunResult:
    """Train (or reuse) one run in this process (see the module doc)."""
    with signals.working():
        return _run_one(cfg_dict, data_dir, out, threads)


def _run_one(cfg_dict: dict, data_dir: str, out: str, threads: int) -> RunResult:
    import torch

    from prlbench.data.cache import open_cache
    from prlbench.engine.run import train_run

    torch.set_num_threads(threads)
    cfg = RunConfig.from_dict(cfg_dict)
    t0 = time.perf_counter()
    rid = None
    try:
        manifest = open_cache(Path(data_dir), cfg.data.dataset, verify=False)
        rid = run_id(cfg, manifest.data_sha256)
        store = Store(Path(out))
        with store.lock(rid):
            finished = _done(store.finished(rid))
            # An earlier attempt's failure record must not travel into the finished folder.
            store.partial(rid).drop_failure()
            run_dir = train_run(cfg, data_dir=Path(data_dir), out=Path(out), resume=True,
                                progress=False)
        return RunResult(rid, Outcome.REUSED if finished else Outcome.TRAINED, str(run_dir),
                         seconds=time.perf_counter() - t0)
    except (Interrupted, KeyboardInterrupt):
        raise  # the checkpoint is saved; the next compare resumes this run
    except Exception as e:  # noqa: BLE001 - a failed run is recorded; the grid goes on
        return RunResult(rid, Outcome.FAILED, error=f"{type(e).__name__}: {e}",
                         trace=traceback.format_exc(), seconds=time.perf_counter() - t0)


def run_pack(cfg_dicts: list[dict], data_dir: str, out: str, threads: int) -> list[RunResult]:
    """Train (or reuse) runs that differ only in seed and loss as one pack in this process
    (prlbench.engine.pack): one result per config, in order."""
    with signals.working():
        return _run_pack(cfg_dicts, data_dir, out, threads)


def _run_pack(cfg_dicts: list[dict], data_dir: str, out: str, threads: int) -> list[RunResult]:
    import contextlib

    import torch

    from prlbench.data.cache import open_cache
    from prlbench.engine.pack import train_pack

    torch.set_num_threads(threads)
    cfgs = [RunConfig.from_dict(d) for d in cfg_dicts]
    t0 = time.perf_counter()
    rids: list = [None] * len(cfgs)
    try:
        manifest = open_cache(Path(data_dir), cfgs[0].data.dataset, verify=False)
        rids = [run_id(c, manifest.data_sha256) for c in cfgs]
        store = Store(Path(out))
        with contextlib.ExitStack() as locks:
            for rid in sorted(set(rids)):  # one order everywhere: no two packs wait on each other
                locks.enter_context(store.lock(rid))
            for rid in rids:
                store.partial(rid).drop_failure()
            found = train_pack(cfgs, data_dir=Path(data_dir), out=Path(out), resume=True,
                               progress=False)
    except (Interrupted, KeyboardInterrupt):
        raise  # every member's checkpoint is saved; the next compare resumes the pack
    except Exception as e:  # noqa: BLE001 - the pack's runs fail; the grid goes on
        return [RunResult(rid, Outcome.FAILED, error=f"{type(e).__name__}: {e}",
                          trace=traceback.format_exc(), seconds=time.perf_counter() - t0)
                for rid in rids]
    seconds = time.perf_counter() - t0
    return [RunResult(r.run_id, Outcome.FAILED, error=r.error, seconds=seconds) if r.error
            else RunResult(r.run_id, Outcome.REUSED if r.reused else Outcome.TRAINED, r.run_dir,
                           seconds=seconds)
            for r in found]


def pack_plan(cfgs: list[RunConfig], *, pack: bool, workers: int, max_members: int = 16
              ) -> list[list[int]]:
    """The jobs that run `cfgs`: lists of indices, one list per process. With `pack`, the runs
    that can share a pack (equal `pack_key`) are split into packs of at most
    `max_members`, and into at least `workers` packs where there are enough runs, so that every
    worker has one; the others, and every run without `pack`, are one job each."""
    from prlbench.engine.pack import pack_key

    if not pack:
        return [[i] for i in range(len(cfgs))]
    groups: dict = {}
    jobs: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        groups.setdefault(pack_key(cfg), []).append(i)
    for members in groups.values():
        n = len(members)
        count = min(n, max(workers, -(-n // max_members)))
        size, extra = divmod(n, count)
        start = 0
        for k in range(count):
            stop = start + size + (1 if k < extra else 0)
            jobs.append(members[start:stop])
            start = stop
    return sorted(jobs, key=lambda job: job[0])


def _execute_job(job_args: list[tuple]) -> list[RunResult]:
    """A job of pack_plan, given its runs' run_one arguments: one run, or a pack."""
    if len(job_args) == 1:
        return [run_one(*job_args[0])]
    data_dir, out, threads = job_args[0][1:]
    return run_pack([a[0] for a in job_args], data_dir, out, threads)


def _done(folder: RunFolder) -> bool:
    """Finished; a run.json that cannot be read is not (train_run sets the folder aside)."""
    try:
        return folder.is_finished()
    except StoreError:
        return False


class LocalExecutor:
    """A process pool of `jobs` workers with `threads` torch threads each (jobs x threads <=
    cores). jobs == 1 runs in this process. With `pack`, runs that differ only in seed and
    loss train as packs (pack_plan)."""

    def __init__(self, jobs: int, threads: int, pack: bool = False) -> None:
        self.jobs, self.threads, self.pack = jobs, threads, pack

    def map(self, cfgs: list[RunConfig], data_dir: Path, out: Path,
            on_event: OnEvent) -> list[RunResult]:
        args = [(c.to_dict(), str(data_dir), str(out), self.threads) for c in cfgs]
        plan = pack_plan(cfgs, pack=self.pack, workers=self.jobs)
        found: dict[int, RunResult] = {}

        def started(job: list[int]) -> None:
            for i in job:
                on_event("start", cfgs[i], None)

        def ended(job: list[int], results: list[RunResult]) -> None:
            for i, r in zip(job, results, strict=True):
                found[i] = r
                on_event("end", cfgs[i], r)

        if self.jobs == 1:
            for job in plan:
                started(job)
                ended(job, _execute_job([args[i] for i in job]))
        else:
            self._pooled(plan, args, started, ended)
        return [found[i] for i in range(len(cfgs))]

    def pool(self) -> ProcessPoolExecutor:
        """`jobs` workers, each of which exits when this process dies (signals.worker_init)."""
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # fork after torch is imported is not safe
        return ProcessPoolExecutor(self.jobs, mp_context=ctx, initializer=signals.worker_init,
                                   initargs=(os.getpid(),))

    def _pooled(self, plan: list[list[int]], args: list[tuple], started, ended) -> None:
        pool = self.pool()
        try:
            pending: dict[Future, list[int]] = {}
            queue = list(plan)
            while queue or pending:
                while queue and len(pending) < self.jobs:
                    job = queue.pop(0)
                    started(job)
                    # only the job's own configs travel to the worker
                    pending[pool.submit(_execute_job, [args[i] for i in job])] = job
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    ended(job, fut.result())
        except BaseException:  # Ctrl-C, SIGTERM, or a worker's Interrupted
            signals.stop_workers(pool)
            raise
        pool.shutdown(wait=True)


# --------------------------------------------------------------------------------- Ray
def _train_remote(cfg_dicts: list[dict], data_dir: str, threads: int) -> list[RunResult]:
    """Runs on a Ray worker: train one run or a pack into a scratch folder, return each run's
    files."""
    scratch = tempfile.mkdtemp(prefix="prlbench-ray-")
    try:
        found = (run_pack(cfg_dicts, data_dir, scratch, threads) if len(cfg_dicts) > 1
                 else [run_one(cfg_dicts[0], data_dir, scratch, threads)])
        return [replace(r, files=RunFolder(Path(r.run_dir)).files()) if r.run_dir else r
                for r in found]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class RayExecutor:
    """Each run is one Ray task with its CPU / GPU request. The task trains into a scratch
    folder on its worker and returns the finished run folder's files; the driver alone writes
    them into the store (a partial folder renamed into place). The data cache must be readable
    at the same path on every node."""

    def __init__(self, *, address: str | None, threads: int = 1, jobs: int | None = None,
                 gpus: float = 0.0, pack: bool = False) -> None:
        try:
            import ray
        except ImportError as e:
            raise ConfigError("--executor ray needs Ray: pip install 'prlbench[ray]'") from e
        self.ray = ray
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": jobs}
            try:
                ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
            except (ConnectionError, RuntimeError) as e:
                if not address:
                    raise
                # Ray's own advice names its flags (--address); say it in prlbench's terms
                why = str(e).split(". Please specify")[0].rstrip(".")
                raise ConnectionError(
                    f"no Ray cluster at --ray-address {address} ({why}): start one with "
                    "`ray start --head` and pass its address (--ray-address auto on its "
                    "head node, or ray://HOST:10001), or leave --ray-address out to run on a "
                    "local Ray instance") from None
        self.threads, self.gpus, self.pack = threads, gpus, pack
        self.workers = jobs or int(ray.cluster_resources().get("CPU", 1)) // max(threads, 1)
        self._task = ray.remote(_train_remote)

    def map(self, cfgs: list[RunConfig], data_dir: Path, out: Path,
            on_event: OnEvent) -> list[RunResult]:
        refs, found, todo = {}, {}, []
        for i, cfg in enumerate(cfgs):
            on_event("start", cfg, None)
            reused = _finished(cfg, Path(data_dir), Path(out))
            if reused:  # decided here: a worker, training into scratch, would train it again
                found[i] = reused
                on_event("end", cfg, reused)
            else:
                todo.append(i)
        plan = pack_plan([cfgs[i] for i in todo], pack=self.pack, workers=max(self.workers, 1))
        for job in ([todo[k] for k in job] for job in plan):
            task = self._task.options(num_cpus=self.threads, num_gpus=self.gpus)
            ref = task.remote([cfgs[i].to_dict() for i in job],
                              str(Path(data_dir).resolve()), self.threads)
            refs[ref] = job
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            job = refs[done[0]]
            for i, r in zip(job, self.ray.get(done[0]), strict=True):
                found[i] = _store(r, Store(Path(out)))
                on_event("end", cfgs[i], found[i])
        return [found[i] for i in range(len(cfgs))]


def _store(r: RunResult, store: Store) -> RunResult:
    """Write a run returned by a worker into the driver's store: partial folder, then rename."""
    files, r = r.files, replace(r, files={})
    if r.status == Outcome.FAILED or not files:
        return r
    # The lock keeps another compare (local or Ray) out of this run's partial folder.
    with store.lock(r.run_id):
        final = store.finished(r.run_id)
        if final.is_finished():
            return replace(r, status=Outcome.REUSED, run_dir=str(final.path))
        part = store.partial(r.run_id)
        shutil.rmtree(part.path, ignore_errors=True)
        part.write_files(files)
        return replace(r, run_dir=str(store.publish(part).path))


def _finished(cfg: RunConfig, data_dir: Path, out: Path) -> RunResult | None:
    """The result of a run already finished in the driver's store, else None."""
    from prlbench.data.cache import data_hash

    try:
        rid = run_id(cfg, data_hash(data_dir, cfg.data.dataset))
    except OSError:  # not preprocessed here: the task reports it as the run's error
        return None
    final = Store(out).finished(rid)
    return RunResult(rid, Outcome.REUSED, str(final.path)) if final.is_finished() else None


def make_executor(kind: str, *, jobs: int | None, ray_address: str | None,
                  threads: int | None = None, gpus: float = 0.0, pack: bool = False):
    """`gpus`: what each Ray task asks for (1 when the runs train on --device cuda); `pack`:
    train runs that differ only in seed and loss as packs."""
    for flag, value in (("--jobs", jobs), ("--threads", threads)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value} (leave it out for the default)")
    cores = os.cpu_count() or 1
    if kind == "local":
        jobs = jobs or max(1, min(cores, 2))
        return LocalExecutor(jobs, threads or max(1, cores // jobs), pack=pack)
    if kind == "ray":
        return RayExecutor(address=ray_address, threads=threads or 1, jobs=jobs, gpus=gpus,
                           pack=pack)
    raise ConfigError(f"--executor must be local or ray, got {kind!r}")

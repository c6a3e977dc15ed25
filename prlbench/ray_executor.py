"""Run the grid on a Ray cluster (`pip install prlbench[ray]`).

Each run is one Ray task with its CPU / GPU request. The task trains into a scratch folder on
its worker and returns the finished run folder's files as bytes; the driver alone writes them
into the result store (a partial folder renamed into place), so workers never touch it. The
data cache must be readable at the same path on every node (a shared file system, or the same
`prlbench preprocess` run on each node).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from prlbench import results
from prlbench.config import RunConfig, run_id
from prlbench.errors import ConfigError


def _train_remote(cfg_dict: dict, data_dir: str, threads: int) -> dict:
    """Runs on a Ray worker: train into a scratch folder, return the run's files."""
    from prlbench.runner import run_one

    scratch = tempfile.mkdtemp(prefix="prlbench-ray-")
    try:
        r = run_one(cfg_dict, data_dir, scratch, threads)
        if r.get("run_dir"):
            run_dir = Path(r["run_dir"])
            r["files"] = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        return r
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class RayExecutor:
    def __init__(self, *, address: str | None, threads: int = 1, jobs: int | None = None,
                 gpus: float = 0.0) -> None:
        try:
            import ray
        except ImportError as e:
            raise ConfigError("--executor ray needs Ray: pip install 'prlbench[ray]'") from e
        self.ray = ray
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": jobs}
            ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
        self.threads, self.gpus = threads, gpus
        self._task = ray.remote(_train_remote)

    def map(self, cfgs: list[RunConfig], data_dir: Path, out: Path,
            on_event: Callable[[str, RunConfig, dict | None], None]) -> list[dict]:
        refs, found = {}, {}
        for i, cfg in enumerate(cfgs):
            on_event("start", cfg, None)
            reused = _finished(cfg, Path(data_dir), Path(out))
            if reused:  # decided here: a worker, training into scratch, would train it again
                found[i] = reused
                on_event("end", cfg, reused)
                continue
            task = self._task.options(num_cpus=self.threads, num_gpus=self.gpus)
            refs[task.remote(cfg.to_dict(), str(Path(data_dir).resolve()), self.threads)] = i
        pending = list(refs)
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            i = refs[done[0]]
            found[i] = self._store(self.ray.get(done[0]), Path(out))
            on_event("end", cfgs[i], found[i])
        return [found[i] for i in range(len(cfgs))]

    @staticmethod
    def _store(r: dict, out: Path) -> dict:
        """Write a returned run into the driver's store: partial folder, then rename."""
        from prlbench.engine.train import _publish
        from prlbench.runner import run_lock

        files = r.pop("files", None)
        if r["status"] == "failed" or not files:
            return r
        # The lock keeps another compare (local or Ray) out of this run's partial folder.
        with run_lock(out, r["run_id"]):
            final = results.finished_dir(out, r["run_id"])
            if results.is_finished(final):
                r.update(status="reused", run_dir=str(final))
                return r
            part = results.partial_dir(out, r["run_id"])
            shutil.rmtree(part, ignore_errors=True)
            for name, data in files.items():
                results.atomic_write_bytes(part / name, data)
            results.write_json(part / "ray.json", {"stored": time.time()})
            r["run_dir"] = str(_publish(part, final))
        return r


def _finished(cfg: RunConfig, data_dir: Path, out: Path) -> dict | None:
    """The result of a run already finished in the driver's store, else None."""
    from prlbench.data.cache import data_hash

    try:
        rid = run_id(cfg, data_hash(data_dir / cfg.data.dataset))
    except OSError:  # not preprocessed here: the task reports it as the run's error
        return None
    final = results.finished_dir(out, rid)
    if not results.is_finished(final):
        return None
    return {"run_id": rid, "status": "reused", "run_dir": str(final), "seconds": 0.0}

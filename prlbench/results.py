"""The run record on disk: atomic writes, the run folder's layout, reading it back.

A run folder `runs/<run-id>/` holds:
  config.json        the resolved RunConfig (see prlbench.config)
  run.json           status, run id, versions, data content hash, timings, error if any
  history.json       validation metrics per epoch (and train loss, samples/s)
  best.pt            the best model's state_dict (torch.load(..., weights_only=True))
  state.pt           the resume state (model, optimizer, RNG states, position in the epoch)
  metrics.json       test metrics (written by evaluate)
  predictions.parquet  per-example test predictions (written by evaluate)
While training, the folder is `runs/<run-id>.partial/`; it is renamed to `runs/<run-id>/` only
when training and evaluation have finished, so a folder without the suffix is always complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

PARTIAL = ".partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def atomic_torch_save(obj: Any, path: Path) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_parquet(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def runs_dir(out: Path) -> Path:
    return Path(out) / "runs"


def finished_dir(out: Path, run_id: str) -> Path:
    return runs_dir(out) / run_id


def partial_dir(out: Path, run_id: str) -> Path:
    return runs_dir(out) / f"{run_id}{PARTIAL}"


def is_finished(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    if run_dir.name.endswith(PARTIAL) or not (run_dir / "run.json").exists():
        return False
    return read_json(run_dir / "run.json").get("status") == "done"

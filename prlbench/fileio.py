"""Atomic file writes: a temporary file in the same folder, fsync, then one rename, so that an
interrupted command never leaves a half-written file (the old one stays, or none)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """`write(f)` into a new temporary file beside `path` (mkstemp: never a file or link that
    was there), fsync, then one rename onto `path`: whole or not at all, for data too large to
    hold as bytes first (a numpy array: `lambda f: np.save(f, a)`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Ctrl-C / SIGTERM wait until the file is whole or gone: a signal between mkstemp and the
    # try below would leave the temporary file behind.
    from prlbench.signals import deferred

    with deferred():
        _write_then_rename(path, write)


def _write_then_rename(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
        with os.fdopen(fd, "wb") as f:
            write(f)
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

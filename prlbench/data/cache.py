"""The Parquet cache, built whole and checked on every open.

Every preprocessor hands its rows to a `CacheBuilder`, which

1. checks the labels of each chunk (naming the source file and line of a bad row),
2. carves the validation split out of train by whole groups (a fixed-seed hash of the group id,
   independent of any training seed), unless the source gives it (KuaiRand: by date),
3. counts categorical ids on the train split only, and re-indexes them (unseen / rare -> 0),
4. writes `{train,val,test}.parquet` (and any extra evaluation split, such as KuaiRand's
   `test_random.parquet`, listed under "extra_splits") and `manifest.json` into a temporary
   folder that replaces the cache only once everything is written: a failure leaves the old
   cache (or nothing).

Chunks are staged on disk as Parquet files, so the real ~40 GB Ali-CCP files stream through in
bounded memory. `open_cache` reads a manifest back and checks that the files match it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq

from prlbench import __version__
from prlbench.data import variants
from prlbench.errors import CacheError, DataError
from prlbench.fileio import atomic_write_bytes

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
VAL_FRACTION = 0.1
VAL_SEED = 20240604  # fixed: the validation split never depends on a run's seed
_HASH_BUCKETS = 1_000_000


@dataclass(frozen=True)
class Schema:
    """Column names and roles of a processed data set."""

    categorical: tuple[str, ...]
    numerical: tuple[str, ...]
    group: str = "search_id"
    click: str = "click"
    conversion: str = "conversion"

    def columns(self) -> list[str]:
        return [self.group, *self.categorical, *self.numerical, self.click, self.conversion]


def aliexpress_schema() -> Schema:
    """MTReclib's processed AliExpress layout (also the synthetic data set's)."""
    return Schema(
        categorical=tuple(f"categorical_{i}" for i in range(1, 17)),
        numerical=tuple(f"numerical_{i}" for i in range(1, 64)),
    )


def link_refused(path: Path) -> str:
    return (f"{path} is a symbolic link; prlbench does not follow links it did not make: "
            "remove it")


def open_nofollow(path: Path, flags: int, error: type[Exception] = CacheError) -> int:
    """os.open that never follows a link at `path`: data folders may be shared and
    group-writable, and a planted link must not make prlbench write to a file elsewhere.
    O_NONBLOCK: a planted FIFO fails at once instead of hanging the open."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise error(link_refused(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise error(f"{path} is not a regular file (a device, socket or pipe?); prlbench "
                    "writes only files it made: remove it")
    os.set_blocking(fd, True)
    return fd


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def validation_mask(groups: np.ndarray, fraction: float = VAL_FRACTION,
                    seed: int = VAL_SEED) -> np.ndarray:
    """True for rows whose group falls in the validation split (splitmix64 of the group id)."""
    x = groups.astype(np.uint64) ^ np.uint64(seed)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(_HASH_BUCKETS)) < np.uint64(round(fraction * _HASH_BUCKETS))


def check_labels(click: np.ndarray, conversion: np.ndarray, source: str, first_line: int) -> None:
    """Raise a DataError naming the first bad row: labels must be 0/1, conversion implies click."""
    for name, col in (("click", click), ("conversion", conversion)):
        bad = np.flatnonzero((col != 0) & (col != 1))
        if bad.size:
            raise DataError(f"{source}, line {first_line + bad[0]}: {name} = "
                            f"{col[bad[0]].item()!r}, "
                            "expected 0 or 1; fix or drop that row and rerun preprocess")
    bad = np.flatnonzero((conversion == 1) & (click == 0))
    if bad.size:
        raise DataError(f"{source}, line {first_line + bad[0]}: a conversion without a click; "
                        "conversion must imply click (fix or drop that row)")


class _IdCounter:
    """Running (sorted unique ids, counts) of one categorical column, merged chunk by chunk."""

    def __init__(self) -> None:
        self.ids = np.empty(0, np.int64)
        self.counts = np.empty(0, np.int64)

    def add(self, values: np.ndarray) -> None:
        ids, counts = np.unique(values, return_counts=True)
        all_ids = np.concatenate([self.ids, ids])
        all_counts = np.concatenate([self.counts, counts])
        self.ids, inverse = np.unique(all_ids, return_inverse=True)
        self.counts = np.bincount(inverse, weights=all_counts, minlength=len(self.ids)).astype(
            np.int64)

    def vocabulary(self, min_count: int) -> np.ndarray:
        """Sorted ids seen more than `min_count` times; id k of it gets code k + 1 (0: other)."""
        return self.ids[self.counts > min_count]


def encode(values: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """Map raw ids to codes 1..len(vocabulary); ids not in the vocabulary map to 0."""
    if len(vocabulary) == 0:
        return np.zeros(len(values), np.int32)
    pos = np.searchsorted(vocabulary, values)
    pos_clipped = np.minimum(pos, len(vocabulary) - 1)
    found = vocabulary[pos_clipped] == values
    return np.where(found, pos_clipped + 1, 0).astype(np.int32)


def _rates(click: np.ndarray, conversion: np.ndarray) -> dict[str, float]:
    n, clicks, conv = len(click), int(click.sum()), int(conversion.sum())
    return {
        "rows": n,
        "clicks": clicks,
        "conversions": conv,
        "click_rate": clicks / n if n else 0.0,
        "ctcvr_rate": conv / n if n else 0.0,
        "cvr_rate": conv / clicks if clicks else 0.0,
    }


class CacheBuilder:
    """Collects raw chunks per split and writes the finished cache atomically.

    Use as a context manager; call `add(...)` for each chunk, then `finish(...)`. Leaving the
    block by an exception removes everything staged and leaves any existing cache untouched.
    """

    def __init__(self, out_dir: Path, schema: Schema, *, min_count: int = 0,
                 has_groups: bool = True, carve_val: bool = True,
                 validation: dict | None = None, extra_splits: tuple[str, ...] = ()) -> None:
        # A cache folder that is a symlink (a big data set on another disk) is rebuilt where
        # it points, so that the link stays valid and the swap stays on one file system.
        self.out_dir = _resolved(Path(out_dir))
        self.schema = schema
        self.min_count = min_count
        self.has_groups = has_groups
        self.carve_val = carve_val
        # How a validation split given by the source was made (KuaiRand: by date); recorded in
        # the manifest instead of {"given_by_source": true}.
        self.validation = validation
        # Further evaluation splits beside train / val / test (KuaiRand's random log), encoded
        # with the same train vocabulary and listed under "extra_splits" in the manifest.
        self.extra_splits = tuple(extra_splits)
        self._counters = {c: _IdCounter() for c in schema.categorical}
        self._chunks: dict[str, list[Path]] = {s: [] for s in (*SPLITS, *self.extra_splits)}
        self._side_chunks: dict[str, list[Path]] = {s: [] for s in SPLITS}
        self._stage: Path | None = None

    def __enter__(self) -> "CacheBuilder":
        # (`preprocess` holds the data set's lock around all of this)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.out_dir)
        self._stage = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.staging-{os.getpid()}-",
                                            dir=self.out_dir.parent))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)

    def add(self, split: str, columns: Mapping[str, np.ndarray], *, source: str,
            first_line: int = 1, side: Mapping[str, np.ndarray] | None = None) -> None:
        """Stage one chunk of raw rows for `split` ("train" rows are divided into train / val).

        `columns` holds every schema column (raw categorical ids as integers). `side` holds
        extra per-row columns written to `{split}.side.parquet`, aligned row for row (the
        synthetic data set's true probabilities), never into the feature files.
        """
        if split not in SPLITS and split not in self.extra_splits:
            raise ValueError(f"unknown split {split!r}")
        missing = [c for c in self.schema.columns() if c not in columns]
        if missing:
            raise DataError(f"{source}: missing columns {missing[:5]}; the input does not have "
                            "the expected layout")
        click = np.asarray(columns[self.schema.click])
        conversion = np.asarray(columns[self.schema.conversion])
        check_labels(click, conversion, source, first_line)
        table = self._to_arrow(columns)
        side_table = pa.table({k: np.asarray(v) for k, v in side.items()}) if side else None
        if split == "train" and self.carve_val:
            in_val = validation_mask(np.asarray(columns[self.schema.group]))
            self._stage_chunk("val", table.filter(pa.array(in_val)),
                              side_table.filter(pa.array(in_val)) if side_table else None)
            table = table.filter(pa.array(~in_val))
            side_table = side_table.filter(pa.array(~in_val)) if side_table else None
        self._stage_chunk(split, table, side_table)

    def _to_arrow(self, columns: Mapping[str, np.ndarray]) -> pa.Table:
        s = self.schema
        arrays = {s.group: np.asarray(columns[s.group], np.int64)}
        arrays.update({c: np.asarray(columns[c], np.int64) for c in s.categorical})
        arrays.update({c: np.asarray(columns[c], np.float32) for c in s.numerical})
        arrays[s.click] = np.asarray(columns[s.click], np.int8)
        arrays[s.conversion] = np.asarray(columns[s.conversion], np.int8)
        return pa.table(arrays)

    def _stage_chunk(self, split: str, table: pa.Table, side: pa.Table | None) -> None:
        assert self._stage is not None, "use CacheBuilder as a context manager"
        if table.num_rows == 0:
            return
        if split == "train":
            for c in self.schema.categorical:
                self._counters[c].add(table.column(c).to_numpy())
        # Staged as uncompressed Arrow IPC: ~10x cheaper to write and read back than Parquet.
        path = self._stage / f"{split}-{len(self._chunks[split]):06d}.arrow"
        feather.write_feather(table, path, compression="uncompressed")
        self._chunks[split].append(path)
        if side is not None:
            side_path = path.with_suffix(".side.arrow")
            feather.write_feather(side, side_path, compression="uncompressed")
            self._side_chunks[split].append(side_path)

    def finish(self, *, dataset: str, inputs: list[dict] | None = None,
               params: dict | None = None) -> dict:
        """Re-index, write the final files and the manifest, then swap them into place."""
        assert self._stage is not None, "use CacheBuilder as a context manager"
        if not self._chunks["train"]:
            why = ("every training row fell into the validation split: the training data has too "
                   "few searches to hold 10 % of them out" if self._chunks["val"]
                   else f"no training rows were read{_inputs_of('train', inputs)}")
            raise DataError(f"{dataset}: {why}; check the source files (the previous cache, if "
                            "any, is kept)")
        vocab = {c: self._counters[c].vocabulary(self.min_count) for c in self.schema.categorical}
        final = self._stage / "final"
        final.mkdir()
        splits, side_files = {}, {}
        for split in SPLITS:
            splits[split] = self._write_split(split, vocab, final)
            if self._side_chunks[split]:
                side_files[split] = self._concat_side(split, final)
        extra = {s: self._write_split(s, vocab, final) for s in self.extra_splits}
        empty = [s for s in ("val", "test") if splits[s]["rows"] == 0]
        empty += [s for s in self.extra_splits if extra[s]["rows"] == 0]
        if empty:
            why = ("the training data has too few searches to hold 10 % of them out"
                   if empty == ["val"] and self.carve_val
                   else f"its input held no rows{_inputs_of(empty[-1], inputs)}")
            raise DataError(f"{dataset}: the {' and '.join(empty)} split is empty ({why}); check "
                            "the source files (the previous cache, if any, is kept)")
        manifest = {
            "format": FORMAT_VERSION,
            "dataset": dataset,
            "prlbench_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "columns": {
                "group": self.schema.group,
                "categorical": list(self.schema.categorical),
                "numerical": list(self.schema.numerical),
                "click": self.schema.click,
                "conversion": self.schema.conversion,
            },
            "has_groups": self.has_groups,
            "vocab_sizes": {c: int(len(v) + 1) for c, v in vocab.items()},
            "vocabulary": {"built_on": "train (validation rows excluded)",
                           "min_count": self.min_count, "other_code": 0},
            "validation": ({"fraction": VAL_FRACTION, "seed": VAL_SEED,
                            "by": self.schema.group if self.has_groups else "row"}
                           if self.carve_val else self.validation or {"given_by_source": True}),
            "splits": splits,
            **({"extra_splits": extra} if extra else {}),
            "side_files": side_files,
            "inputs": inputs or [],
            "params": params or {},
        }
        _write_json(final / MANIFEST, manifest)
        _swap_into_place(final, self.out_dir)
        return manifest

    def _write_split(self, split: str, vocab: dict[str, np.ndarray], final: Path) -> dict:
        path = final / f"{split}.parquet"
        clicks, convs = [], []
        writer = None
        try:
            for chunk in self._chunks[split]:
                table = feather.read_table(chunk, memory_map=True)
                for c in self.schema.categorical:
                    idx = table.schema.get_field_index(c)
                    codes = encode(table.column(c).to_numpy(), vocab[c])
                    table = table.set_column(idx, c, pa.array(codes, pa.int32()))
                clicks.append(table.column(self.schema.click).to_numpy())
                convs.append(table.column(self.schema.conversion).to_numpy())
                if writer is None:
                    # Dictionary-encode the integer columns only: on the 63 float columns it
                    # costs ~6x the write time and saves little.
                    ints = [self.schema.group, *self.schema.categorical, self.schema.click,
                            self.schema.conversion]
                    writer = pq.ParquetWriter(path, table.schema, compression="zstd",
                                              use_dictionary=ints)
                writer.write_table(table, row_group_size=1 << 20)
            if writer is None:  # an empty split still gets a file with the right schema
                pq.write_table(self._empty_table(), path)
        finally:
            if writer is not None:
                writer.close()
        rates = _rates(np.concatenate(clicks) if clicks else np.empty(0, np.int8),
                       np.concatenate(convs) if convs else np.empty(0, np.int8))
        return {"file": path.name, **rates, **_file_facts(path)}

    def _empty_table(self) -> pa.Table:
        s = self.schema
        fields = [pa.field(s.group, pa.int64())]
        fields += [pa.field(c, pa.int32()) for c in s.categorical]
        fields += [pa.field(c, pa.float32()) for c in s.numerical]
        fields += [pa.field(s.click, pa.int8()), pa.field(s.conversion, pa.int8())]
        return pa.schema(fields).empty_table()

    def _concat_side(self, split: str, final: Path) -> dict:
        path = final / f"{split}.side.parquet"
        table = pa.concat_tables([feather.read_table(p, memory_map=True)
                                  for p in self._side_chunks[split]])
        pq.write_table(table, path, compression="zstd")
        return {"file": path.name, "columns": table.column_names, **_file_facts(path)}


def _inputs_of(split: str, inputs: list[dict] | None) -> str:
    """": /path/a.csv, /path/b.zip": the input files that feed `split` (from input_facts)."""
    paths = [i["path"] for i in inputs or []
             if any(r == split or r.endswith(f"_{split}") for r in i.get("roles", ()))]
    return f": {', '.join(paths)}" if paths else ""


def _file_facts(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dataset_dir(data_dir: Path, name: str) -> Path:
    """The folder of data set `name` under `data_dir`: `data_dir/name` for a registered name,
    `data_dir/synthetic-noise0.5` for a variant such as `synthetic[noise=0.5]` (see
    prlbench.data.variants). Every path to a cache is made here."""
    return Path(data_dir) / variants.cache_name(name)


def _resolved(folder: Path) -> Path:
    return folder.resolve() if folder.is_symlink() else folder


def cache_folder(data_dir: Path, name: str) -> Path:
    """Where data set `name`'s cache lives: `dataset_dir(data_dir, name)`, or where it points
    when it is a symlink (a big data set on another disk). Staging, swaps, sweeps and the lock
    happen there, so the link stays valid and a swap stays on one file system."""
    return _resolved(dataset_dir(data_dir, name))


def _flock_at(where: Callable[[], Path], mode: int, flags: int, waiting: str) -> int:
    """A file descriptor holding a flock (`mode`) on the file at `where()` as it is once the
    lock is had: a holder before us may remove or replace the file (dataset_lock's holder
    removes it on leaving; a preprocess swaps the cache folder), so the lock is taken again
    until the file locked is the one at the path (lstat: a link put there is not it). Says
    `waiting` on stderr once if another process holds it."""
    import fcntl

    said = False
    while True:
        path = where()
        fd = open_nofollow(path, flags)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                print(waiting, file=sys.stderr, flush=True)
                said = True
            fcntl.flock(fd, mode)
        try:
            if os.lstat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def dataset_lock(data_dir: Path, name: str) -> Iterator[None]:
    """Hold `data_dir/.name.lock` exclusively: one download or preprocess of a data set at a
    time (another one waits, and says so), so none moves raw/ or the records under another."""
    import fcntl

    folder = cache_folder(data_dir, name)  # two links to one store share its lock
    path = folder.parent / f".{folder.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _flock_at(lambda: path, fcntl.LOCK_EX, os.O_WRONLY | os.O_CREAT,
                   f"waiting for another prlbench download or preprocess of "
                   f"{dataset_dir(data_dir, name)} to finish...")
    lock = os.fdopen(fd, "wb")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # nothing left behind; whoever waits locks afresh
        lock.close()


@contextlib.contextmanager
def folder_lock(folder: Path, waiting: str) -> Iterator[Path]:
    """Hold `folder/.lock` exclusively (the folder made if need be), yielding the folder: one
    process at a time builds what lives in it (the column cache); the others wait, saying
    `waiting` once. Neither the folder nor the lock file may be a link (CacheError)."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    if folder.is_symlink():
        raise CacheError(link_refused(folder))
    fd = _flock_at(lambda: folder / ".lock", fcntl.LOCK_EX, os.O_WRONLY | os.O_CREAT, waiting)
    try:
        yield folder
    finally:
        os.close(fd)


# ------------------------------------------------------------------ a data set in use
# A run holds its data set from its start to its last score: a shared lock on `.inuse` inside
# the cache folder, whose file also lists the runs that took it (a line each: pid, then what
# the run is). preprocess takes it exclusively and refuses while any run holds it; a run that
# starts during a preprocess waits for it. The file goes with its folder when a preprocess
# swaps the cache, so nothing is left behind.
INUSE = ".inuse"


def _open_inuse(data_dir: Path, name: str) -> tuple[Path, int] | None:
    folder = dataset_dir(data_dir, name)
    if not folder.is_dir():
        return None
    path = folder / INUSE
    return path, open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)


@contextlib.contextmanager
def dataset_in_use(data_dir: Path, name: str, *, by: str) -> Iterator[None]:
    """Hold data set `name` for a run (`by`: what to call it when a preprocess is refused)."""
    import fcntl

    folder = dataset_dir(data_dir, name)
    if not folder.is_dir():  # not preprocessed: the run fails on it by itself
        yield
        return
    # a preprocess may swap the folder while we wait: then the new one's file is locked
    fd = _flock_at(lambda: dataset_dir(data_dir, name) / INUSE, fcntl.LOCK_SH,
                   os.O_RDWR | os.O_CREAT | os.O_APPEND,
                   f"waiting for the preprocess of {folder} to finish...")
    try:
        os.write(fd, f"{os.getpid()} {by}\n".encode("utf-8", "replace"))
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def dataset_exclusive(data_dir: Path, name: str) -> Iterator[None]:
    """Hold data set `name` alone, for a preprocess: a CacheError naming the runs that hold it
    if any does (its cache is not replaced under a run that trains or scores on it)."""
    import fcntl

    opened = _open_inuse(data_dir, name)
    if opened is None:  # no cache yet: no run can hold it
        yield
        return
    path, fd = opened
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = _holders(path)
            raise CacheError(
                f"{dataset_dir(data_dir, name)} is in use by "
                f"{'; '.join(holders[:3]) if holders else 'a run'}"
                f"{f' and {len(holders) - 3} more' if len(holders) > 3 else ''}: a run trains "
                "and scores on the cache it started with, so it is not replaced under it. "
                "Wait for the run to finish (or stop it), then preprocess again") from None
        os.ftruncate(fd, 0)  # every holder has gone: the list starts afresh
        yield
    finally:
        os.close(fd)


def _holders(path: Path) -> list[str]:
    """The runs listed in a `.inuse` file whose processes are still alive, newest last."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-1000:]
    except OSError:
        return out
    for line in lines:
        pid, _, what = line.partition(" ")
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError, PermissionError, OSError):
            continue
        entry = f"{what} (pid {pid})"
        if entry not in out:
            out.append(entry)
    return out


def check_unchanged(manifest: "Manifest", name: str, split: str | None = None) -> None:
    """The manifest on disk is still `manifest` (read when the run started), and the file of
    `split` (if given: before a run is scored on it) is the one it lists, by content; a
    CacheError otherwise (a run is not scored on data it did not train with)."""
    fix = ("the run is not scored on other data than it trained with; preprocess the data set "
           "as it was, or retrain the run")
    mpath = manifest.dir / MANIFEST
    try:
        now = _content_hash(_read_manifest(mpath, name))
    except (OSError, CacheError) as e:
        raise CacheError(f"the cache of {name} changed while this run used it ({e}); {fix}") \
            from None
    if now != manifest.data_sha256:
        raise CacheError(f"the cache of {name} in {manifest.dir} changed while this run used it "
                         f"(its manifest now describes other data); {fix}")
    entry = (None if split is None else manifest["splits"].get(split)
             if split in manifest["splits"] else manifest.get("extra_splits", {}).get(split))
    if entry is not None:
        try:
            _verify_file(manifest.dir / entry["file"], entry, name, full=True)
        except CacheError as e:
            raise CacheError(f"the cache of {name} changed while this run used it: {e}; "
                             f"{fix}") from None


def sweep_stale(target: Path) -> list[Path]:
    """Remove the staging / old folders of `target` left by a preprocess that was killed
    (SIGKILL, power loss); folders of a process still running are left alone. A swap killed
    halfway is undone first: the old cache is put back, and raw downloads found in either
    folder go back into `target/raw`."""
    target = Path(target)
    dead = []
    for p in target.parent.glob(f".{target.name}.*"):
        m = re.fullmatch(rf"\.{re.escape(target.name)}\.(staging|old)-(\d+)(?:-.*)?", p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(2))):
            dead.append((m.group(1), p))
    for kind, p in sorted(dead, key=lambda kp: kp[0] != "old"):  # old folders first
        if kind == "old" and not target.exists():
            os.replace(p, target)  # the new cache never arrived: the old one is the cache
            continue
        raw = p / "raw" if kind == "old" else p / "final" / "raw"
        if raw.is_dir() and not (target / "raw").exists():
            target.mkdir(exist_ok=True)
            os.replace(raw, target / "raw")
    removed = [p for _, p in dead if p.exists()]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def _swap_into_place(new: Path, target: Path) -> None:
    """Replace `target` by the folder `new`; the old cache is removed only after the swap.

    Raw downloads kept in `target/raw` are moved over, so preprocessing never loses them; if
    any step fails, the old cache (raw/ included) is put back as it was.
    """
    if not target.exists():
        os.replace(new, target)
        return
    if not target.is_dir():
        raise CacheError(f"{target} is a file, not a cache folder; move it away and rerun")
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
    try:
        os.replace(target, old)  # onto the empty folder: one atomic rename
    except BaseException:
        old.rmdir()
        raise
    raw_moved = False
    try:
        if (old / "raw").exists():
            os.replace(old / "raw", new / "raw")
            raw_moved = True
        os.replace(new, target)
    except BaseException:
        if raw_moved and (new / "raw").exists():
            os.replace(new / "raw", old / "raw")
        if not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# What defines a cache's data (and so a run's): not when or from which path it was built.
_IDENTITY_KEYS = ("format", "dataset", "columns", "has_groups", "vocab_sizes", "vocabulary",
                  "validation")


class Manifest(Mapping):
    """A cache's manifest.json, read-only (a Mapping of its keys), with the folder it describes
    (`dir`) and the hash of its content (`data_sha256`, see `data_hash`)."""

    def __init__(self, content: Mapping, folder: Path) -> None:
        self._content, self.dir = dict(content), Path(folder)

    def __getitem__(self, key: str) -> Any:
        return self._content[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._content)

    def __len__(self) -> int:
        return len(self._content)

    @property
    def data_sha256(self) -> str:
        return _content_hash(self._content)

    def path(self, entry: Mapping) -> Path:
        """The file of a splits / side_files entry."""
        return self.dir / entry["file"]


def _content_hash(manifest: Mapping) -> str:
    keys = ("splits", "side_files") + (("extra_splits",) if "extra_splits" in manifest else ())
    files = {k: {s: e.get("sha256") for s, e in manifest.get(k, {}).items()}
             for k in keys}  # extra_splits only where present: the other caches' hash is kept
    identity = {k: manifest.get(k) for k in _IDENTITY_KEYS} | files
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def data_hash(cache_dir: Path, name: str | None = None) -> str:
    """sha256 of what the cache holds: every split file's (and side file's) sha256, the columns,
    vocabulary and validation split. Preprocessing the same data again (another day, another
    source path) gives the same hash, so runs trained on it are found again.

    `data_hash(folder)`: the cache in `folder`; `data_hash(data_dir, name)`: data set `name`'s
    cache under `data_dir` (a variant id such as "synthetic[noise=0.5]" included)."""
    folder = Path(cache_dir) if name is None else dataset_dir(cache_dir, name)
    return _content_hash(_read_manifest(folder / MANIFEST, name or folder.name))


def open_cache(data_dir: Path, name: str, *, verify: bool = True) -> Manifest:
    """Read `data_dir/name/manifest.json` (`dataset_dir`: a variant's own folder) and check
    that every file it lists matches it (and that a variant's folder holds that variant)."""
    cache = dataset_dir(data_dir, name)
    mpath = cache / MANIFEST
    if not mpath.exists():
        raise CacheError(f"data set {name!r} is not preprocessed in {cache} (no {MANIFEST}); "
                         f"run: prlbench preprocess {shlex.quote(name)} --data-dir "
                         f"{shlex.quote(str(data_dir))}")
    manifest = _read_manifest(mpath, name)
    variants.check_manifest(name, manifest, cache)
    entries = list(manifest["splits"].values()) + list(manifest.get("side_files", {}).values())
    entries += list(manifest.get("extra_splits", {}).values())
    for entry in entries:
        _verify_file(cache / entry["file"], entry, name, full=verify)
    return Manifest(manifest, cache)


_ROLES = {"group", "categorical", "numerical", "click", "conversion"}  # a manifest's columns


def _read_manifest(path: Path, name: str) -> dict:
    """The manifest, its layout checked: a damaged one is a CacheError that says what to do."""
    fix = f"rerun: prlbench preprocess {shlex.quote(name)}"
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CacheError(f"{path} is not valid JSON ({e}); {fix}") from None
    problem = None
    if not isinstance(manifest, dict):
        problem = "is not a JSON object"
    elif not isinstance(manifest.get("columns"), dict) or not _ROLES <= manifest["columns"].keys():
        problem = "lacks its columns section (group, categorical, numerical, click, conversion)"
    elif not isinstance(manifest.get("splits"), dict) or set(manifest["splits"]) != set(SPLITS):
        problem = f"lacks its splits section ({', '.join(SPLITS)})"
    else:
        side, extra = manifest.get("side_files", {}), manifest.get("extra_splits", {})
        if not isinstance(side, dict) or not isinstance(extra, dict):
            what = "side_files" if not isinstance(side, dict) else "extra_splits"
            problem = f"has a malformed {what} section (not a mapping)"
        else:
            entries = [*manifest["splits"].items(), *extra.items(),
                       *((f"{s} side file", e) for s, e in side.items())]
            bad = [s for s, e in entries
                   if not isinstance(e, dict) or not {"file", "bytes", "sha256"} <= e.keys()]
            if bad:
                problem = f"has a malformed entry for {bad[0]} (needs file, bytes, sha256)"
    if problem:
        raise CacheError(f"{path} {problem}: the cache was modified or damaged; {fix}")
    return manifest


def _verify_file(path: Path, entry: dict, name: str, *, full: bool) -> None:
    fix = f"rerun: prlbench preprocess {shlex.quote(name)}"
    if not path.exists():
        raise CacheError(f"{path} is listed in the manifest but missing; {fix}")
    if path.stat().st_size != entry["bytes"]:
        raise CacheError(f"{path} has {path.stat().st_size} bytes, the manifest says "
                         f"{entry['bytes']}: the cache was modified; {fix}")
    if full and sha256_file(path) != entry["sha256"]:
        raise CacheError(f"{path} does not match the sha256 in its manifest: the cache was "
                         f"modified; {fix}")

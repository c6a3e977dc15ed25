"""Whole-column tensors and index-sliced mini-batches: no per-sample Python anywhere.

The peers wrap each row in a `Dataset.__getitem__` and let a `DataLoader` collate 2,048 small
tensors per batch; here a split is read once from Parquet into five tensors, and a mini-batch is
five `index_select`s with a slice of one permutation (`benchmarks/bench_data.py` measures both).
Column roles come from the cache's manifest, never from hard-coded names.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from prlbench.data.cache import SPLITS, Manifest, folder_lock, open_cache, sha256_file
from prlbench.errors import CacheError, ConfigError
from prlbench.fileio import atomic_write, atomic_write_bytes

_COLUMNS = 8  # columns decoded at a time when loading a split (a few MB per row group each)


@dataclass
class TensorData:
    """One split, whole columns as tensors on one device (N rows)."""

    categorical: Tensor  # [N, F_cat] int32 embedding indices (the cache's type; half of int64)
    numerical: Tensor    # [N, F_num] float32 (F_num may be 0: shape [N, 0])
    click: Tensor        # [N] float32 in {0, 1}
    conversion: Tensor   # [N] float32 in {0, 1} (click and conversion)
    group: Tensor        # [N] int64 search_id

    def __len__(self) -> int:
        return self.click.shape[0]

    def slice(self, idx: Tensor) -> "TensorData":
        """The rows `idx` ([B] int64, on any device) of every column, in that order."""
        idx = idx.to(self.click.device)
        return TensorData(**{f.name: getattr(self, f.name).index_select(0, idx)
                             for f in fields(self)})

    def rows(self, start: int, stop: int) -> "TensorData":
        """Rows start..stop-1 as views (no copy)."""
        return TensorData(**{f.name: getattr(self, f.name)[start:stop] for f in fields(self)})

    def to(self, device: str | torch.device) -> "TensorData":
        return TensorData(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def load_split(data_dir: Path, name: str, split: str, *, device: str | torch.device = "cpu",
               manifest: Manifest | None = None) -> TensorData:
    """Read `data_dir/name/{split}.parquet` into tensors on `device` (`name` may be a variant
    such as "synthetic[noise=0.5]": its folder is `cache.dataset_dir(data_dir, name)`).

    `manifest` (from `open_cache`) skips reading and verifying the manifest again.
    """
    manifest = manifest if manifest is not None else open_cache(data_dir, name)
    extra = manifest.get("extra_splits", {})  # e.g. KuaiRand's test_random
    if split not in SPLITS and split not in extra:
        raise ConfigError(f"unknown split {split!r}; choose one of "
                          f"{', '.join([*SPLITS, *extra])}")
    roles = manifest["columns"]
    entry = manifest["splits"][split] if split in SPLITS else extra[split]
    path = manifest.path(entry)
    if torch.device(device).type == "cpu":  # mapped: every job on this machine shares the pages
        arrays = _column_cache(path, entry, roles, name)
    else:  # a GPU copies the data to the device once: no mapping to share
        arrays = _read_into(path, roles, name)
    data = TensorData(**{k: torch.from_numpy(v) for k, v in arrays.items()})
    return data if torch.device(device).type == "cpu" else data.to(device)


# ------------------------------------------------------------------- the column cache
COLUMNS_DIR = "columns"  # in the data set's cache folder: <split>.<field>.npy and <split>.json
_COLUMNS_FORMAT = 1


def _column_cache(path: Path, entry: dict, roles: dict, name: str) -> dict[str, np.ndarray]:
    """The split's TensorData fields as memory-mapped arrays (copy-on-write: never written
    back), so that the jobs of a compare on one machine share one copy of the data in the page
    cache. Built from the Parquet file on first use (atomically: temporary files renamed in
    place, the index `<split>.json` last) and rebuilt whenever the index does not match the
    manifest's sha256 of that Parquet file, or a column file's size or sha256 does not match
    the index. Where the folder cannot be written (a read-only cache, a full disk), the arrays
    are read into this process's memory as before."""
    folder, stem = path.parent / COLUMNS_DIR, path.name.split(".")[0]
    want = {"format": _COLUMNS_FORMAT, "source": path.name, "source_sha256": entry["sha256"],
            "roles": {k: roles[k] for k in ("group", "categorical", "numerical", "click",
                                            "conversion")}}
    found = _open_columns(folder, stem, want)
    if found is not None:
        return found
    arrays = None
    try:  # one builder at a time; the others wait, then map its files
        with folder_lock(folder, f"waiting for another prlbench building {folder}..."):
            found = _open_columns(folder, stem, want)  # built while this process waited
            if found is not None:
                return found
            arrays = _read_into(path, roles, name)
            index = _write_columns(folder, stem, want, arrays)
    except OSError:  # a cache folder that cannot be written: this process's own copy
        return arrays if arrays is not None else _read_into(path, roles, name)
    del arrays  # mapped from the files instead (just written and hashed): shared with the jobs
    return _map_columns(folder, stem, index) or _read_into(path, roles, name)


def _open_columns(folder: Path, stem: str, want: dict) -> dict[str, np.ndarray] | None:
    """The split's arrays mapped from `folder`, if its index says `want` and every file's
    size and sha256 match the index; else None (build them)."""
    try:
        index = json.loads((folder / f"{stem}.json").read_text())
        if {k: index.get(k) for k in want} != want:
            return None
        for field, meta in index["fields"].items():
            file = folder / f"{stem}.{field}.npy"
            if file.stat().st_size != meta["bytes"] or sha256_file(file) != meta["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _map_columns(folder, stem, index)


def _map_columns(folder: Path, stem: str, index: dict) -> dict[str, np.ndarray] | None:
    """The files the index lists, memory-mapped copy-on-write; None where one is not what the
    index says (dtype, shape) or a field is missing."""
    try:
        out = {}
        for field, meta in index["fields"].items():
            arr = np.load(folder / f"{stem}.{field}.npy", mmap_mode="c")
            if str(arr.dtype) != meta["dtype"] or list(arr.shape) != meta["shape"]:
                return None
            out[field] = arr
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return out if set(out) == {f.name for f in fields(TensorData)} else None


def _write_columns(folder: Path, stem: str, want: dict, arrays: dict[str, np.ndarray]) -> dict:
    """Each array to `<stem>.<field>.npy`, then the index that vouches for them (last: an
    interrupted build leaves no index that matches, so the next load builds again); returns
    the index."""
    index = {**want, "fields": {}}
    for field, arr in arrays.items():
        final = folder / f"{stem}.{field}.npy"
        atomic_write(final, lambda f, a=arr: np.save(f, np.ascontiguousarray(a)))
        index["fields"][field] = {"dtype": str(arr.dtype), "shape": list(arr.shape),
                                  "bytes": final.stat().st_size, "sha256": sha256_file(final)}
    atomic_write_bytes(folder / f"{stem}.json", json.dumps(index, indent=1).encode())
    return index


def _read_into(path: Path, roles: dict, name: str) -> dict[str, np.ndarray]:
    """The split's columns straight into their final arrays (TensorData's fields), batch by
    batch: no whole Arrow copy of the file beside them, so the peak is the arrays plus one
    batch. Categoricals stay int32 (the cache's type), the labels become float32."""
    fix = f"rerun: prlbench preprocess {shlex.quote(name)}"
    cat, num = list(roles["categorical"]), list(roles["numerical"])
    wanted = [roles["group"], *cat, *num, roles["click"], roles["conversion"]]
    try:
        f = pq.ParquetFile(path)
        present = set(f.schema_arrow.names)
        missing = [c for c in wanted if c not in present]
        if missing:
            raise CacheError(f"{path} lacks the columns {missing[:5]} its manifest names; {fix}")
        n = f.metadata.num_rows
        out = {"categorical": np.empty((n, len(cat)), np.int32),
               "numerical": np.empty((n, len(num)), np.float32),
               "click": np.empty(n, np.float32), "conversion": np.empty(n, np.float32),
               "group": np.empty(n, np.int64)}
        start = 0
        # A row group (up to 1 M rows) decodes whole: read it _COLUMNS columns at a time, so
        # the transient Arrow buffers are a few columns of one row group, never the split.
        singles = [("click", [roles["click"]]), ("conversion", [roles["conversion"]]),
                   ("group", [roles["group"]])]
        chunks = [("categorical", cat[j:j + _COLUMNS], j) for j in range(0, len(cat), _COLUMNS)]
        chunks += [("numerical", num[j:j + _COLUMNS], j) for j in range(0, len(num), _COLUMNS)]
        for rg in range(f.metadata.num_row_groups):
            stop = start + f.metadata.row_group(rg).num_rows
            for key, names, first in chunks:
                part = f.read_row_group(rg, columns=names)
                block = out[key][start:stop, first:first + len(names)]
                for k, c in enumerate(names):
                    block[:, k] = part.column(c).to_numpy()
                del part
            for key, names in singles:
                out[key][start:stop] = f.read_row_group(rg, columns=names).column(0).to_numpy()
            start = stop
    except (OSError, pa.ArrowInvalid) as e:
        raise CacheError(f"{path} cannot be read ({str(e).splitlines()[0]}); {fix}") from e
    finally:
        pa.default_memory_pool().release_unused()  # give the decode buffers back at once
    if start != n:
        raise CacheError(f"{path} holds {start:,} rows, its metadata says {n:,}; {fix}")
    return out


def batches(data: TensorData, batch_size: int, *, shuffle: bool,
            generator: torch.Generator | None = None) -> Iterator[TensorData]:
    """Mini-batches of `batch_size` rows (the last one may be smaller) covering every row once.

    Shuffled: one `torch.randperm(N, generator=generator)` per call (an epoch), then index
    slices of it. Unshuffled: contiguous views in file order.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size!r}")
    n = len(data)
    if not shuffle:
        for start in range(0, n, batch_size):
            yield data.rows(start, min(start + batch_size, n))
        return
    perm = torch.randperm(n, generator=generator).to(data.click.device)   # [N]
    for start in range(0, n, batch_size):
        yield data.slice(perm[start:start + batch_size])


def load_side(data_dir: Path, name: str, split: str, columns: Sequence[str] | None = None
              ) -> dict[str, np.ndarray] | None:
    """The side file of `split` (e.g. the synthetic data's true probabilities) as numpy columns,
    row-aligned with `load_split`: all of them, or those of `columns` it has; None when the
    data set has none."""
    manifest = open_cache(data_dir, name)
    entry = manifest.get("side_files", {}).get(split)
    if entry is None:
        return None
    path, fix = manifest.path(entry), f"rerun: prlbench preprocess {shlex.quote(name)}"
    wanted = [c for c in entry["columns"] if columns is None or c in columns]
    try:
        table = pq.read_table(path, columns=wanted)
    except (OSError, pa.ArrowInvalid, KeyError) as e:
        raise CacheError(f"{path} cannot be read ({str(e).splitlines()[0]}); {fix}") from e
    return {c: table.column(c).to_numpy() for c in table.column_names}

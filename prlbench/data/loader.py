"""Whole-column tensors and index-sliced mini-batches: no per-sample Python anywhere.

The peers wrap each row in a `Dataset.__getitem__` and let a `DataLoader` collate 2,048 small
tensors per batch; here a split is read once from Parquet into five tensors, and a mini-batch is
five `index_select`s with a slice of one permutation (`benchmarks/bench_data.py` measures both).
Column roles come from the cache's manifest, never from hard-coded names.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from prlbench.data.cache import SPLITS, Manifest, open_cache
from prlbench.errors import CacheError, ConfigError

_BLOCK = 1 << 14  # rows per block when assembling [N, F] matrices (~4 MB of float32 x 63)


@dataclass
class TensorData:
    """One split, whole columns as tensors on one device (N rows)."""

    categorical: Tensor  # [N, F_cat] int64 embedding indices
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
    path = manifest.path(manifest["splits"][split] if split in SPLITS else extra[split])
    wanted = [roles["group"], *roles["categorical"], *roles["numerical"], roles["click"],
              roles["conversion"]]
    table = _read(path, wanted, name)
    data = TensorData(
        categorical=torch.from_numpy(_matrix(table, roles["categorical"], np.int64)),
        numerical=torch.from_numpy(_matrix(table, roles["numerical"], np.float32)),
        click=torch.from_numpy(_column(table, roles["click"], np.float32)),
        conversion=torch.from_numpy(_column(table, roles["conversion"], np.float32)),
        group=torch.from_numpy(_column(table, roles["group"], np.int64)),
    )
    return data if torch.device(device).type == "cpu" else data.to(device)


def _read(path: Path, columns: list[str], name: str) -> pa.Table:
    fix = f"rerun: prlbench preprocess {shlex.quote(name)}"
    try:
        present = set(pq.read_schema(path).names)
        missing = [c for c in columns if c not in present]
        if missing:
            raise CacheError(f"{path} lacks the columns {missing[:5]} its manifest names; {fix}")
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowInvalid) as e:
        raise CacheError(f"{path} cannot be read ({str(e).splitlines()[0]}); {fix}") from e


def _column(table: pa.Table, name: str, dtype: type) -> np.ndarray:
    # A copy: Arrow's zero-copy buffers are read-only, which torch tensors must not wrap.
    return np.array(table.column(name).to_numpy(), dtype=dtype)


def _matrix(table: pa.Table, names: list[str], dtype: type) -> np.ndarray:
    """The columns `names` as one C-contiguous [N, len(names)] array (one copy).

    Filled in blocks of _BLOCK rows (np.stack of zero-copy column views into the output), so
    each block stays in cache: 3-4x less CPU than writing whole strided columns one by one.
    """
    out = np.empty((table.num_rows, len(names)), dtype)
    if not names:
        return out
    start = 0
    for batch in table.select(names).to_batches(max_chunksize=_BLOCK):
        stop = start + batch.num_rows
        np.stack([c.to_numpy(zero_copy_only=False) for c in batch.columns], axis=1,
                 out=out[start:stop])
        start = stop
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


def load_side(data_dir: Path, name: str, split: str) -> dict[str, np.ndarray] | None:
    """The side file of `split` (e.g. the synthetic data's true probabilities) as numpy columns,
    row-aligned with `load_split`; None when the data set has none."""
    manifest = open_cache(data_dir, name)
    entry = manifest.get("side_files", {}).get(split)
    if entry is None:
        return None
    table = _read(manifest.path(entry), entry["columns"], name)
    return {c: table.column(c).to_numpy() for c in table.column_names}

"""Data-layer timings: generate + write synthetic rows, load a split, iterate an epoch.

Compares `prlbench.data.loader.batches` (index slicing of whole-column tensors) with the peers'
per-sample `Dataset` + `DataLoader` (MTReclib's AliExpressDataset pattern) on the same rows.

    python benchmarks/bench_data.py              # 1 M rows, batch 2048 (about a minute)
    python benchmarks/bench_data.py --rows 200000
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from prlbench.data.cache import open_cache
from prlbench.data.loader import TensorData, batches, load_split
from prlbench.data.synthetic import preprocess_synthetic


class PerSampleDataset(Dataset):
    """The peers' way: one Python call per row, collated 2,048 times per batch."""

    def __init__(self, data: TensorData) -> None:
        self.categorical = data.categorical.numpy()
        self.numerical = data.numerical.numpy()
        self.labels = torch.stack([data.click, data.conversion], 1).numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.categorical[index], self.numerical[index], self.labels[index]


def _timed(fn):
    """fn's result, wall seconds and CPU seconds of this process (the CPU figure is the stable
    one on a shared machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def _rate(iterator, limit: int | None) -> tuple[int, float]:
    """Batches drawn and batches per second (each batch's tensors are touched once)."""
    start, count = time.perf_counter(), 0
    for batch in itertools.islice(iterator, limit):
        count += 1
        _ = batch  # the engine would move it to the device here
    return count, count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--naive-batches", type=int, default=40,
                        help="batches drawn from the per-sample DataLoader (it is slow)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="prlbench-bench-"))
    try:
        _, wall, cpu = _timed(lambda: preprocess_synthetic(root, rows=args.rows, progress=False))
        print(f"generate + write {args.rows:,} synthetic rows (+ {args.rows // 4:,} test): "
              f"{wall:.1f} s wall, {cpu:.1f} s CPU")
        train, wall, cpu = _timed(lambda: load_split(root, "synthetic", "train"))
        print(f"load train ({len(train):,} rows) to tensors, sha256 check included: "
              f"{wall:.2f} s wall, {cpu:.2f} s CPU")
        manifest = open_cache(root, "synthetic")
        _, wall, cpu = _timed(lambda: load_split(root, "synthetic", "train", manifest=manifest))
        print(f"  the same given an already checked manifest: {wall:.2f} s wall, {cpu:.2f} s CPU")
        gen = torch.Generator().manual_seed(0)
        n, ours = _rate(batches(train, args.batch_size, shuffle=True, generator=gen), None)
        print(f"loader.batches, shuffled, batch {args.batch_size}: {ours:,.0f} batches/s "
              f"({n} batches, a whole epoch)")
        loader = DataLoader(PerSampleDataset(train), batch_size=args.batch_size, shuffle=True)
        m, naive = _rate(iter(loader), args.naive_batches)
        print(f"per-sample Dataset + DataLoader, batch {args.batch_size}: {naive:,.1f} batches/s "
              f"({m} batches)")
        print(f"speed-up: {ours / naive:,.0f}x")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

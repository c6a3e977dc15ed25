"""Timing of prlbench.stats on large inputs (not a test; takes about a minute).

    python benchmarks/bench_stats.py [--rows 10000000] [--groups 1000000] [--pos-rate 0.1]

Prints wall and CPU seconds (CPU is the fairer figure on a busy machine) for auc, fast_delong
and group_auc on ``--rows`` rows (float32 scores, as models write them, plus a heavily tied
variant for auc) and the paired bootstrap of the AUC difference (200 replicates; the reference
in ``tests/_reference.py``) on ``--boot-rows`` rows.

Then the two-level (seeds x test rows) bootstrap of one cell: ``--tl-seeds`` seeds, each an arm
and a baseline scored on the same ``--tl-rows`` rows (AUC, ``--tl-pos-rate`` positives): the
influence computations per seed (both arms, phi kept as float32), the row covariance, and
``--tl-boot`` replicates of each method, with the peak memory of that part (numpy allocations,
tracemalloc) and of the process. ``--two-level-only`` skips everything before it.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from prlbench.stats import (auc, fast_delong, group_auc, paired_delta, row_covariance,
                            two_level_bootstrap)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _reference import paired_bootstrap_auc_diff  # noqa: E402  (tests/, not the library)


def timed(label: str, fn, *args, **kwargs):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"{label:<56} {wall:6.2f} s wall {cpu:6.2f} s cpu  -> {out}", flush=True)
    return out


def make(rows: int, pos_rate: float, seed: int = 0):
    """Labels [rows] int8 and two correlated float32 scores [rows]."""
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < pos_rate).astype(np.int8)
    base = y + rng.normal(size=rows)
    s1 = (base + 0.5 * rng.normal(size=rows)).astype(np.float32)
    s2 = (base + 0.6 * rng.normal(size=rows)).astype(np.float32)
    return y, s1, s2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--groups", type=int, default=1_000_000)
    ap.add_argument("--pos-rate", type=float, default=0.1)
    ap.add_argument("--boot-rows", type=int, default=1_000_000)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--tl-rows", type=int, default=10_000_000)
    ap.add_argument("--tl-seeds", type=int, default=8)
    ap.add_argument("--tl-pos-rate", type=float, default=0.02)
    ap.add_argument("--tl-boot", type=int, default=10_000)
    ap.add_argument("--two-level-only", action="store_true")
    args = ap.parse_args()
    if not args.two_level_only:
        existing(args)
    two_level(args)


def existing(args) -> None:
    y, s1, s2 = make(args.rows, args.pos_rate)
    r = f"{args.rows / 1e6:g} M rows"
    timed(f"auc, {r}", auc, y, s1)
    timed(f"auc, {r}, 1000 distinct scores (ties)", auc, y, np.round(s1 * 100) / 100)
    y_half, s_half, _ = make(args.rows, 0.5, seed=3)
    timed(f"auc, {r}, pos rate 0.5", auc, y_half, s_half)
    del y_half, s_half
    timed(f"fast_delong, {r}", fast_delong, y, s1, s2)
    timed(f"fast_delong, {r}, float64 scores (np.argsort path)", fast_delong, y,
          s1 + 1e-9 * s2, s2 + 1e-9 * s1)
    groups = np.random.default_rng(1).integers(0, args.groups, args.rows) * 7919 + 10**9
    timed(f"group_auc, {r}, {args.groups / 1e6:g} M groups", group_auc, y, s1, groups)
    yb, b1, b2 = make(args.boot_rows, args.pos_rate, seed=2)
    timed(f"paired bootstrap, {args.boot_rows / 1e6:g} M rows, n_boot={args.n_boot}",
          paired_bootstrap_auc_diff, yb, b1, b2, n_boot=args.n_boot)


def two_level(args) -> None:
    """One cell of the two-level bootstrap: per seed an arm and a baseline on the same rows."""
    rows, seeds = args.tl_rows, args.tl_seeds
    rng = np.random.default_rng(4)
    y = (rng.random(rows) < args.tl_pos_rate).astype(np.int8)
    signal = (y + rng.normal(size=rows)).astype(np.float32)
    r = f"{rows / 1e6:g} M rows"
    tracemalloc.start()
    deltas, phis, wall, cpu = [], [], 0.0, 0.0
    for s in range(seeds):
        noise = np.random.default_rng(100 + s)  # each seed's models: fixed perturbations
        arm = signal + 0.5 * noise.normal(size=rows).astype(np.float32)
        base = signal + 0.6 * noise.normal(size=rows).astype(np.float32)
        start, c0 = time.perf_counter(), time.process_time()
        part = paired_delta("auc", y, arm, base, dtype=np.float32)
        wall, cpu = wall + time.perf_counter() - start, cpu + time.process_time() - c0
        deltas.append(part.delta)
        phis.append(part.phi)
        del arm, base, part
    print(f"{'paired_delta (auc, both arms), per seed, ' + r:<56} {wall / seeds:6.2f} s wall "
          f"{cpu / seeds:6.2f} s cpu  ({seeds} seeds: {wall:.1f} s)", flush=True)
    out: dict = {}
    timed(f"row_covariance, {seeds} seeds x {r} (float32 phi)",
          lambda: out.setdefault("cov", row_covariance(phis)).shape)
    cov = out["cov"]
    for method in ("crossed", "pigeonhole"):
        res = timed(f"two_level_bootstrap {method}, {seeds} seeds, n_boot={args.tl_boot}",
                    two_level_bootstrap, np.array(deltas), cov, n_boot=args.tl_boot,
                    method=method, margin=0.001)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"two-level peak: {peak / 2**30:.2f} GiB numpy (tracemalloc; phis "
          f"{sum(p.nbytes for p in phis) / 2**30:.2f} GiB), process max RSS {maxrss:.2f} GiB; "
          f"row_share {res.row_share:.2f}", flush=True)


if __name__ == "__main__":
    main()

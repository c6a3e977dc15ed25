"""Memory of training: the peak of one `prlbench train` process per row of its data, and what
two jobs on one cache use together (summed PSS: shared pages counted once between them).

    python benchmarks/bench_memory.py                 # a 2 M-row synthetic cache (a few minutes)
    python benchmarks/bench_memory.py --rows 500000   # quicker
    python benchmarks/bench_memory.py --keep DIR      # keep the cache in DIR for a rerun

Each figure is one run on this machine: `train --epochs 1 --preset small` with one torch thread,
peak RSS from the kernel (`/proc/<pid>/status` VmHWM) and the summed PSS of the two concurrent
jobs sampled every 50 ms from `/proc/<pid>/smaps_rollup`. The targets of issue 24: a job at most
0.4 GB + 450 bytes per row of its splits, two jobs at most 1.35 x one job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _kb(pid: int, path: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _train(data: Path, out: Path, seed: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "prlbench", "train", "--epochs", "1", "--preset", "small",
           "--threads", "1", "--seed", str(seed), "--data-dir", str(data), "--out", str(out),
           "-q"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _watch(procs: list[subprocess.Popen]) -> tuple[list[int], int, float]:
    """Wait for `procs`; returns each one's peak RSS (kB), the peak of their summed PSS (kB)
    and the wall time."""
    t0, hwm, pss_peak = time.perf_counter(), [0] * len(procs), 0
    while any(p.poll() is None for p in procs):
        for i, p in enumerate(procs):
            hwm[i] = max(hwm[i], _kb(p.pid, "status", "VmHWM:"))
        pss_peak = max(pss_peak, sum(_kb(p.pid, "smaps_rollup", "Pss:") for p in procs))
        time.sleep(0.05)
    for p in procs:
        if p.returncode:
            raise SystemExit(f"a training job failed: {p.stderr.read()[-2000:]}")
    return hwm, pss_peak, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000, help="training rows to generate")
    ap.add_argument("--keep", type=Path, help="keep (or reuse) the cache in this folder")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="prlbench-mem-"))
    data = root / "data"
    if not (data / "synthetic" / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "prlbench", "preprocess", "synthetic", "--rows",
                        str(args.rows), "--data-dir", str(data), "-q"], check=True)
    manifest = json.loads((data / "synthetic" / "manifest.json").read_text())
    splits = manifest["splits"] if isinstance(manifest["splits"], dict) else {}
    rows = sum(s["rows"] for s in splits.values())
    runs = Path(tempfile.mkdtemp(prefix="prlbench-mem-runs-"))  # fresh: never a reused run
    one, _, t_one = _watch([_train(data, runs / "one", 1)])
    two, pss, t_two = _watch([_train(data, runs / "two", s) for s in (2, 3)])
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{rows:,} rows over the three splits")
    per_row = (one[0] * 1024 - 0.4e9) / rows
    print(f"one job: peak RSS {one[0] / 1e6:.2f} GB ({one[0] * 1024 / rows:,.0f} bytes per row; "
          f"{per_row:,.0f} beyond 0.4 GB, target <= 450), {t_one:.0f} s")
    print(f"two jobs at once: peaks {two[0] / 1e6:.2f} / {two[1] / 1e6:.2f} GB, summed PSS "
          f"{pss / 1e6:.2f} GB = {pss / max(one[0], 1):.2f} x one job's peak (target <= 1.35), "
          f"{t_two:.0f} s")


if __name__ == "__main__":
    main()

"""Memory of training: the peak of one `prlbench train` process per row of its data, and what
two jobs on one cache use together (summed PSS: shared pages counted once between them).

    python benchmarks/bench_memory.py                 # a 2 M-row synthetic cache (a few minutes)
    python benchmarks/bench_memory.py --rows 500000   # quicker
    python benchmarks/bench_memory.py --keep DIR      # keep the cache in DIR for a rerun
    python benchmarks/bench_memory.py --es --keep DIR # AliExpress-ES-sized: 31.7 M rows, compare

`--es` generates a synthetic cache the size of AliExpress ES (25.36 M training rows and 6.34 M
test rows: 31.7 M in all, ES has 22.3 M + 9.4 M) and runs a compare of two jobs on it (MMoE
small, BCE and PWiseR, seed 1, `--max-steps` steps each, then validation, test scoring and the
report), printing the peak of the process tree's summed PSS and of the machine's used memory
(MemTotal - MemAvailable); the target: within a 24 GB machine. It needs about 20 GB of disk.

Each figure is one run on this machine: `train --epochs 1 --preset small` with one torch thread,
peak RSS from the kernel (`/proc/<pid>/status` VmHWM) and the summed PSS of the two concurrent
jobs sampled every 50 ms from `/proc/<pid>/smaps_rollup`. The targets of issue 24: a job at most
0.4 GB + 450 bytes per row of its splits, two jobs at most 1.35 x one job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prlbench.machine import cpu_model


def _kb(path: str, key: str) -> int:
    """The kB figure of line `key` in a /proc file; 0 where there is none (a process gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _pss(pids) -> int:
    """The processes' summed PSS (kB): shared pages counted once between them."""
    return sum(_kb(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids)


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
            hwm[i] = max(hwm[i], _kb(f"/proc/{p.pid}/status", "VmHWM:"))
        pss_peak = max(pss_peak, _pss(p.pid for p in procs))
        time.sleep(0.05)
    for p in procs:
        if p.returncode:
            raise SystemExit(f"a training job failed: {p.stderr.read()[-2000:]}")
    return hwm, pss_peak, time.perf_counter() - t0


def _tree(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _used_kb() -> int:
    return _kb("/proc/meminfo", "MemTotal:") - _kb("/proc/meminfo", "MemAvailable:")


def _watch_tree(cmd: list[str]) -> tuple[int, int, float]:
    """Run `cmd`; returns the peak of its process tree's summed PSS (kB), the peak of the
    machine's used memory (kB) and the wall time; sampled every 0.2 s."""
    t0, pss_peak, used_peak = time.perf_counter(), 0, 0
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        pss_peak = max(pss_peak, _pss(_tree(proc.pid)))
        used_peak = max(used_peak, _used_kb())
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[2:4])} failed: {proc.stderr.read()[-3000:]}")
    return pss_peak, used_peak, time.perf_counter() - t0


def es_sized(root: Path, rows: int, steps: int) -> None:
    """Generate an ES-sized synthetic cache (unless `root` has one) and run a compare of two
    jobs on it; print what both took."""
    data = root / "es-data"
    prlbench = [sys.executable, "-m", "prlbench"]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; "
          f"machine memory {_kb('/proc/meminfo', 'MemTotal:') / 1e6:.1f} GB; idle: "
          f"{_used_kb() / 1e6:.2f} GB used", flush=True)
    if not (data / "synthetic" / "manifest.json").exists():
        pss, used, wall = _watch_tree([*prlbench, "preprocess", "synthetic", "--rows", str(rows),
                                       "--data-dir", str(data), "-q"])
        print(f"generated {rows:,} training + {rows // 4:,} test rows in {wall / 60:.1f} min: "
              f"peak PSS {pss / 1e6:.2f} GB, machine used at most {used / 1e6:.2f} GB",
              flush=True)
    manifest = json.loads((data / "synthetic" / "manifest.json").read_text())
    split_rows = {k: v["rows"] for k, v in manifest["splits"].items()}
    disk = sum(f.stat().st_size for f in (data / "synthetic").rglob("*") if f.is_file())
    print(f"cache: {sum(split_rows.values()):,} rows ({split_rows}), {disk / 1e9:.1f} GB on disk")
    out = Path(tempfile.mkdtemp(prefix="prlbench-mem-es-", dir=root))
    cmd = [*prlbench, "compare", "--datasets", "synthetic", "--models", "mmoe", "--preset",
           "small", "--losses", "bce,pwiser", "--seeds", "1", "--epochs", "1", "--max-steps",
           str(steps), "--jobs", "2", "--threads", "1", "--data-dir", str(data), "--out",
           str(out), "-q"]
    pss, used, wall = _watch_tree(cmd)
    columns = sum(f.stat().st_size for f in (data / "synthetic" / "columns").glob("*.npy"))
    print(f"compare of two jobs, {steps} steps each (then validation on {split_rows['val']:,} "
          f"rows, test scoring on {split_rows['test']:,}, the report): {wall / 60:.1f} min; "
          f"peak summed PSS of its processes {pss / 1e6:.2f} GB, machine used at most "
          f"{used / 1e6:.2f} GB (target: within 24 GB); column cache {columns / 1e9:.1f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000, help="training rows to generate")
    ap.add_argument("--keep", type=Path, help="keep (or reuse) the cache in this folder")
    ap.add_argument("--es", action="store_true",
                    help="the AliExpress-ES-sized cache and a compare of two jobs on it")
    ap.add_argument("--es-rows", type=int, default=25_360_000,
                    help="--es: training rows (test: a quarter more)")
    ap.add_argument("--steps", type=int, default=300, help="--es: optimizer steps per run")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="prlbench-mem-"))
    if args.es:
        try:
            return es_sized(root, args.es_rows, args.steps)
        finally:
            if not args.keep:  # about 20 GB
                shutil.rmtree(root, ignore_errors=True)
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
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; "
          f"{rows:,} rows over the three splits")
    per_row = (one[0] * 1024 - 0.4e9) / rows
    print(f"one job: peak RSS {one[0] / 1e6:.2f} GB ({one[0] * 1024 / rows:,.0f} bytes per row; "
          f"{per_row:,.0f} beyond 0.4 GB, target <= 450), {t_one:.0f} s")
    print(f"two jobs at once: peaks {two[0] / 1e6:.2f} / {two[1] / 1e6:.2f} GB, summed PSS "
          f"{pss / 1e6:.2f} GB = {pss / max(one[0], 1):.2f} x one job's peak (target <= 1.35), "
          f"{t_two:.0f} s")


if __name__ == "__main__":
    main()

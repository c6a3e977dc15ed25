"""Preprocessing KuaiRand-Pure at full size: wall time and peak memory (not a test).

    python benchmarks/bench_kuairand.py [--scale 1.0] [--keep DIR]

Writes a stand-in for KuaiRand-Pure.tar.gz with the real file's row counts (the three logs:
1,141,112 + 295,497 + 1,186,059 rows; 27,285 users; 7,583 videos; the builder of the tests,
tests/_kuairand_fixture.py, in the documented format), then runs
`prlbench preprocess kuairand_pure --source <the archive>` in a child process under
`/usr/bin/time -v` and prints its wall time and peak resident memory, and the manifest's counts.
`--scale 0.1` makes a tenth of the rows, for a quick look.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _kuairand_fixture import FULL, write_kuairand  # noqa: E402  (tests/, not the library)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="share of the real row counts")
    ap.add_argument("--keep", type=Path, default=None, help="work here and keep the files")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        logs = tuple(max(10, int(n * args.scale)) for n in FULL["logs"])
        start = time.perf_counter()
        fixture = write_kuairand(root / "raw", logs=logs, users=FULL["users"],
                                 videos=FULL["videos"])
        archive = root / "raw" / "KuaiRand-Pure.tar.gz"
        print(f"stand-in written in {time.perf_counter() - start:.1f} s: {sum(logs):,} log rows, "
              f"{archive.stat().st_size / 1e6:.1f} MB packed ({type(fixture).__name__})")
        cmd = ["/usr/bin/time", "-v", sys.executable, "-c", "from prlbench.cli import app; app()",
               "preprocess", "kuairand_pure", "--source", str(archive), "--data-dir",
               str(root / "data"), "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"preprocess failed:\n{done.stdout}\n{done.stderr}")
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", done.stderr).group(1)
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
        print(f"preprocess: {wall} wall, {rss / 1e6:.2f} GB peak resident")
        manifest = json.loads((root / "data" / "kuairand_pure" / "manifest.json").read_text())
        splits = {**manifest.get("splits", {}), **manifest.get("extra_splits", {})}
        for split, facts in splits.items():
            print(f"  {split:<12} {facts.get('rows', 0):>10,} rows")


if __name__ == "__main__":
    main()

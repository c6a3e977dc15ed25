"""The golden run: one small solo run's id, best.pt and metrics.json, byte for byte, as recorded
on a machine. A change of the engine that moves a solo run's numbers fails here.

Bytes depend on the machine (the CPU's kernels, torch, and the cache's Parquet bytes through
pyarrow and numpy), so the comparison runs where the machine matches the recorded one and is
skipped elsewhere, saying so. `PRLBENCH_UPDATE_GOLDEN=1` records it on this machine: do that only
with an engine whose solo bytes are known to be right (e.g. checked against runs of the previous
release), never to make a failure go away."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from prlbench.config import resolve
from prlbench.engine.run import train_run
from prlbench.fileio import read_json

GOLDEN = Path(__file__).parent / "golden" / "solo_run.json"


def machine() -> dict:
    """What the bytes depend on, beyond the code."""
    import numpy as np
    import pyarrow
    import torch

    from prlbench.machine import cpu_model, device_facts

    flags = ""
    try:
        flags = next((line.split(":", 1)[1] for line in
                      Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
                      if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return {"cpu": cpu_model(), "cpu_flags_sha256": hashlib.sha256(
                " ".join(sorted(flags.split())).encode()).hexdigest(),
            "cpu_native_bf16": device_facts("cpu")["cpu_native_bf16"],
            "torch": torch.__version__, "numpy": np.__version__, "pyarrow": pyarrow.__version__}


@pytest.mark.slow
def test_a_solo_run_gives_the_recorded_bytes(data_dir, tmp_path):
    cfg = resolve(None, {"model": {"name": "mmoe", "preset": "small"},
                         "loss": {"name": "pwiser"},
                         "train": {"epochs": 2, "batch_size": 512, "threads": 1, "seed": 3}})
    here = machine()
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else None
    update = os.environ.get("PRLBENCH_UPDATE_GOLDEN") == "1"
    if not update and (recorded is None or recorded["machine"] != here):
        where = recorded["machine"] if recorded else "nowhere yet"
        pytest.skip(f"the golden run was recorded on another machine ({where}); this one is "
                    f"{here}")
    run = train_run(cfg, data_dir=data_dir, out=tmp_path, progress=False)
    metrics = read_json(run / "metrics.json")
    metrics.pop("seconds")
    got = {"machine": here, "run_id": run.name,
           "best_pt_sha256": hashlib.sha256((run / "best.pt").read_bytes()).hexdigest(),
           "metrics": metrics}
    if update:
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert got == recorded or update

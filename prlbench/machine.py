"""Where a number was made: the versions, the git commit of a clone, and the device (the GPU's
name and driver, or the CPU model and whether it has native bf16). Every run.json records it
(`versions`), so that a table's reader can tell which machine made it; `prlbench compare`'s
runs.csv carries it per run.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import subprocess
from pathlib import Path

from prlbench import __version__


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def _glibc():
    """The C library where it is glibc on Linux (what mallopt and malloc_trim need), else
    None: musl, macOS and Windows lack them, and these functions do nothing there."""
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@functools.cache
def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to serve blocks of up to 256 MiB from its heap and to keep up to
    128 MiB of freed heap for reuse, once per process; True when it took both settings.

    By default glibc maps every block above 32 MiB fresh from the kernel and hands it back on
    free. A paper-preset training step allocates and frees several such tensors (the stacked
    expert weights' gradients and Adam's temporaries, the [B, E x 512] activations), so each
    step paid for tens of thousands of fresh zeroed pages: 4-9 % of an MMoE step on a 2-core
    CPU. Changes no result."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20)) \
        & bool(libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20))


def release_freed_memory() -> bool:
    """Hand the freed part of glibc's heap back to the kernel (malloc_trim); True when it did.
    After a large forward pass (scoring a split at the evaluation batch size) glibc keeps the
    freed activations in its heap: 150 MB of a job's resident memory after scoring 500 k rows
    at the small preset, counted against the job for the rest of the run."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


def provenance(device: str = "cpu") -> dict:
    """prlbench's version and (when installed from a clone) git commit, torch, CUDA, numpy,
    Python, the platform, and the device the run used."""
    import numpy as np
    import torch

    out = {"prlbench": __version__, "git_commit": git_commit(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "numpy": np.__version__,
           "python": platform.python_version(), "platform": platform.platform()}
    out.update(device_facts(device))
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the clone prlbench runs from (with "-dirty" when it has uncommitted
    changes to tracked files); None when it was installed from a package."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def device_facts(device: str) -> dict:
    """{"device": "cpu" or "cuda:N", "device_name": the GPU's or CPU's model, "gpu_driver" (a
    GPU) or "cpu_native_bf16" (a CPU: AVX-512 BF16 or AMX, as oneDNN reports it)}."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return {"device": f"cuda:{index}", "device_name": torch.cuda.get_device_name(index),
                "gpu_driver": _gpu_driver()}
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return {"device": "cpu", "device_name": cpu_model(),
            "cpu_native_bf16": bool(check()) if check is not None else None}


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def _gpu_driver() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None

"""`prlbench compare --plan`: what a grid will cost on this machine, before any training.

    plan = make_plan(cc, data_dir, out)   # the runs to train and to reuse, time, memory
    plan.lines()                          # what the command prints
    plan.fits                             # False: the grid would not fit this machine's memory

Time comes from a short calibration of each (data set, model, preset, precision, batch size)
of the grid on this machine: the real model and optimizer, a batch of the data set's shape,
a few timed steps after two untimed ones, and one forward pass. An epoch is its steps plus one
pass over the validation split; a run is its `--epochs` epochs (or its `--max-steps`) and one
pass over the test split, an estimate: early stopping usually ends runs sooner, and the test
metrics, the predictions file, the report and a first build of the column cache come on top.
Memory: each job holds its model, optimizer state and activations (the calibration's growth in
this process) over a base of what a process with torch and the engine imported takes (this
one's, measured); the training and validation splits are mapped from the column cache, one
copy shared by the jobs on one machine (data.md).
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

_WARMUP, _TIMED = 2, 6


@dataclass
class Group:
    """The runs of one (data set, model, preset, precision, batch size)."""

    dataset: str
    model: str
    preset: str
    precision: str
    batch_size: int
    runs: int = 0
    epochs: int = 0
    max_steps: int = 0  # train.max_steps (0: no limit)
    step_s: float = 0.0
    steps_per_epoch: int = 0
    val_s: float = 0.0
    test_s: float = 0.0  # scoring the test split once, at the end of a run
    job_bytes: float = 0.0  # model, optimizer state and activations

    @property
    def epoch_s(self) -> float:
        return self.steps_per_epoch * self.step_s + self.val_s

    @property
    def run_s(self) -> float:
        """One run to its last epoch, or to its step budget where that ends it sooner."""
        steps = self.epochs * self.steps_per_epoch
        if not self.max_steps or self.max_steps >= steps:
            return self.epochs * self.epoch_s + self.test_s
        epochs = math.ceil(self.max_steps / max(1, self.steps_per_epoch))
        return self.max_steps * self.step_s + epochs * self.val_s + self.test_s


@dataclass
class Plan:
    to_train: int
    reused: int
    jobs: int
    threads: int
    groups: list[Group] = field(default_factory=list)
    data_bytes: float = 0.0  # the grid's training and validation splits, mapped once
    available: float = 0.0  # this machine's available memory (0: unknown)
    local: bool = True
    # what a job holds before its model and data: this process's memory with torch and the
    # engine imported, measured when the first model was calibrated
    base_bytes: float = 0.0

    @property
    def run_s(self) -> float:
        """Every run to train, to its last epoch, summed."""
        return sum(g.runs * g.run_s for g in self.groups)

    @property
    def wall_s(self) -> float:
        return self.run_s / max(1, min(self.jobs, self.to_train))

    @property
    def job_bytes(self) -> float:
        return self.base_bytes + max((g.job_bytes for g in self.groups), default=0.0)

    @property
    def total_bytes(self) -> float:
        return self.jobs * self.job_bytes + self.data_bytes

    @property
    def fits(self) -> bool:
        return not self.local or not self.available or self.total_bytes <= 0.9 * self.available

    def jobs_that_fit(self) -> int:
        room = 0.9 * self.available - self.data_bytes
        return max(0, int(room // self.job_bytes)) if self.available else self.jobs

    def lines(self) -> list[str]:
        out = [f"plan: {self.to_train} runs to train, {self.reused} to reuse; {self.jobs} job"
               f"{'s' if self.jobs != 1 else ''} x {self.threads} thread"
               f"{'s' if self.threads != 1 else ''}"]
        for g in self.groups:
            out.append(
                f"  {g.dataset} / {g.model} ({g.preset}, {g.precision}, batch {g.batch_size}): "
                f"{g.step_s * 1e3:.1f} ms a step, {g.steps_per_epoch:,} steps an epoch -> "
                f"{_duration(g.epoch_s)} an epoch; {g.runs} runs x up to {g.epochs} epochs"
                + (f" or {g.max_steps:,} steps" if g.max_steps else ""))
        if not self.to_train:
            return out + ["nothing to train: every run of the grid is reused"]
        at_once = min(self.jobs, self.to_train)
        out.append(f"time: about {_duration(self.wall_s)} with {at_once} at a time: every run to "
                   "its --epochs (early stopping usually ends them sooner), validated each epoch, "
                   "and the test split's forward passes; the test metrics and predictions file, "
                   "the report and a first build of the column cache come on top")
        where = (f" of {self.available / 1e9:.1f} GB available" if self.available and self.local
                 else "")
        out.append(f"memory: {self.job_bytes / 1e9:.2f} GB a job + {self.data_bytes / 1e9:.2f} GB "
                   f"of data mapped once = {self.total_bytes / 1e9:.2f} GB for {self.jobs} "
                   f"job{'s' if self.jobs != 1 else ''}{where}")
        return out

    def refusal(self) -> str:
        fit = self.jobs_that_fit()
        options = [f"--jobs {fit}" if fit >= 1 else "",
                   "a smaller --preset (small)", "--embedding-optimizer sparse_adam (no dense "
                   "optimizer state for the embedding tables)"]
        return (f"this grid would need about {self.total_bytes / 1e9:.1f} GB ({self.jobs} jobs "
                f"x {self.job_bytes / 1e9:.2f} GB + {self.data_bytes / 1e9:.2f} GB of data), "
                f"more than 90 % of the {self.available / 1e9:.1f} GB available here; make it "
                f"fit with {', or '.join(o for o in options if o)}")


def make_plan(cc, data_dir: Path, out: Path, *, progress: bool = False) -> Plan:
    """The plan of compare `cc` (see the module doc); reads the data sets' manifests (a
    generated one is generated first, as compare does) but trains nothing."""
    from prlbench.experiment.compare import lookup, prepare_data, tuning_runs
    from prlbench.experiment.executors import make_executor
    from prlbench.store import Outcome

    grid = cc.grid
    grid.check()
    manifests = prepare_data(grid, data_dir, progress=progress, generate=True)
    # the table's runs with each arm's first candidate: the one chosen costs the same
    cfgs = [c for *_, c in tuning_runs(grid)]
    cfgs += [grid.config(*a, s, grid.candidates(a[2])[0]) for a in grid.arms()
             for s in grid.seeds]
    todo = [c for c in cfgs if lookup(c, data_dir, out).status != Outcome.REUSED]
    executor = make_executor(cc.executor, jobs=cc.jobs, ray_address=None, threads=cc.threads) \
        if cc.executor == "local" else None
    jobs = getattr(executor, "jobs", cc.jobs or 1)
    threads = getattr(executor, "threads", cc.threads or 1)
    groups: dict[tuple, tuple[Group, object]] = {}  # key -> (its group, its first config)
    for c in todo:
        key = (c.data.dataset, c.model.name, c.model.preset, c.train.precision,
               c.train.batch_size)
        g, _ = groups.setdefault(key, (Group(*key), c))
        g.runs += 1
        g.epochs = max(g.epochs, c.train.epochs)
        limits = (c.train.max_steps,) if g.runs == 1 else (g.max_steps, c.train.max_steps)
        g.max_steps = 0 if 0 in limits else max(limits)  # the longest run bounds the group
    base = 0.0
    for g, cfg in groups.values():
        base = max(base, _calibrate(g, cfg, manifests[g.dataset], threads))
    data = sum(_data_bytes(manifests[d]) for d in dict.fromkeys(c.data.dataset for c in todo))
    return Plan(to_train=len(todo), reused=len(cfgs) - len(todo), jobs=jobs, threads=threads,
                groups=[g for g, _ in groups.values()], data_bytes=data,
                available=_available(), local=cc.executor == "local", base_bytes=base)


def _data_bytes(manifest) -> float:
    """The training and validation splits as the column cache maps them."""
    cols = manifest["columns"]
    per_row = 4 * len(cols["categorical"]) + 4 * len(cols["numerical"]) + 4 + 4 + 8
    return per_row * sum(manifest["splits"][s]["rows"] for s in ("train", "val"))


def _calibrate(g: Group, cfg, manifest, threads: int) -> float:
    """Time `cfg`'s training step on a batch of the data set's shape, on this machine, into
    `g`; returns this process's memory before the model was built (torch and prlbench's
    engine imported: what a job holds before its model and data)."""
    import torch

    from prlbench.engine.loop import batch_loss, descend, reuse_memory_if_large
    from prlbench.engine.evaluate import autocast
    from prlbench.engine.optim import make_optimizer
    from prlbench.losses import LOSSES
    from prlbench.models import create_model

    cols = manifest["columns"]
    sizes = [manifest["vocab_sizes"][c] for c in cols["categorical"]]
    before = _rss(reset=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        gen = torch.Generator().manual_seed(0)
        model = create_model(cfg.model.name, vocab_sizes=sizes,
                             num_numerical=len(cols["numerical"]), preset=cfg.model.preset,
                             **cfg.model.overrides)
        reuse_memory_if_large(model, cfg.train.batch_size)  # as training does
        opt = make_optimizer(model, cfg.train)
        loss_fn = LOSSES.get(cfg.loss.name)
        b = cfg.train.batch_size
        cat = torch.stack([torch.randint(0, max(1, n), (b,), generator=gen) for n in sizes],
                          1).to(torch.int32) if sizes else torch.zeros(b, 0, dtype=torch.int32)
        num = torch.rand(b, len(cols["numerical"]), generator=gen)
        click = (torch.rand(b, generator=gen) < 0.3).float()
        conversion = click * (torch.rand(b, generator=gen) < 0.3).float()
        model.train()
        t0 = 0.0
        for i in range(_WARMUP + _TIMED):
            if i == _WARMUP:
                t0 = time.perf_counter()
            descend(opt, batch_loss(model, loss_fn, cat, num, click, conversion, device="cpu",
                                    precision=cfg.train.precision, params=cfg.loss.params))
        g.step_s = (time.perf_counter() - t0) / _TIMED
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad(), autocast("cpu", cfg.train.precision):
            model(cat, num)
        forward_s = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)
    splits = manifest["splits"]
    g.steps_per_epoch = math.ceil(splits["train"]["rows"] / g.batch_size)
    g.val_s = forward_s * splits["val"]["rows"] / g.batch_size
    g.test_s = forward_s * splits.get("test", {}).get("rows", 0) / g.batch_size
    g.job_bytes = max(0.0, _peak() - before)
    return before


def _rss(reset: bool = False) -> float:
    """This process's resident memory now, in bytes; `reset`: start its peak (VmHWM) afresh,
    so that _peak() measures from here."""
    if reset:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
    return _proc_kb("/proc/self/status", "VmRSS:") * 1024.0 or _peak()


def _peak() -> float:
    """This process's peak resident memory, in bytes (since the last reset where Linux allows
    one)."""
    return _proc_kb("/proc/self/status", "VmHWM:") * 1024.0 or \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def _proc_kb(path: str, key: str) -> float:
    """The kB figure of line `key` in a /proc file (status, meminfo); 0 where there is none."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _available() -> float:
    """Memory available to new processes (MemAvailable), in bytes; 0 where unknown."""
    found = _proc_kb("/proc/meminfo", "MemAvailable:") * 1024.0
    if found:
        return found
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0.0


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min"

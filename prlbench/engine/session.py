"""A run folder's life cycle, shared by solo runs (engine.run) and packs (engine.pack): open
the folder (or find the finished one), begin its record, record an interrupt or a failure,
finish it (the test evaluation, the record, publishing), and set aside what is damaged.

A run trains in `runs/<run-id>.partial/` and is renamed to `runs/<run-id>/` only once training
and the test evaluation have finished., and `RunContext`: a run's config, folder, data set and
model (seeded as the run's seed says).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import torch

import numpy as np

from prlbench import signals
from prlbench.machine import provenance
from prlbench.config import RunConfig, run_id
from prlbench.data.cache import Manifest, check_unchanged, open_cache
from prlbench.data.loader import load_side, load_split
from prlbench.engine.evaluate import SIDE_COLUMNS, evaluate_on_test
from prlbench.engine.loop import Loop, LoopState
from prlbench.models import create_model
from prlbench.errors import ConfigError, DataError, Interrupted, StoreError, TrainingError
from prlbench.store import RunFolder, RunStatus, Store


def resolve_device(device: str) -> str:
    """Check that `device` (cpu, cuda, cuda:N) exists here, before any folder is made."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device is visible to torch "
                              f"{torch.__version__} here; use --device cpu")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s), numbered from 0")
    return device


def check_validation_split(manifest: Manifest, dataset: str) -> None:
    """Early stopping watches the CTR and CTCVR AUC on validation: both need each class."""
    val = manifest.get("splits", {}).get("val", {})
    rows, clicks, conv = val.get("rows"), val.get("clicks"), val.get("conversions")
    if rows is None or clicks is None or conv is None:
        return
    if not (0 < clicks < rows and 0 < conv < rows):
        raise DataError(f"the validation split of {dataset} has {clicks:,} clicks and {conv:,} "
                        f"conversions in {rows:,} rows: its CTR or CTCVR AUC is undefined, so no "
                        "epoch could be chosen. Use a larger data set (synthetic: a larger "
                        "--rows or --conversion-rate)")


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def set_aside(path: Path, why: str) -> Path:
    """Rename `path` to `<path>.<why>-<UTC time>` (kept for inspection, out of the way)."""
    aside = path.with_name(f"{path.name}.{why}-{_stamp()}")
    n = 1
    while aside.exists():  # twice in one second
        aside, n = path.with_name(f"{path.name}.{why}-{_stamp()}-{n}"), n + 1
    os.rename(path, aside)
    return aside


def notice(message: str) -> None:
    """A warning on stderr: what prlbench did by itself, so that nobody wonders later."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def why_unfinished(folder: RunFolder) -> str | None:
    """None for a finished run folder; else why it is not one."""
    if not folder.has(RunFolder.RECORD):
        return f"it has no {RunFolder.RECORD}"
    try:
        status = folder.read_record().status
    except StoreError as e:
        return str(e).split("; ")[0]
    return None if status == RunStatus.DONE else f"its {RunFolder.RECORD} says {status.value!r}"


def set_aside_unfinished(final: RunFolder) -> None:
    """`runs/<id>/` is only ever made by renaming a complete run into place, so one that is not
    done was damaged or edited afterwards. Left there it would be retrained by every compare
    and never replaced (the rename into place fails on a folder that exists): it is moved
    aside, kept, and the run trained again."""
    why = why_unfinished(final)
    if why is None:
        return
    aside = set_aside(final.path, "broken")
    notice(f"{final.path} is not a finished run ({why}): moved to {aside.name} (kept, delete "
            "it when you no longer need it) and trained again")


def check_flags(cfg: RunConfig, resume: bool, restart: bool) -> None:
    if resume and restart:
        raise ConfigError("--resume continues an interrupted run and --restart discards it: "
                          "give one of them")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)


def open_run(cfg: RunConfig, data_dir: Path, out: Path, *, resume: bool, restart: bool):
    """The finished folder of `cfg` if there is one; else (store, run id, partial folder,
    manifest), the partial folder made (emptied first with `restart`)."""
    manifest = open_cache(data_dir, cfg.data.dataset)
    store, rid = Store(out), run_id(cfg, manifest.data_sha256)
    final, part = store.finished(rid), store.partial(rid)
    if final.path.exists():
        set_aside_unfinished(final)
        if final.path.exists():
            return final.path
    if part.path.exists() and not (resume or restart) and part.has(RunFolder.STATE):
        raise ConfigError(f"an interrupted run of this configuration is in {part.path}; add "
                          "--resume to continue it or --restart to discard it")
    resolve_device(cfg.train.device)
    check_validation_split(manifest, cfg.data.dataset)
    if part.path.exists() and restart:
        shutil.rmtree(part.path)
    part.path.mkdir(parents=True, exist_ok=True)
    return store, rid, part, manifest


def begin(ctx: "RunContext", rid: str, **record) -> None:
    """config.json and a run.json that says running."""
    ctx.folder.write_config(ctx.cfg)
    # On CPU the numbers depend on the thread count too (the order of float sums): recorded,
    # so that a report can say when its runs were trained with different counts.
    ctx.folder.update_record(RunStatus.RUNNING, run_id=rid, data_sha256=ctx.manifest.data_sha256,
                             versions=provenance(ctx.device),
                             data_dir=str(ctx.data_dir.resolve()),
                             pid=os.getpid(), argv=list(sys.argv),
                             threads=torch.get_num_threads(), **record)


class recorded:
    """Around a run's training and test: an interrupt is recorded as interrupted (the
    checkpoint stays for a resume), any other error as failed, and re-raised."""

    def __init__(self, part: RunFolder) -> None:
        self.part = part

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb) -> bool:
        if kind is None or issubclass(kind, TrainingError):
            return False  # a TrainingError is recorded as failed where it was raised
        if issubclass(kind, (Interrupted, KeyboardInterrupt)):
            with signals.deferred():  # a second signal must not leave the record running
                self.part.update_record(RunStatus.INTERRUPTED, error=str(e) or "interrupted")
        elif issubclass(kind, Exception):
            self.part.update_record(RunStatus.FAILED, error=f"{kind.__name__}: {e}")
        return False


def finish(ctx: "RunContext", state: LoopState, store: Store) -> Path:
    """The test evaluation of the best checkpoint, run.json done, the folder published."""
    t0 = time.perf_counter()
    metrics = ctx.evaluate_and_write()
    ctx.folder.update_record(RunStatus.DONE, best_epoch=state.best_epoch,
                             best_val_score=state.best_score, epochs_run=state.epoch,
                             train_seconds=state.train_seconds,
                             samples_per_s=state.samples_seen / max(state.train_seconds, 1e-9),
                             test_seconds=time.perf_counter() - t0, test=metrics)
    ctx.folder.drop_state()  # the finished run needs only best.pt
    return store.publish(ctx.folder).path


class RunContext:
    """One run: its config, folder, data and model; `fit()` then `evaluate_and_write()`."""

    def __init__(self, cfg: RunConfig, folder: RunFolder, data_dir: Path, manifest: Manifest,
                 device: str) -> None:
        self.cfg, self.folder, self.data_dir, self.manifest = cfg, folder, data_dir, manifest
        self.device = resolve_device(device)
        cols = manifest["columns"]
        torch.manual_seed(cfg.train.seed)  # the initial weights depend on the seed alone
        np.random.seed(cfg.train.seed % 2**32)
        self.model = create_model(
            cfg.model.name,
            vocab_sizes=[manifest["vocab_sizes"][c] for c in cols["categorical"]],
            num_numerical=len(cols["numerical"]), preset=cfg.model.preset,
            **cfg.model.overrides).to(self.device)
        if cfg.train.init_bias:
            rates = manifest["splits"]["train"]
            self.model.init_output_bias({"ctr": rates["click_rate"], "ctcvr": rates["ctcvr_rate"],
                                         "cvr": rates["cvr_rate"]})

    @property
    def dir(self) -> Path:
        return self.folder.path

    @classmethod
    def open(cls, folder: RunFolder, data_dir: Path, *, device: str | None = None
             ) -> "RunContext":
        """A finished run's context, on the cache it was trained on (checked by content)."""
        cfg = folder.read_config()
        manifest = open_cache(data_dir, cfg.data.dataset)
        record = folder.read_record()
        if record.data_sha256 is None and record.manifest_sha256 is not None:
            raise ConfigError(f"{folder.path} was trained by an earlier prlbench, whose run ids "
                              "hashed the manifest file rather than the data; retrain it (its "
                              "numbers stay readable in metrics.json)")
        if record.data_sha256 != manifest.data_sha256:
            raise ConfigError(f"{folder.path} was trained on a different version of "
                              f"{cfg.data.dataset!r} than the one in {data_dir}; preprocess it "
                              "again as it was, or retrain")
        return cls(cfg, folder, data_dir, manifest, device or cfg.train.device)

    def fit(self, *, resume: bool, progress: bool = True) -> LoopState:
        name = self.cfg.data.dataset
        train = load_split(self.data_dir, name, "train", device=self.device,
                           manifest=self.manifest)
        val = load_split(self.data_dir, name, "val", device=self.device, manifest=self.manifest)
        loop = Loop(self.cfg, self.folder, self.model, self.device, train, val)
        return loop.fit(resume=resume, progress=progress)

    def evaluate_and_write(self, split: str = "test") -> dict:
        """Best checkpoint -> the metrics and predictions of `split`: the test split
        (metrics.json, predictions.parquet) or an extra evaluation split of the data set
        (metrics.<split>.json, predictions.<split>.parquet)."""
        self.model.load_state_dict(self.folder.load_best(self.device))
        name = self.cfg.data.dataset
        check_unchanged(self.manifest, name, split)  # the data it trained with, or no score
        data = load_split(self.data_dir, name, split, device=self.device, manifest=self.manifest)
        # only what the metrics read: the side file's other columns (the true probabilities)
        # would take about 100 bytes a test row
        side = (load_side(self.data_dir, name, split, columns=SIDE_COLUMNS) if split == "test"
                else None)
        metrics, table = evaluate_on_test(
            self.model, data, self.manifest, side=side,
            precision=self.cfg.train.precision, batch_size=self.cfg.train.eval_batch_size)
        self.folder.write_predictions(table, split)
        self.folder.write_metrics(metrics, split)
        return metrics

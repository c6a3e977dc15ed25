"""One run's lifecycle: the run folder, the model, training (engine.loop), the test evaluation
(engine.evaluate), the record; `train_run` and `evaluate_run` are the entry points.

A run trains in `runs/<run-id>.partial/` and is renamed to `runs/<run-id>/` only once training
and the test evaluation have finished. The test split is read once, at the end, from the best
checkpoint chosen on validation.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from prlbench import signals
from prlbench.config import RunConfig, run_id
from prlbench.data.cache import Manifest, check_unchanged, dataset_in_use, open_cache
from prlbench.data.loader import load_side, load_split
from prlbench.engine.evaluate import evaluate_on_test
from prlbench.engine.loop import Loop, LoopState
from prlbench.errors import ConfigError, DataError, Interrupted, StoreError, TrainingError
from prlbench.store import (PARTIAL, DamagedCheckpoint, RunFolder, RunStatus,
                                       Store)
from prlbench.models import create_model


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


def versions(device: str = "cpu") -> dict:
    """What made a run's numbers: versions, git commit, device (prlbench.machine)."""
    from prlbench.machine import provenance

    return provenance(device)


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
        side = load_side(self.data_dir, name, split) if split == "test" else None
        metrics, table = evaluate_on_test(
            self.model, data, self.manifest, side=side,
            precision=self.cfg.train.precision, batch_size=self.cfg.train.eval_batch_size)
        self.folder.write_predictions(table, split)
        self.folder.write_metrics(metrics, split)
        return metrics


def _check_validation_split(manifest: Manifest, dataset: str) -> None:
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


def _set_aside(path: Path, why: str) -> Path:
    """Rename `path` to `<path>.<why>-<UTC time>` (kept for inspection, out of the way)."""
    aside = path.with_name(f"{path.name}.{why}-{_stamp()}")
    n = 1
    while aside.exists():  # twice in one second
        aside, n = path.with_name(f"{path.name}.{why}-{_stamp()}-{n}"), n + 1
    os.rename(path, aside)
    return aside


def _notice(message: str) -> None:
    """A warning on stderr: what prlbench did by itself, so that nobody wonders later."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def _why_unfinished(folder: RunFolder) -> str | None:
    """None for a finished run folder; else why it is not one."""
    if not folder.has(RunFolder.RECORD):
        return f"it has no {RunFolder.RECORD}"
    try:
        status = folder.read_record().status
    except StoreError as e:
        return str(e).split("; ")[0]
    return None if status == RunStatus.DONE else f"its {RunFolder.RECORD} says {status.value!r}"


def _set_aside_unfinished(final: RunFolder) -> None:
    """`runs/<id>/` is only ever made by renaming a complete run into place, so one that is not
    done was damaged or edited afterwards. Left there it would be retrained by every compare
    and never replaced (the rename into place fails on a folder that exists): it is moved
    aside, kept, and the run trained again."""
    why = _why_unfinished(final)
    if why is None:
        return
    aside = _set_aside(final.path, "broken")
    _notice(f"{final.path} is not a finished run ({why}): moved to {aside.name} (kept, delete "
            "it when you no longer need it) and trained again")


def _fit(ctx: "RunContext", *, resume: bool, progress: bool, set_aside_damaged: bool):
    """ctx.fit, and the context that fitted. A state.pt that cannot be read is refused
    (`prlbench train --resume`: the user chooses --restart), or, for a compare, which always
    resumes and has no --restart, set aside as state.pt.damaged-<time> and the run started
    over with a fresh model (the numbers of a run never interrupted)."""
    try:
        return ctx.fit(resume=resume, progress=progress), ctx
    except DamagedCheckpoint as e:
        if not set_aside_damaged or e.path.name != RunFolder.STATE:
            raise
        aside = _set_aside(e.path, "damaged")
        _notice(f"{e.path} is damaged or truncated ({e.reason}): moved to {aside.name} (kept) "
                "and the run started over from its first epoch")
    fresh = RunContext(ctx.cfg, ctx.folder, ctx.data_dir, ctx.manifest, ctx.device)
    return fresh.fit(resume=False, progress=progress), fresh


def train_run(cfg: RunConfig, *, data_dir: Path, out: Path, resume: bool = False,
              restart: bool = False, progress: bool = True,
              set_aside_damaged: bool = True) -> Path:
    """Train and evaluate one run; returns its finished folder (reused if already finished).
    `set_aside_damaged`: with `resume`, a state.pt that cannot be read is set aside and the run
    started over (as prlbench compare needs), rather than refused (prlbench train)."""
    _check_flags(cfg, resume, restart)
    opened = _open_run(cfg, data_dir, out, resume=resume, restart=restart)
    if isinstance(opened, Path):
        return opened
    store, rid, part, manifest = opened
    ctx = RunContext(cfg, part, Path(data_dir), manifest, cfg.train.device)
    _begin(ctx, rid)
    with _recorded(part), dataset_in_use(Path(data_dir), cfg.data.dataset, by=f"run {rid}"):
        check_unchanged(manifest, cfg.data.dataset)  # not replaced before we held it
        state, ctx = _fit(ctx, resume=resume, progress=progress,
                          set_aside_damaged=set_aside_damaged)
        return _finish(ctx, state, store)


def _check_flags(cfg: RunConfig, resume: bool, restart: bool) -> None:
    if resume and restart:
        raise ConfigError("--resume continues an interrupted run and --restart discards it: "
                          "give one of them")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)


def _open_run(cfg: RunConfig, data_dir: Path, out: Path, *, resume: bool, restart: bool):
    """The finished folder of `cfg` if there is one; else (store, run id, partial folder,
    manifest), the partial folder made (emptied first with `restart`)."""
    manifest = open_cache(data_dir, cfg.data.dataset)
    store, rid = Store(out), run_id(cfg, manifest.data_sha256)
    final, part = store.finished(rid), store.partial(rid)
    if final.path.exists():
        _set_aside_unfinished(final)
        if final.path.exists():
            return final.path
    if part.path.exists() and not (resume or restart) and part.has(RunFolder.STATE):
        raise ConfigError(f"an interrupted run of this configuration is in {part.path}; add "
                          "--resume to continue it or --restart to discard it")
    resolve_device(cfg.train.device)
    _check_validation_split(manifest, cfg.data.dataset)
    if part.path.exists() and restart:
        shutil.rmtree(part.path)
    part.path.mkdir(parents=True, exist_ok=True)
    return store, rid, part, manifest


def _begin(ctx: RunContext, rid: str, **record) -> None:
    """config.json and a run.json that says running."""
    ctx.folder.write_config(ctx.cfg)
    # On CPU the numbers depend on the thread count too (the order of float sums): recorded,
    # so that a report can say when its runs were trained with different counts.
    ctx.folder.update_record(RunStatus.RUNNING, run_id=rid, data_sha256=ctx.manifest.data_sha256,
                             versions=versions(ctx.device),
                             data_dir=str(ctx.data_dir.resolve()),
                             pid=os.getpid(), argv=list(sys.argv),
                             threads=torch.get_num_threads(), **record)


class _recorded:
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


def _finish(ctx: RunContext, state: LoopState, store: Store) -> Path:
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


def train(cfg: RunConfig, *, data_dir: Path, out: Path, resume: bool = False,
          restart: bool = False, progress: bool = True) -> Path:
    """`prlbench train`: the built-in data set is generated on first use, then `train_run`."""
    from dataclasses import replace

    from prlbench.data.preprocess import ensure_generated
    from prlbench.data.variants import canonical

    # One spelling per data set in the stored config and the run id: synthetic[noise=0.5,rows=
    # 3000] however the variant was written (a plain name stays as it is).
    cfg = replace(cfg, data=replace(cfg.data, dataset=canonical(cfg.data.dataset)))
    ensure_generated(data_dir, cfg.data.dataset, progress=progress)
    # The run's lock, as compare's executor takes it around train_run (not in train_run: a
    # second flock on the same file in one process would wait for the first forever).
    rid = run_id(cfg, open_cache(data_dir, cfg.data.dataset, verify=False).data_sha256)
    with Store(out).lock(rid):
        return train_run(cfg, data_dir=data_dir, out=out, resume=resume, restart=restart,
                         progress=progress, set_aside_damaged=False)


def evaluate_run(run_dir: Path, data_dir: Path | None = None, *,
                 device: str | None = None, split: str = "test") -> dict:
    """Re-evaluate a finished run's best checkpoint on the test split, or on an extra evaluation
    split of its data set (`split`, e.g. KuaiRand-Pure's test_random), (`data_dir` None: the
    cache the run was trained on, as its run.json records it; else ./datasets)."""
    folder = RunFolder(run_dir)
    if folder.is_partial:
        raise ConfigError(f"{run_dir} is an unfinished run: its best.pt is only the best so far, "
                          "and scoring it on test before the run has chosen its model would leak "
                          "the test set into the choice. Finish it first (rerun the train command "
                          "with --resume, or rerun the compare); it then moves to "
                          f"{folder.path.with_name(folder.run_id)}")
    if data_dir is None:
        recorded = folder.read_record().data_dir if folder.has(RunFolder.RECORD) else None
        data_dir = Path(recorded) if recorded else Path("datasets")
    ctx = RunContext.open(folder, Path(data_dir), device=device)
    if split != "test" and split not in ctx.manifest.get("extra_splits", {}):
        extra = ", ".join(ctx.manifest.get("extra_splits", {})) or "none"
        raise ConfigError(f"--split {split}: {ctx.cfg.data.dataset} has no such evaluation "
                          f"split (its splits beside test: {extra})")
    with dataset_in_use(Path(data_dir), ctx.cfg.data.dataset, by=f"evaluate {folder.path}"):
        return ctx.evaluate_and_write(split)


__all__ = ["PARTIAL", "RunContext", "evaluate_run", "resolve_device", "train", "train_run",
           "versions"]

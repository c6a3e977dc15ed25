"""The entry points of one run: `train_run` (train, then evaluate on test), `train` (the CLI's,
generating the built-in data set on first use) and `evaluate_run`; `RunContext` holds a run's
config, folder, data and model (its folder's life cycle: engine.session).

A run trains in `runs/<run-id>.partial/` and is renamed to `runs/<run-id>/` only once training
and the test evaluation have finished. The test split is read once, at the end, from the best
checkpoint chosen on validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prlbench.config import RunConfig, run_id
from prlbench.data.cache import Manifest, check_unchanged, dataset_in_use, open_cache
from prlbench.data.loader import load_side, load_split
from prlbench.engine.evaluate import evaluate_on_test
from prlbench.engine.loop import Loop, LoopState
from prlbench.engine.session import (check_flags, finish, notice, open_run, recorded,
                                     resolve_device, set_aside, versions)
from prlbench.engine.session import begin as begin_record
from prlbench.errors import ConfigError
from prlbench.store import (PARTIAL, DamagedCheckpoint, RunFolder, Store)
from prlbench.models import create_model


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
        aside = set_aside(e.path, "damaged")
        notice(f"{e.path} is damaged or truncated ({e.reason}): moved to {aside.name} (kept) "
                "and the run started over from its first epoch")
    fresh = RunContext(ctx.cfg, ctx.folder, ctx.data_dir, ctx.manifest, ctx.device)
    return fresh.fit(resume=False, progress=progress), fresh


def train_run(cfg: RunConfig, *, data_dir: Path, out: Path, resume: bool = False,
              restart: bool = False, progress: bool = True,
              set_aside_damaged: bool = True) -> Path:
    """Train and evaluate one run; returns its finished folder (reused if already finished).
    `set_aside_damaged`: with `resume`, a state.pt that cannot be read is set aside and the run
    started over (as prlbench compare needs), rather than refused (prlbench train)."""
    check_flags(cfg, resume, restart)
    opened = open_run(cfg, data_dir, out, resume=resume, restart=restart)
    if isinstance(opened, Path):
        return opened
    store, rid, part, manifest = opened
    ctx = RunContext(cfg, part, Path(data_dir), manifest, cfg.train.device)
    begin_record(ctx, rid)
    with recorded(part), dataset_in_use(Path(data_dir), cfg.data.dataset, by=f"run {rid}"):
        check_unchanged(manifest, cfg.data.dataset)  # not replaced before we held it
        state, ctx = _fit(ctx, resume=resume, progress=progress,
                          set_aside_damaged=set_aside_damaged)
        return finish(ctx, state, store)


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

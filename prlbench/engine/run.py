"""The entry points of training and evaluation: `train_run` (one run: train, then evaluate on
test), `train` (the CLI's, generating the built-in data set on first use), `train_seeds`
(`train --seeds`: one after another, or as one pack) and `evaluate_run`. Every run trains through
engine.pack.train_pack (a run alone is a pack of one); a run folder's life cycle and a run's
`RunContext` are engine.session's.

A run trains in `runs/<run-id>.partial/` and is renamed to `runs/<run-id>/` only once training
and the test evaluation have finished. The test split is read once, at the end, from the best
checkpoint chosen on validation.
"""

from __future__ import annotations

from pathlib import Path

from prlbench.config import RunConfig, run_id
from prlbench.data.cache import dataset_in_use, open_cache
from prlbench.engine.pack import train_pack
from prlbench.engine.session import RunContext, resolve_device
from prlbench.errors import ConfigError, TrainingError
from prlbench.store import PARTIAL, RunFolder, Store


def train_run(cfg: RunConfig, *, data_dir: Path, out: Path, resume: bool = False,
              restart: bool = False, progress: bool = True,
              set_aside_damaged: bool = True) -> Path:
    """Train and evaluate one run; returns its finished folder (reused if already finished).
    One run is a pack of one (engine.pack.train_pack: the one training path); its failure is
    raised. `set_aside_damaged`: with `resume`, a state.pt that cannot be read is set aside and
    the run started over (as prlbench compare needs), rather than refused (prlbench train)."""
    (result,) = train_pack([cfg], data_dir=Path(data_dir), out=Path(out), resume=resume,
                           restart=restart, progress=progress,
                           set_aside_damaged=set_aside_damaged)
    if result.exception is not None:
        raise result.exception
    if result.error:
        raise TrainingError(result.error)
    return Path(result.run_dir)


def train(cfg: RunConfig, *, data_dir: Path, out: Path, resume: bool = False,
          restart: bool = False, progress: bool = True) -> Path:
    """`prlbench train`: the built-in data set is generated on first use, then `train_run`."""
    from dataclasses import replace

    from prlbench.data.preprocess import ensure_generated
    from prlbench.data.variants import canonical

    # One spelling per data set in the stored config and the run id: synthetic[noise=0.5,rows=
    # 3000] however the variant was written (a plain name stays as it is).
    cfg = replace(cfg, data=replace(cfg.data, dataset=canonical(cfg.data.dataset)))
    resolve_device(cfg.train.device)  # no device: an error before any data, lock or folder
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


def train_seeds(cfg, seeds, *, data_dir, out, pack: bool | None = None, resume: bool = False,
                restart: bool = False, progress: bool = True) -> list:
    """`prlbench train --seeds`: `cfg` on each of `seeds`, one after another, or with `pack` as
    one pack (engine.pack); the finished run folders, in seed order. Every run's lock is held
    while the pack trains. A run that fails raises a TrainingError naming it, after the others
    have finished."""
    import contextlib
    from dataclasses import replace

    from prlbench.data.preprocess import ensure_generated
    from prlbench.data.variants import canonical

    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {', '.join(map(str, seeds))}")
    cfg = replace(cfg, data=replace(cfg.data, dataset=canonical(cfg.data.dataset)))
    cfgs = [replace(cfg, train=replace(cfg.train, seed=int(s))) for s in seeds]
    if not pack or len(cfgs) == 1:  # train() checks the device first
        return [train(c, data_dir=data_dir, out=out, resume=resume, restart=restart,
                      progress=progress) for c in cfgs]
    resolve_device(cfg.train.device)  # no device: an error before any data, lock or folder
    ensure_generated(data_dir, cfg.data.dataset, progress=progress)
    sha = open_cache(data_dir, cfg.data.dataset, verify=False).data_sha256
    store = Store(out)
    with contextlib.ExitStack() as locks:
        for rid in sorted(run_id(c, sha) for c in cfgs):
            locks.enter_context(store.lock(rid))
        results = train_pack(cfgs, data_dir=Path(data_dir), out=Path(out), resume=resume,
                             restart=restart, progress=progress)
    failed = [r for r in results if r.error]
    if failed:
        raise TrainingError("; ".join(f"{r.run_id}: {r.error}" for r in failed))
    return [Path(r.run_dir) for r in results]


__all__ = ["PARTIAL", "RunContext", "evaluate_run", "resolve_device", "train", "train_run",
           "train_seeds"]

"""The training loop: Adam, early stopping on the validation split, checkpoints, resume.

- Model selection reads the validation split only (the mean of CTR and CTCVR AUC); the test split
  is read once, after training, by `evaluate_and_write`.
- Reproducible: the shuffling generator, the global RNG (dropout) and every state_dict are in the
  resume state, saved every `checkpoint_every_s` seconds, at each epoch's end and on Ctrl-C /
  SIGTERM; a resumed run continues exactly where it stopped and gives the same numbers.
- A NaN / infinite loss stops the run with an error; the last good checkpoint stays.
"""

from __future__ import annotations

import itertools
import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from prlbench import __version__, results
from prlbench.config import RunConfig, run_id
from prlbench.data.cache import data_hash, open_cache
from prlbench.data.loader import TensorData, batches, load_side, load_split
from prlbench.engine.evaluate import autocast, evaluate_on_test, predict, validation_score
from prlbench.errors import ConfigError, DataError, PrlbenchError, TrainingError
from prlbench.losses import LOSSES
from prlbench.models import create_model


class Interrupted(PrlbenchError):
    """Training was interrupted; the message says where the checkpoint is and how to resume."""


@dataclass
class LoopState:
    """Where training stands; saved (with the state_dicts) in state.pt."""

    epoch: int = 0
    step: int = 0  # batches done in the current epoch
    history: list = field(default_factory=list)
    best_score: float = float("-inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    train_seconds: float = 0.0
    samples_seen: int = 0
    epoch_loss_sum: float = 0.0  # over the current epoch, kept across a resume
    done: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


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


def versions() -> dict:
    return {"prlbench": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


class _StopFlag:
    """Ctrl-C / SIGTERM ask the loop to stop after the current step. The same signal twice
    aborts at once; SIGTERM after Ctrl-C does not (compare's driver sends it to its workers
    when Ctrl-C has reached them already)."""

    def __init__(self) -> None:
        self.requested = False
        self._seen: set[int] = set()
        self._old: dict = {}

    def __enter__(self) -> "_StopFlag":
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum in self._seen:
            raise KeyboardInterrupt
        self._seen.add(signum)
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class RunContext:
    """One run: its config, folder, data and model; `fit()` then `evaluate_and_write()`."""

    def __init__(self, cfg: RunConfig, run_dir: Path, data_dir: Path, manifest: dict,
                 device: str) -> None:
        self.cfg, self.dir, self.data_dir, self.manifest = cfg, run_dir, data_dir, manifest
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

    @classmethod
    def open(cls, run_dir: Path, data_dir: Path, *, device: str | None = None) -> "RunContext":
        if not (run_dir / "config.json").exists():
            raise ConfigError(f"{run_dir} is not a run folder (no config.json); runs live in "
                              "<out>/runs/<run-id>/")
        cfg = RunConfig.from_dict(results.read_json(run_dir / "config.json"))
        manifest = open_cache(data_dir, cfg.data.dataset)
        record = results.read_json(run_dir / "run.json")
        if "data_sha256" not in record and "manifest_sha256" in record:
            raise ConfigError(f"{run_dir} was trained by an earlier prlbench, whose run ids "
                              "hashed the manifest file rather than the data; retrain it (its "
                              "numbers stay readable in metrics.json)")
        if record.get("data_sha256") != data_hash(Path(manifest["_dir"])):
            raise ConfigError(f"{run_dir} was trained on a different version of "
                              f"{cfg.data.dataset!r} than the one in {data_dir}; preprocess it "
                              "again as it was, or retrain")
        return cls(cfg, run_dir, data_dir, manifest, device or cfg.train.device)

    # ---------------------------------------------------------------- training
    def fit(self, *, resume: bool, progress: bool = True) -> LoopState:
        cfg = self.cfg.train
        name = self.cfg.data.dataset
        train = load_split(self.data_dir, name, "train", device=self.device,
                           manifest=self.manifest)
        val = load_split(self.data_dir, name, "val", device=self.device, manifest=self.manifest)
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        state, epoch_gen = LoopState(), gen.get_state()
        if resume and (self.dir / "state.pt").exists():
            state, epoch_gen = self._load_state(opt)
        with _StopFlag() as stop:
            while not state.done:
                epoch_gen = self._run_epoch(train, val, opt, gen, epoch_gen, state, stop, progress)
        return state

    def _run_epoch(self, train: TensorData, val: TensorData, opt, gen, epoch_gen, state: LoopState,
                   stop: _StopFlag, progress: bool):
        cfg = self.cfg.train
        gen.set_state(epoch_gen)  # the epoch's permutation is drawn from this state
        steps = -(-len(train) // cfg.batch_size)
        loss_fn = LOSSES.get(self.cfg.loss.name)
        self.model.train()
        last_save, t0 = time.monotonic(), time.perf_counter()
        it = itertools.islice(batches(train, cfg.batch_size, shuffle=True, generator=gen),
                              state.step, None)
        for batch in _progress(it, steps, state, progress, self.cfg):
            with autocast(self.device, cfg.precision):
                out = self.model(batch.categorical, batch.numerical)
                loss, _ = loss_fn(out, batch.click, batch.conversion, **self.cfg.loss.params)
            if not torch.isfinite(loss):
                self._fail_nonfinite(loss, state)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state.epoch_loss_sum += loss.item()
            state.step += 1
            state.samples_seen += len(batch)
            if stop.requested or time.monotonic() - last_save > cfg.checkpoint_every_s:
                state.train_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self._save_state(opt, epoch_gen, state)
                last_save = time.monotonic()
                if stop.requested:
                    raise Interrupted(self._interrupt_message(state))
        state.train_seconds += time.perf_counter() - t0
        next_gen = gen.get_state()
        self._end_epoch(val, state)
        self._save_state(opt, next_gen, state)
        return next_gen

    def _end_epoch(self, val: TensorData, state: LoopState) -> None:
        cfg = self.cfg.train
        preds = predict(self.model, val, batch_size=cfg.eval_batch_size, precision=cfg.precision)
        v = validation_score(preds, val)
        train_loss = state.epoch_loss_sum / max(state.step, 1)
        state.history.append({"epoch": state.epoch + 1, "train_loss": train_loss,
                              "val_ctr_auc": v["ctr_auc"], "val_ctcvr_auc": v["ctcvr_auc"],
                              "val_score": v["score"], "train_seconds": state.train_seconds})
        if v["score"] > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = v["score"], state.epoch + 1, 0
            results.atomic_torch_save(self.model.state_dict(), self.dir / "best.pt")
        else:
            state.bad_epochs += 1
        state.epoch += 1
        state.step, state.epoch_loss_sum = 0, 0.0
        state.done = state.bad_epochs >= cfg.patience or state.epoch >= cfg.epochs
        results.write_json(self.dir / "history.json", state.history)

    def _save_state(self, opt, epoch_gen: torch.Tensor, state: LoopState) -> None:
        results.atomic_torch_save({
            "model": self.model.state_dict(), "optimizer": opt.state_dict(),
            "epoch_generator": epoch_gen, "torch_rng": torch.get_rng_state(),
            "loop": state.to_dict()}, self.dir / "state.pt")

    def _load_state(self, opt):
        ckpt = torch.load(self.dir / "state.pt", weights_only=True, map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        return LoopState(**ckpt["loop"]), ckpt["epoch_generator"]

    def _fail_nonfinite(self, loss: torch.Tensor, state: LoopState) -> None:
        kept = [n for n in ("best.pt", "state.pt") if (self.dir / n).exists()]
        where = (f"the last good checkpoint ({', '.join(kept)}) is kept in {self.dir}" if kept
                 else "no checkpoint had been saved yet")
        weight = "" if self.cfg.loss.name == "bce" else ", or a smaller pairwise weight (--lambda)"
        message = (f"the training loss became {loss.item()} at epoch {state.epoch + 1}, batch "
                   f"{state.step + 1}; {where}. Try a lower learning rate (train --lr, or "
                   f"train.lr in a --config file), --precision fp32{weight}")
        self.write_record("failed", error=message)
        raise TrainingError(message)

    def _interrupt_message(self, state: LoopState) -> str:
        return (f"interrupted at epoch {state.epoch + 1}, batch {state.step}; checkpoint saved "
                f"in {self.dir}. Continue with the same train command plus --resume "
                "(prlbench compare resumes by itself: rerun it)")

    # ---------------------------------------------------------------- records
    def write_record(self, status: str, **extra) -> None:
        path = self.dir / "run.json"
        record = results.read_json(path) if path.exists() else {}
        if status in ("running", "done"):  # an earlier attempt's error no longer applies
            record.pop("error", None)
        record.update({"status": status, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                   time.gmtime()), **extra})
        results.write_json(path, record)

    def evaluate_and_write(self) -> dict:
        """Best checkpoint -> test metrics (metrics.json) and predictions.parquet."""
        best = self.dir / "best.pt"
        if not best.exists():
            raise ConfigError(f"{self.dir} has no best.pt: the run never finished an epoch")
        self.model.load_state_dict(torch.load(best, weights_only=True, map_location=self.device))
        name = self.cfg.data.dataset
        test = load_split(self.data_dir, name, "test", device=self.device, manifest=self.manifest)
        metrics, table = evaluate_on_test(
            self.model, test, self.manifest, side=load_side(self.data_dir, name, "test"),
            precision=self.cfg.train.precision, batch_size=self.cfg.train.eval_batch_size)
        results.atomic_write_parquet(table, self.dir / "predictions.parquet")
        results.write_json(self.dir / "metrics.json", metrics)
        return metrics


def _progress(it, total: int, state: LoopState, enabled: bool, cfg: RunConfig):
    if not enabled:
        yield from it
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    label = f"{cfg.model.name}/{cfg.loss.name} s{cfg.train.seed} epoch {state.epoch + 1}"
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total, completed=state.step)
        for item in it:
            yield item
            bar.advance(task)


def _check_validation_split(manifest: dict, dataset: str) -> None:
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


def train_run(cfg: RunConfig, *, data_dir: Path, out: Path, resume: bool = False,
              restart: bool = False, progress: bool = True) -> Path:
    """Train and evaluate one run; returns its finished folder (reused if already finished)."""
    if resume and restart:
        raise ConfigError("--resume continues an interrupted run and --restart discards it: "
                          "give one of them")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    manifest = open_cache(data_dir, cfg.data.dataset)
    dsha = data_hash(Path(manifest["_dir"]))
    rid = run_id(cfg, dsha)
    final, part = results.finished_dir(out, rid), results.partial_dir(out, rid)
    if results.is_finished(final):
        return final
    if part.exists() and not (resume or restart) and (part / "state.pt").exists():
        raise ConfigError(f"an interrupted run of this configuration is in {part}; add --resume "
                          "to continue it or --restart to discard it")
    resolve_device(cfg.train.device)
    _check_validation_split(manifest, cfg.data.dataset)
    if part.exists() and restart:
        shutil.rmtree(part)
    part.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(cfg, part, Path(data_dir), manifest, cfg.train.device)
    results.write_json(part / "config.json", cfg.to_dict())
    # On CPU the numbers depend on the thread count too (the order of float sums): recorded,
    # so that a report can say when its runs were trained with different counts.
    ctx.write_record("running", run_id=rid, data_sha256=dsha, versions=versions(),
                     data_dir=str(Path(data_dir).resolve()), pid=os.getpid(), argv=sys.argv,
                     threads=torch.get_num_threads())
    try:
        state = ctx.fit(resume=resume, progress=progress)
        t0 = time.perf_counter()
        metrics = ctx.evaluate_and_write()
    except (Interrupted, KeyboardInterrupt) as e:
        ctx.write_record("interrupted", error=str(e) or "interrupted")
        raise
    except TrainingError:
        raise  # recorded as failed where it was raised
    except Exception as e:
        ctx.write_record("failed", error=f"{type(e).__name__}: {e}")
        raise
    ctx.write_record("done", best_epoch=state.best_epoch, best_val_score=state.best_score,
                     epochs_run=state.epoch, train_seconds=state.train_seconds,
                     samples_per_s=state.samples_seen / max(state.train_seconds, 1e-9),
                     test_seconds=time.perf_counter() - t0, test=metrics)
    (part / "state.pt").unlink(missing_ok=True)  # the finished run needs only best.pt
    return _publish(part, final)


def _publish(part: Path, final: Path) -> Path:
    """Rename the partial folder into place; if another process won the race, keep theirs."""
    try:
        os.rename(part, final)
    except OSError:
        if results.is_finished(final):
            shutil.rmtree(part, ignore_errors=True)
        else:
            raise
    return final

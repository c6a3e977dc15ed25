"""The training loop: Adam, early stopping on the validation split, checkpoints, resume.

- Model selection reads the validation split only (the mean of CTR and CTCVR AUC).
- Reproducible: the shuffling generator, the global RNG (dropout) and every state_dict are in the
  resume state (state.pt), saved every `checkpoint_every_s` seconds, at each epoch's end and on
  Ctrl-C / SIGTERM; a resumed run continues exactly where it stopped and gives the same numbers.
- A NaN / infinite loss stops the run with an error; the last good checkpoint stays.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from prlbench.config import BASELINE, RunConfig
from prlbench.data.loader import TensorData, batches
from prlbench.engine.evaluate import autocast, predict, validation_score
from prlbench.engine.optim import make_optimizer
from prlbench.errors import Interrupted, TrainingError
from prlbench.machine import reuse_freed_memory
from prlbench.store import (STATE_FIX, DamagedCheckpoint, Epoch, RunFolder,
                                       RunStatus)
from prlbench.losses import LOSSES
from prlbench.signals import StopFlag


@dataclass
class LoopState:
    """Where training stands; saved (with the state_dicts) in state.pt."""

    epoch: int = 0
    step: int = 0  # batches done in the current epoch
    history: list = field(default_factory=list)  # of history.json's entries (dicts)
    best_score: float = float("-inf")
    best_epoch: int = -1
    bad_epochs: int = 0
    train_seconds: float = 0.0
    samples_seen: int = 0
    epoch_loss_sum: float = 0.0  # over the current epoch, kept across a resume
    total_steps: int = 0  # optimizer steps over all epochs (train.max_steps)
    done: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# glibc maps every block above this size fresh from the kernel (its largest dynamic mmap
# threshold on 64-bit), so a step whose tensors are larger faults in fresh pages every time.
GLIBC_MMAP_MAX = 32 << 20


def reuse_memory_if_large(model: torch.nn.Module, batch_size: int) -> bool:
    """On a CPU, `machine.reuse_freed_memory()` when a training step allocates blocks beyond
    glibc's mmap ceiling: the largest parameter (its gradient and Adam's temporaries are as
    large) or the widest BatchNorm's activations for a batch (the paper preset's experts: 36 and
    34 MB). Smaller models (the small preset) gain nothing from it, and the heap it keeps would
    count against each job's memory; True when it was asked."""
    largest = max((p.numel() * p.element_size() for p in model.parameters()), default=0)
    widest = max((m.num_features for m in model.modules()
                  if isinstance(m, torch.nn.BatchNorm1d)), default=0)
    if max(largest, widest * batch_size * 4) <= GLIBC_MMAP_MAX:
        return False
    reuse_freed_memory()
    return True


def batch_loss(model: torch.nn.Module, loss_fn, categorical: torch.Tensor,
               numerical: torch.Tensor, click: torch.Tensor, conversion: torch.Tensor, *,
               device: str, precision: str, params: dict) -> torch.Tensor:
    """A training step's forward pass and loss (under autocast for bf16)."""
    with autocast(device, precision):
        loss, _ = loss_fn(model(categorical, numerical), click, conversion, **params)
    return loss


def descend(opt, loss: torch.Tensor) -> None:
    """A training step's backward pass and optimizer step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


class Loop:
    """`fit()` trains `model` on `train`, choosing the epoch on `val`; it writes best.pt,
    state.pt and history.json into `folder`."""

    def __init__(self, cfg: RunConfig, folder: RunFolder, model: torch.nn.Module, device: str,
                 train: TensorData, val: TensorData) -> None:
        self.cfg, self.folder, self.model, self.device = cfg, folder, model, device
        self.train, self.val = train, val
        self.opt = None  # made when training starts (steps), with state and epoch_gen

    def fit(self, *, resume: bool, progress: bool = True) -> LoopState:
        with StopFlag() as stop:
            for _ in self.steps(resume=resume, progress=progress, stop=stop):
                pass
        return self.state

    def steps(self, *, resume: bool, progress: bool, stop: StopFlag) -> Iterator[None]:
        """Train, yielding after every optimizer step: `fit` runs it to the end, a pack
        (engine.pack) runs its members' steps in turn. Uses the global RNG (dropout) as it
        finds it; `state` and `checkpoint()` are valid from the first step on."""
        cfg = self.cfg.train
        if str(self.device).startswith("cpu"):
            reuse_memory_if_large(self.model, cfg.batch_size)
        self.opt = make_optimizer(self.model, cfg)  # Adam; see train.embedding_optimizer
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.state, self.epoch_gen = LoopState(), gen.get_state()
        if resume and self.folder.has(RunFolder.STATE):
            self.state, self.epoch_gen = self.load_state(self.opt)
        while not self.state.done:
            yield from self._run_epoch(gen, stop, progress)

    def checkpoint(self) -> None:
        """state.pt now (with the global RNG as it stands: a pack swaps the member's in)."""
        self.save_state(self.opt, self.epoch_gen, self.state)

    def _run_epoch(self, gen, stop: StopFlag, progress: bool) -> Iterator[None]:
        cfg, state, opt = self.cfg.train, self.state, self.opt
        gen.set_state(self.epoch_gen)  # the epoch's permutation is drawn from this state
        steps = -(-len(self.train) // cfg.batch_size)
        if cfg.max_steps:  # the epoch under way ends at the run's step budget
            steps = min(steps, state.step + cfg.max_steps - state.total_steps)
        loss_fn = LOSSES.get(self.cfg.loss.name)
        self.model.train()
        last_save, t0 = time.monotonic(), time.perf_counter()
        it = itertools.islice(batches(self.train, cfg.batch_size, shuffle=True, generator=gen),
                              state.step, steps)
        for batch in _progress(it, steps, state, progress, self.cfg):
            loss = batch_loss(self.model, loss_fn, batch.categorical, batch.numerical,
                              batch.click, batch.conversion, device=self.device,
                              precision=cfg.precision, params=self.cfg.loss.params)
            if not torch.isfinite(loss):
                self._fail_nonfinite(loss, state)
            descend(opt, loss)
            state.epoch_loss_sum += loss.item()
            state.step += 1
            state.total_steps += 1
            state.samples_seen += len(batch)
            if stop.requested or time.monotonic() - last_save > cfg.checkpoint_every_s:
                state.train_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.checkpoint()
                last_save = time.monotonic()
                if stop.requested:
                    raise Interrupted(self._interrupt_message(state))
            t = time.perf_counter()
            yield
            t0 += time.perf_counter() - t  # a pack's other members' steps are not this run's
        state.train_seconds += time.perf_counter() - t0
        self.epoch_gen = gen.get_state()
        self._end_epoch(state)
        self.checkpoint()

    def _end_epoch(self, state: LoopState) -> None:
        cfg = self.cfg.train
        preds = predict(self.model, self.val, batch_size=cfg.eval_batch_size,
                        precision=cfg.precision)
        self.record_epoch(state, validation_score(preds, self.val), self.model.state_dict)

    def record_epoch(self, state: LoopState, v: dict, model_state) -> None:
        """The epoch's validation scores `v` into the history; best.pt (`model_state()`) when
        the score improved; whether the run is done (patience or the epoch budget)."""
        cfg = self.cfg.train
        train_loss = state.epoch_loss_sum / max(state.step, 1)
        state.history.append({"epoch": state.epoch + 1, "train_loss": train_loss,
                              "val_ctr_auc": v["ctr_auc"], "val_ctcvr_auc": v["ctcvr_auc"],
                              "val_score": v["score"], "train_seconds": state.train_seconds})
        if v["score"] > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = v["score"], state.epoch + 1, 0
            self.folder.save_best(model_state())
        else:
            state.bad_epochs += 1
        state.epoch += 1
        state.step, state.epoch_loss_sum = 0, 0.0
        state.done = (state.bad_epochs >= cfg.patience or state.epoch >= cfg.epochs
                      or 0 < cfg.max_steps <= state.total_steps)
        self.folder.write_history([Epoch(**e) for e in state.history])

    def save_state(self, opt, epoch_gen: torch.Tensor, state: LoopState) -> None:
        self.write_state(self.model.state_dict(), opt.state_dict(), epoch_gen,
                         torch.get_rng_state(), state)

    def write_state(self, model: dict, optimizer: dict, epoch_gen: torch.Tensor,
                    rng: torch.Tensor, state: LoopState, **extra) -> None:
        """state.pt: the weights, the optimizer, the shuffling generator's state at the start of
        the epoch, the dropout RNG's state and the loop's (a packed member writes the same)."""
        self.folder.save_state({"model": model, "optimizer": optimizer,
                                "epoch_generator": epoch_gen, "torch_rng": rng,
                                "loop": state.to_dict(), **extra})

    def load_state(self, opt) -> tuple[LoopState, torch.Tensor]:
        ckpt = self.read_state()
        try:
            self.model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["torch_rng"])
            return LoopState(**ckpt["loop"]), ckpt["epoch_generator"]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise self.damaged(e) from None

    def read_state(self) -> dict:
        return self.folder.load_state(self.device)

    def damaged(self, e: Exception) -> DamagedCheckpoint:
        # readable by torch but not a state of this run (a key missing, another shape)
        return DamagedCheckpoint(self.folder.path / RunFolder.STATE, f"{type(e).__name__}: {e}",
                                 STATE_FIX)

    def _fail_nonfinite(self, loss: torch.Tensor, state: LoopState) -> None:
        raise TrainingError(self.record_nonfinite(loss.item(), state))

    def record_nonfinite(self, loss: float, state: LoopState) -> str:
        """Record the run as failed on a NaN / infinite loss; the message, with the fix."""
        kept = [n for n in (RunFolder.BEST, RunFolder.STATE) if self.folder.has(n)]
        where = (f"the last good checkpoint ({', '.join(kept)}) is kept in {self.folder.path}"
                 if kept else "no checkpoint had been saved yet")
        weight = ("" if self.cfg.loss.name == BASELINE
                  else ", or a smaller pairwise weight (--lambda)")
        message = (f"the training loss became {loss} at epoch {state.epoch + 1}, batch "
                   f"{state.step + 1}; {where}. Try a lower learning rate (--lr, or "
                   f"train.lr in a --config file), --precision fp32{weight}")
        self.folder.update_record(RunStatus.FAILED, error=message)
        return message

    def _interrupt_message(self, state: LoopState) -> str:
        return (f"interrupted at epoch {state.epoch + 1}, batch {state.step}; checkpoint saved "
                f"in {self.folder.path}. Continue with the same train command plus --resume "
                "(prlbench compare resumes by itself: rerun it)")


def _progress(it, total: int, state: LoopState, enabled: bool, cfg: RunConfig,
              label: str | None = None):
    if not enabled:
        yield from it
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    label = label or f"{cfg.model.name}/{cfg.loss.name} s{cfg.train.seed}"
    label = escape(f"{label} epoch {state.epoch + 1}")  # a name is no markup
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total, completed=state.step)
        for item in it:
            yield item
            bar.advance(task)

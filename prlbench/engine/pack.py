"""Packed training: several runs that share the data, the model and the training settings
(seeds of one arm, and arms that differ only in the loss) trained as one packed model
(prlbench.models.packed) in one process.

Each member keeps its solo run's semantics:
- its initial weights are the solo run's (the solo model, built from its seed, is packed);
- it reads its own shuffled batch order (its own generator, seeded as the solo run's) and draws
  its own dropout masks (its own generator, started where the solo run's global RNG starts; on
  a CPU they are the solo run's masks; on a GPU, whose solo dropout is a fused kernel, they are
  the member's own draws from a CUDA generator seeded with its seed);
- its loss is its own batch's loss, its own loss function; the gradients of the summed losses
  reach each member's weights from its own loss only;
- it is scored on validation after each epoch, stops on its own patience and keeps its own
  best.pt; a member that is done, or whose loss is not finite, leaves the pack (its slices are
  cut out: `shrink`) and the others go on;
- its run folder gets the solo run's files: config.json, run.json, history.json, best.pt and,
  while it trains, a state.pt in the solo format. An interrupted pack resumes as a pack, and a
  member's state.pt resumes as a solo run just as well.
The float sums of a batched matmul differ from a solo matmul's in the last bits, so a member's
numbers agree with its solo run's to float tolerance, not bit for bit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from prlbench.data.loader import TensorData
from prlbench.engine.evaluate import autocast, concat_parts, probabilities, validation_score
from prlbench.engine.loop import Loop, LoopState, _progress
from prlbench.errors import Interrupted
from prlbench.losses import LOSSES
from prlbench.models.packed import member_state_dict, pack, shrink, split_outputs
from prlbench.signals import StopFlag


@dataclass
class Member:
    """One run of a pack: its solo Loop (config, folder, the state.pt and history writers), its
    loop state and its two generators."""

    loop: Loop
    state: LoopState
    shuffle: torch.Generator  # the batch order, seeded as the solo run's
    epoch_gen: torch.Tensor  # the shuffle generator's state at the start of the epoch
    dropout: torch.Generator  # where the solo run's global RNG would be
    optimizer_state: dict | None = None  # a resumed member's optimizer state_dict
    failed: str = ""

    @property
    def cfg(self):
        return self.loop.cfg

    @property
    def position(self) -> tuple[int, int]:
        return self.state.epoch, self.state.step


def pack_key(cfg) -> tuple:
    """Runs with equal keys can share a pack: everything but the seed and the loss is equal."""
    from dataclasses import replace

    from prlbench.config import LossConfig

    same = replace(cfg, loss=LossConfig(), train=replace(cfg.train, seed=0))
    return repr(same.to_dict())


# At and below this batch size per member a pack measured faster on a CPU (MMoE small, 8 seeds,
# 1 thread, 2-core AVX2 EPYC: 1.51x at 256, 1.35x at 512, 0.89x at 2048; docs/performance.md).
CPU_PACK_MAX_BATCH = 512


def pack_by_default(device: str, batch_size: int) -> bool:
    """Whether runs are packed without --pack / --no-pack: where it measured faster. On a GPU,
    whose small-model step is kernel launches, one per layer for all members instead of one per
    member. On a CPU only for small batches: there a step of batch 2048 is arithmetic and memory
    traffic, which a pack does not reduce (the default compare took 5 min 15 s packed and
    5 min 10 s solo), while at batch 512 and below the per-operation overhead it saves counts."""
    if torch.device(device).type == "cuda":
        return True
    return batch_size <= CPU_PACK_MAX_BATCH


def packable(cfg) -> str | None:
    """None if runs of this config can be packed; else why not."""
    if cfg.train.embedding_optimizer != "adam":
        return (f"--embedding-optimizer {cfg.train.embedding_optimizer} trains the embedding "
                "tables sparsely, which a pack does not do")
    return None


class PackLoop:
    """`fit()` trains `members` (one packed model of `models`) on `train`, each choosing its epoch
    on `val`; `on_done(member)` is called for each member that finishes (best.pt, state.pt and
    history.json written), `on_failed(member)` for one whose loss became non-finite."""

    def __init__(self, members: list[Member], models: list[torch.nn.Module], device: str,
                 train: TensorData, val: TensorData, *, on_done: Callable, on_failed: Callable
                 ) -> None:
        positions = {m.position for m in members}
        if len(positions) != 1:
            raise ValueError(f"a pack's members must stand at one (epoch, step); got {positions}")
        self.members, self.device, self.train, self.val = list(members), device, train, val
        self.on_done, self.on_failed = on_done, on_failed
        self.cfg = members[0].cfg.train
        self.model = pack(models, [m.dropout for m in members])
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr,
                                    weight_decay=self.cfg.weight_decay)
        resumed = [m.optimizer_state for m in members]
        if any(s is not None for s in resumed):
            self.opt.load_state_dict(stack_optimizer_states(resumed))

    # ------------------------------------------------------------------------------ states
    def member_states(self, s: int) -> tuple[dict, dict]:
        """Member s's model and optimizer state_dicts, in the solo format."""
        return member_state_dict(self.model, s), slice_optimizer_state(self.opt.state_dict(), s)

    def save_states(self) -> None:
        for s, m in enumerate(self.members):
            model, optimizer = self.member_states(s)
            if m.dropout.device.type == "cpu":
                rng, extra = m.dropout.get_state(), {}
            else:  # the solo format's CPU state stays; the member's CUDA generator beside it
                rng, extra = torch.get_rng_state(), {"pack_dropout_rng": m.dropout.get_state()}
            m.loop.write_state(model, optimizer, m.epoch_gen, rng, m.state, **extra)

    def _drop(self, leaving: list[int]) -> None:
        keep = [s for s in range(len(self.members)) if s not in set(leaving)]
        self.members = [self.members[s] for s in keep]
        if self.members:
            shrink(self.model, keep, [self.opt])

    # -------------------------------------------------------------------------------- fit
    def fit(self, *, progress: bool = True) -> None:
        with StopFlag() as stop:
            while self.members:
                self._run_epoch(stop, progress)

    def _run_epoch(self, stop: StopFlag, progress: bool) -> None:
        cfg, n = self.cfg, len(self.train)
        perms = []
        for m in self.members:  # the solo loop's draw: one randperm per epoch from this state
            m.shuffle.set_state(m.epoch_gen)
            perms.append(torch.randperm(n, generator=m.shuffle))
        next_gens = [m.shuffle.get_state() for m in self.members]
        perm = torch.stack(perms).to(self.train.click.device)  # [S, N]
        steps = -(-n // cfg.batch_size)
        first = self.members[0]
        self.model.train()
        last_save, t0 = time.monotonic(), time.perf_counter()
        for step in _progress(range(first.state.step, steps), steps, first.state, progress,
                              first.cfg, self._label()):
            lo, hi = step * cfg.batch_size, min(n, (step + 1) * cfg.batch_size)
            failed = self._step(perm[:, lo:hi], hi - lo)
            if failed:
                perm = perm[[s for s in range(len(self.members)) if s not in failed]]
                next_gens = [g for s, g in enumerate(next_gens) if s not in failed]
                self._fail(failed)
                if not self.members:
                    return
            if stop.requested or time.monotonic() - last_save > cfg.checkpoint_every_s:
                self._add_seconds(time.perf_counter() - t0)
                t0 = time.perf_counter()
                self.save_states()
                last_save = time.monotonic()
                if stop.requested:
                    raise Interrupted(self._interrupt_message())
        self._add_seconds(time.perf_counter() - t0)
        for m, g in zip(self.members, next_gens):
            m.epoch_gen = g
        self._end_epoch()

    def _step(self, idx: torch.Tensor, rows: int) -> list[int]:
        """One optimizer step of every member on its rows `idx[s]`; the members whose loss is
        not finite (left out of the step)."""
        S = len(self.members)
        batch = self.train.slice(idx.reshape(-1))
        with autocast(self.device, self.cfg.precision):
            out = self.model(batch.categorical, batch.numerical)
            outs = split_outputs(out, S)
            click, conversion = batch.click.view(S, -1), batch.conversion.view(S, -1)
            losses = [LOSSES.get(m.cfg.loss.name)(outs[s], click[s], conversion[s],
                                                  **m.cfg.loss.params)[0]
                      for s, m in enumerate(self.members)]
        values = torch.stack([v.detach().float() for v in losses]).tolist()
        failed = [s for s, v in enumerate(values) if not math.isfinite(v)]
        for s in failed:
            m = self.members[s]
            m.failed = m.loop.record_nonfinite(values[s], m.state)
        good = [v for s, v in enumerate(losses) if s not in failed]
        self.opt.zero_grad(set_to_none=True)
        if good:
            torch.stack(good).sum().backward()
            self.opt.step()
        for s, m in enumerate(self.members):
            if s not in failed:
                m.state.epoch_loss_sum += values[s]
                m.state.step += 1
                m.state.samples_seen += rows
        return failed

    def _fail(self, failed: list[int]) -> None:
        leaving = [self.members[s] for s in failed]
        self._drop(failed)
        for m in leaving:
            self.on_failed(m)

    def _add_seconds(self, seconds: float) -> None:
        for m in self.members:
            m.state.train_seconds += seconds

    def _end_epoch(self) -> None:
        preds = predict_members(self.model, self.val, len(self.members),
                                batch_size=self.cfg.eval_batch_size, precision=self.cfg.precision)
        for s, m in enumerate(self.members):
            m.loop.record_epoch(m.state, validation_score(preds[s], self.val),
                                lambda s=s: member_state_dict(self.model, s))
        self.save_states()
        done = [s for s, m in enumerate(self.members) if m.state.done]
        leaving = [self.members[s] for s in done]
        self._drop(done)
        for m in leaving:
            self.on_done(m)

    def _label(self) -> str:
        cfg = self.members[0].cfg
        losses = "+".join(dict.fromkeys(m.cfg.loss.name for m in self.members))
        seeds = ",".join(str(m.cfg.train.seed) for m in self.members)
        return f"{cfg.model.name}/{losses} pack of {len(self.members)} (seeds {seeds})"

    def _interrupt_message(self) -> str:
        m = self.members[0]
        return (f"interrupted at epoch {m.state.epoch + 1}, batch {m.state.step}; the "
                f"checkpoints of the {len(self.members)} packed runs are saved in their folders "
                f"under {m.loop.folder.path.parent}. Continue with the same command plus --resume "
                "(prlbench compare resumes by itself: rerun it)")


@torch.no_grad()
def predict_members(model: torch.nn.Module, data: TensorData, members: int, *,
                    batch_size: int = 16384, precision: str = "fp32"
                    ) -> list[dict[str, np.ndarray]]:
    """Every member's probabilities on every row of `data` (each member sees the same rows):
    `predict` of each member's solo model, in one packed pass per chunk of
    batch_size // members rows."""
    model.eval()
    device = data.click.device
    chunk = max(1, batch_size // members)
    parts = [{"p_ctr": [], "p_ctcvr": [], "p_cvr": []} for _ in range(members)]
    for start in range(0, len(data), chunk):
        batch = data.slice(torch.arange(start, min(start + chunk, len(data)), device=device))
        with autocast(str(device), precision):
            out = model(batch.categorical.repeat(members, 1), batch.numerical.repeat(members, 1))
        for key, value in probabilities(out).items():
            for s, rows in enumerate(value.view(members, -1)):
                parts[s][key].append(rows.cpu())
    return [concat_parts(p) for p in parts]


def slice_optimizer_state(state: dict, s: int) -> dict:
    """A packed Adam's state_dict -> member s's, as its solo run's Adam would hold it."""
    def cut(v):
        return v[s].clone() if torch.is_tensor(v) and v.dim() else v

    return {"state": {i: {k: cut(v) for k, v in st.items()} for i, st in state["state"].items()},
            "param_groups": state["param_groups"]}


def stack_optimizer_states(states: list[dict | None]) -> dict:
    """The members' solo Adam state_dicts (all resumed at the same step) -> the packed one."""
    if any(s is None for s in states):
        raise ValueError("every member of a resumed pack needs its optimizer state")
    first = states[0]
    stacked = {}
    for i, st in first["state"].items():
        stacked[i] = {}
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim():
                stacked[i][k] = torch.stack([s["state"][i][k] for s in states])
            else:
                stacked[i][k] = v
    return {"state": stacked, "param_groups": first["param_groups"]}


# ------------------------------------------------------------------------------ runs
@dataclass
class PackResult:
    """What training one member of a pack gave: its finished folder, or its error."""

    run_id: str | None
    run_dir: str | None = None
    error: str = ""
    reused: bool = False


def train_pack(cfgs: list, *, data_dir, out, resume: bool = True, restart: bool = False,
               progress: bool = True) -> list[PackResult]:
    """Train the runs `cfgs` (equal `pack_key`s) as packs and evaluate each on test, as
    `train_run` does one by one: one result per config, in order. A finished run is reused;
    with `resume`, an interrupted one continues from its state.pt (members at different points
    of training form separate packs). A member's failure is its result, the others go on;
    an interrupt saves every member's checkpoint and is raised."""
    from pathlib import Path

    from prlbench.data.cache import check_unchanged, dataset_in_use
    from prlbench.engine import run as solo
    from prlbench.store import DamagedCheckpoint, Store

    if not cfgs:
        return []
    keys = {pack_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ValueError("the runs of a pack must differ in the seed and the loss only")
    why = packable(cfgs[0])
    if why:
        raise ValueError(f"these runs cannot be packed: {why}")
    solo._check_flags(cfgs[0], resume, restart)
    data_dir, out = Path(data_dir), Path(out)
    results: list[PackResult | None] = [None] * len(cfgs)
    members: list[tuple[int, Member, object]] = []  # (index, member, its RunContext)
    opened = {}
    for i, cfg in enumerate(cfgs):
        o = solo._open_run(cfg, data_dir, out, resume=resume, restart=restart)
        if isinstance(o, Path):
            results[i] = PackResult(o.name, str(o), reused=True)
        else:
            opened[i] = o
    # From the first member's run.json on, an interrupt or error anywhere (building the other
    # members, loading the data, training) is recorded in every member not yet finished.
    unfinished = _Folders(lambda: [ctx.folder for i, _, ctx in members if results[i] is None])
    held = dataset_in_use(data_dir, cfgs[0].data.dataset,
                          by=f"runs {', '.join(o[1] for o in opened.values())}")
    try:
        with solo._recorded(unfinished), held:
            for i, (_, rid, part, manifest) in opened.items():
                check_unchanged(manifest, cfgs[0].data.dataset)  # not replaced before we held it
                member, ctx = _member(cfgs[i], part, data_dir, manifest, resume=resume,
                                      damaged=DamagedCheckpoint)
                members.append((i, member, ctx))
                solo._begin(ctx, rid)
            if members:
                _train_members(members, results, data_dir, Store(out), progress)
    except (Interrupted, KeyboardInterrupt):
        raise  # every member's checkpoint is saved; the record says interrupted
    except Exception as e:  # noqa: BLE001 - recorded as failed; the results say why
        for i, m, ctx in members:
            if results[i] is None:
                results[i] = PackResult(ctx.folder.run_id, error=f"{type(e).__name__}: {e}")
    return results


def _train_members(members: list, results: list, data_dir, store, progress: bool) -> None:
    """Train `members` [(index, Member, RunContext)], in one pack per point of training they
    stand at; each finished or failed member's PackResult goes into results[index]."""
    from prlbench.data.loader import load_split
    from prlbench.engine import run as solo
    from prlbench.store import RunStatus

    cfg = members[0][2].cfg
    device, name, manifest = cfg.train.device, cfg.data.dataset, members[0][2].manifest
    train = load_split(data_dir, name, "train", device=device, manifest=manifest)
    val = load_split(data_dir, name, "val", device=device, manifest=manifest)
    by_member = {id(m): (i, ctx) for i, m, ctx in members}

    def done(m: Member) -> None:
        i, ctx = by_member[id(m)]
        try:
            with solo._recorded(ctx.folder):
                results[i] = PackResult(ctx.folder.run_id, str(solo._finish(ctx, m.state, store)))
        except Exception as e:  # noqa: BLE001 - one member's failure is its result
            results[i] = PackResult(ctx.folder.run_id, error=f"{type(e).__name__}: {e}")

    def failed(m: Member) -> None:
        i, ctx = by_member[id(m)]
        results[i] = PackResult(ctx.folder.run_id, error=f"TrainingError: {m.failed}")

    groups: dict[tuple, list] = {}
    for i, m, ctx in members:
        groups.setdefault(m.position, []).append((i, m, ctx))
    for group in groups.values():
        for i, m, ctx in group:
            if m.state.done:  # it stopped after its last save, before its test
                done(m)
        group = [(i, m, ctx) for i, m, ctx in group if not m.state.done]
        if not group:
            continue
        packed_with = [ctx.folder.run_id for *_, ctx in group]
        for *_, ctx in group:
            ctx.folder.update_record(RunStatus.RUNNING, packed_with=packed_with)
        PackLoop([m for _, m, _ in group], [ctx.model for *_, ctx in group], device, train, val,
                 on_done=done, on_failed=failed).fit(progress=progress)


class _Folders:
    """The folders of the members still training (`folders()`), behind update_record, for
    `_recorded` around a pack (the finished members are published, the failed recorded)."""

    def __init__(self, folders: Callable) -> None:
        self.folders = folders

    def update_record(self, status, **changes) -> None:
        for f in self.folders():
            f.update_record(status, **changes)


def _member(cfg, part, data_dir, manifest, *, resume: bool, damaged: type):
    """A member's RunContext (its solo model, seeded) and its Member: fresh, or from its
    state.pt; a state.pt that cannot be read is set aside (as a compare does for a solo run)."""
    from prlbench.engine import run as solo

    ctx = solo.RunContext(cfg, part, data_dir, manifest, cfg.train.device)
    dropout = torch.Generator(device=ctx.device)
    if dropout.device.type == "cpu":
        dropout.set_state(torch.get_rng_state())  # where the solo run's dropout draws start
    else:
        dropout.manual_seed(cfg.train.seed)
    shuffle = torch.Generator(device="cpu").manual_seed(cfg.train.seed)
    loop = Loop(cfg, part, ctx.model, ctx.device, None, None)
    member = Member(loop, LoopState(), shuffle, shuffle.get_state(), dropout)
    if not (resume and part.has(part.STATE)):
        return member, ctx
    try:
        ckpt = loop.read_state()
        try:
            ctx.model.load_state_dict(ckpt["model"])
            member.state = LoopState(**ckpt["loop"])
            member.epoch_gen = ckpt["epoch_generator"]
            if member.dropout.device.type == "cpu":
                member.dropout.set_state(ckpt["torch_rng"])
            elif "pack_dropout_rng" in ckpt:  # else a solo GPU run's: its seeded generator
                member.dropout.set_state(ckpt["pack_dropout_rng"])
            member.optimizer_state = ckpt["optimizer"]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise loop.damaged(e) from None
    except damaged as e:
        aside = solo._set_aside(e.path, "damaged")
        solo._notice(f"{e.path} is damaged or truncated ({e.reason}): moved to {aside.name} "
                     "(kept) and the run started over from its first epoch")
        return _member(cfg, part, data_dir, manifest, resume=False, damaged=damaged)
    return member, ctx


def train_seeds(cfg, seeds, *, data_dir, out, pack: bool | None = None, resume: bool = False,
                restart: bool = False, progress: bool = True) -> list:
    """`prlbench train --seeds`: `cfg` on each of `seeds`, packed into one model (`pack`; None:
    where it is faster, `pack_by_default`), else one after another (also for a config that
    cannot be packed); the finished run folders, in seed order. Every run's lock is held while
    the pack trains. A run that fails raises a TrainingError naming it, after the others have
    finished."""
    import contextlib
    from dataclasses import replace
    from pathlib import Path

    from prlbench.config import run_id
    from prlbench.data.cache import open_cache
    from prlbench.data.preprocess import ensure_generated
    from prlbench.data.variants import canonical
    from prlbench.engine import run as solo
    from prlbench.errors import ConfigError, TrainingError
    from prlbench.store import Store

    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {', '.join(map(str, seeds))}")
    cfg = replace(cfg, data=replace(cfg.data, dataset=canonical(cfg.data.dataset)))
    cfgs = [replace(cfg, train=replace(cfg.train, seed=int(s))) for s in seeds]
    if pack is None:
        pack = pack_by_default(cfg.train.device, cfg.train.batch_size)
    if not pack or packable(cfg) is not None or len(cfgs) == 1:
        return [solo.train(c, data_dir=data_dir, out=out, resume=resume, restart=restart,
                           progress=progress) for c in cfgs]
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

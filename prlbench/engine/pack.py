"""Packed training: several runs that share the data and the training settings (seeds of one
arm, and arms that differ only in the loss) trained in one process, on one copy of the data.

A pack is its members' solo runs taking turns: each member is a solo training loop
(engine.loop: its own model, optimizer, batch order, loss, early stopping, best.pt and state.pt)
that steps once, then the next member steps, and so on. Before a member steps, its own global
RNG state (where the solo run's dropout draws come from) is put in place, and taken back after.
So a member's arithmetic is exactly its solo run's: the same run id gives the same bytes
whether the run trained alone or in a pack, whatever the pack's size, order or its members'
slots (a test checks best.pt bit for bit). What a pack saves is a process and a copy of the
data per run, not arithmetic: it is not faster than the same runs one after another.

A member that is done leaves the pack and is tested and published at once; a member whose loss
is not finite fails alone; an interrupt saves every member's checkpoint (each resumes as a pack
or alone, as it stood).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from prlbench.engine import loop as training
from prlbench.engine.loop import Loop
from prlbench.errors import Interrupted, TrainingError


@dataclass
class Member:
    """One run of a pack: its solo Loop (config, folder, model, data) and its RNG states."""

    loop: Loop
    rng: torch.Tensor  # the global CPU RNG state its solo run would have now
    cuda_rng: torch.Tensor | None = None  # and the CUDA one, on a GPU
    steps: Iterator[None] | None = None
    failed: str = ""
    error: BaseException | None = None  # what failed it (a TrainingError on a non-finite loss)

    @property
    def cfg(self):
        return self.loop.cfg

    @property
    def state(self):
        return self.loop.state

    def swap_in(self) -> None:
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.loop.device)

    def swap_out(self) -> None:
        self.rng = torch.get_rng_state()
        if self.cuda_rng is not None:
            self.cuda_rng = torch.cuda.get_rng_state(self.loop.device)


def pack_key(cfg) -> tuple:
    """Runs with equal keys can share a pack: everything but the seed and the loss is equal."""
    from dataclasses import replace

    from prlbench.config import LossConfig

    same = replace(cfg, loss=LossConfig(), train=replace(cfg.train, seed=0))
    return repr(same.to_dict())


class PackLoop:
    """`fit()` trains `members` in turns, one optimizer step each, until every member is done;
    `on_done(member)` for each member that finishes (best.pt, state.pt and history.json written),
    `on_failed(member)` for one whose loss became non-finite."""

    def __init__(self, members: list[Member], *, on_done: Callable, on_failed: Callable) -> None:
        self.members, self.on_done, self.on_failed = list(members), on_done, on_failed

    def fit(self, *, progress: bool = True, resume: bool = True) -> None:
        alone = len(self.members) == 1  # a run trained alone shows its own bar
        with training.StopFlag() as stop, _PackProgress(self.members, progress) as bar:
            for m in self.members:
                m.steps = m.loop.steps(resume=resume, progress=progress and alone, stop=stop)
            while self.members:
                for m in list(self.members):
                    self._step(m, stop)
                bar.advance()

    def _leave(self, m: Member) -> None:
        """A member that is done or failed leaves the pack and lets go of the training data:
        the last to leave frees them, before any test split is loaded to score it."""
        self.members.remove(m)
        m.steps = None
        m.loop.train = m.loop.val = None

    def _step(self, m: Member, stop) -> None:
        m.swap_in()
        try:
            next(m.steps)
        except StopIteration:
            m.swap_out()
            self._leave(m)
            self.on_done(m)
            return
        except TrainingError as e:  # recorded as failed by its loop
            m.swap_out()
            m.failed, m.error = str(e), e
            self._leave(m)
            self.on_failed(m)
            return
        except Interrupted:  # its checkpoint is saved; save the others' where they stand
            m.swap_out()
            if len(self.members) == 1:
                raise  # a run alone: its own message (epoch, batch, folder)
            self._save_others(m)
            raise Interrupted(self._interrupt_message()) from None
        m.swap_out()

    def _save_others(self, interrupted: Member) -> None:
        for other in self.members:
            if other is interrupted or other.loop.opt is None:  # not started: nothing to save
                continue
            other.swap_in()
            try:
                other.loop.checkpoint()
            finally:
                other.swap_out()

    def _interrupt_message(self) -> str:
        m = self.members[0]
        return (f"interrupted; the checkpoints of the {len(self.members)} packed runs are saved "
                f"in their folders under {m.loop.folder.path.parent}. Continue with the same "
                "command plus --resume (prlbench compare resumes by itself: rerun it)")


class _PackProgress:
    """One bar for a pack: the steps of its members' current epochs."""

    def __init__(self, members: list[Member], enabled: bool) -> None:
        self.enabled = enabled and len(members) > 1
        self.bar = None
        self.members = members

    def __enter__(self) -> "_PackProgress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TimeElapsedColumn

            first = self.members[0].cfg
            label = (f"{first.model.name} pack of {len(self.members)} (seeds "
                     f"{', '.join(str(m.cfg.train.seed) for m in self.members)})")
            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                TimeElapsedColumn(), transient=True,
                                console=Console(stderr=True))
            self.bar.__enter__()
            self.task = self.bar.add_task(label, total=None)
        return self

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


@dataclass
class PackResult:
    """What training one member of a pack gave: its finished folder, or its error."""

    run_id: str | None
    run_dir: str | None = None
    error: str = ""
    reused: bool = False
    exception: BaseException | None = field(default=None, repr=False, compare=False)


def train_pack(cfgs: list, *, data_dir, out, resume: bool = True, restart: bool = False,
               progress: bool = True, set_aside_damaged: bool = True) -> list[PackResult]:
    """Train the runs `cfgs` (equal `pack_key`s) as one pack and evaluate each on test, as
    `train_run` does one by one, with the same numbers: one result per config, in order. A
    finished run is reused; with `resume`, an interrupted one continues from its state.pt
    (members may stand at different points of training). A member's failure is its result, the
    others go on; an interrupt saves every member's checkpoint and is raised. A state.pt that
    cannot be read is set aside and its run started over (`set_aside_damaged`), or refused
    (its DamagedCheckpoint is the result's exception)."""
    from pathlib import Path

    from prlbench.data.cache import check_unchanged, dataset_in_use
    from prlbench.engine import session
    from prlbench.store import DamagedCheckpoint, Store

    if not cfgs:
        return []
    keys = {pack_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ValueError("the runs of a pack must differ in the seed and the loss only")
    session.check_flags(cfgs[0], resume, restart)
    data_dir, out = Path(data_dir), Path(out)
    results: list[PackResult | None] = [None] * len(cfgs)
    members: list[tuple[int, Member, object]] = []  # (index, member, its RunContext)
    opened = {}
    for i, cfg in enumerate(cfgs):
        o = session.open_run(cfg, data_dir, out, resume=resume, restart=restart)
        if isinstance(o, Path):
            results[i] = PackResult(o.name, str(o), reused=True)
        else:
            opened[i] = o
    # From the first member's run.json on, an interrupt or error anywhere (building the other
    # members, loading the data, training) is recorded in every member not yet finished.
    unfinished = _Folders(lambda: [ctx.folder for i, _, ctx in members if results[i] is None])
    ids = [o[1] for o in opened.values()]
    held = dataset_in_use(data_dir, cfgs[0].data.dataset,
                          by=f"run{'s' if len(ids) > 1 else ''} {', '.join(ids)}")
    try:
        with session.recorded(unfinished), held:
            for i, (_, rid, part, manifest) in opened.items():
                check_unchanged(manifest, cfgs[0].data.dataset)  # not replaced before we held it
                member, ctx = _member(cfgs[i], part, data_dir, manifest, resume=resume,
                                      damaged=DamagedCheckpoint if set_aside_damaged else ())
                members.append((i, member, ctx))
                session.begin(ctx, rid)
            if members:
                _train_members(members, results, data_dir, Store(out), progress, resume)
    except (Interrupted, KeyboardInterrupt):
        raise  # every member's checkpoint is saved; the record says interrupted
    except Exception as e:  # noqa: BLE001 - recorded as failed; the results say why
        for i, (_, rid, _, _) in opened.items():
            if results[i] is None:
                results[i] = PackResult(rid, error=f"{type(e).__name__}: {e}", exception=e)
    return results


def _train_members(members: list, results: list, data_dir, store, progress: bool,
                   resume: bool) -> None:
    """Train `members` [(index, Member, RunContext)] as one pack on one copy of the data; each
    finished or failed member's PackResult goes into results[index]."""
    from prlbench.data.loader import load_split
    from prlbench.engine import session
    from prlbench.store import RunStatus

    cfg = members[0][2].cfg
    device, name, manifest = cfg.train.device, cfg.data.dataset, members[0][2].manifest
    train = load_split(data_dir, name, "train", device=device, manifest=manifest)
    val = load_split(data_dir, name, "val", device=device, manifest=manifest)
    by_member = {id(m): (i, ctx) for i, m, ctx in members}

    def done(m: Member) -> None:
        i, ctx = by_member[id(m)]
        try:
            with session.recorded(ctx.folder):
                results[i] = PackResult(ctx.folder.run_id, str(session.finish(ctx, m.state, store)))
        except Exception as e:  # noqa: BLE001 - one member's failure is its result
            results[i] = PackResult(ctx.folder.run_id, error=f"{type(e).__name__}: {e}",
                                    exception=e)

    def failed(m: Member) -> None:
        i, ctx = by_member[id(m)]
        results[i] = PackResult(ctx.folder.run_id, error=f"TrainingError: {m.failed}",
                                exception=m.error)

    packed_with = [ctx.folder.run_id for *_, ctx in members]
    for _, m, ctx in members:
        m.loop.train, m.loop.val = train, val
        if len(members) > 1:  # a run trained alone records no pack
            ctx.folder.update_record(RunStatus.RUNNING, packed_with=packed_with,
                                     pack_mode="turns")
    del train, val  # held by the members' loops only, so freed when the last one finishes
    PackLoop([m for _, m, _ in members], on_done=done, on_failed=failed).fit(
        progress=progress, resume=resume)


class _Folders:
    """The folders of the members still training (`folders()`), behind update_record, for
    `_recorded` around a pack (the finished members are published, the failed recorded)."""

    def __init__(self, folders: Callable) -> None:
        self.folders = folders

    def update_record(self, status, **changes) -> None:
        for f in self.folders():
            f.update_record(status, **changes)


def _member(cfg, part, data_dir, manifest, *, resume: bool, damaged: type):
    """A member's RunContext (its solo model, seeded as the solo run's) and its Member; a
    state.pt that cannot be read is set aside and the run started over (as a compare does for
    a solo run)."""
    from prlbench.engine import session

    ctx = session.RunContext(cfg, part, data_dir, manifest, cfg.train.device)
    member = Member(Loop(cfg, part, ctx.model, ctx.device, None, None), torch.get_rng_state(),
                    torch.cuda.get_rng_state(ctx.device)
                    if torch.device(ctx.device).type == "cuda" else None)
    if not (resume and part.has(part.STATE)):
        return member, ctx
    try:
        ckpt = member.loop.read_state()
        try:  # readable by torch: is it this run's? (the loop loads it again when it starts)
            ctx.model.load_state_dict(ckpt["model"])
            ckpt["optimizer"], ckpt["epoch_generator"], ckpt["torch_rng"], ckpt["loop"]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise member.loop.damaged(e) from None
    except damaged as e:
        aside = session.set_aside(e.path, "damaged")
        session.notice(f"{e.path} is damaged or truncated ({e.reason}): moved to {aside.name} "
                     "(kept) and the run started over from its first epoch")
        return _member(cfg, part, data_dir, manifest, resume=False, damaged=damaged)
    return member, ctx

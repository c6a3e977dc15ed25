"""`prlbench compare`: run the grid resumably (or reuse it), then write statistics, tables, plots.

    <out>/runs/<run-id>/   one folder per run (prlbench.store)
    <out>/tables/          auc.{md,tex}, logloss.{md,tex}, cells.csv, runs.csv, delong.csv
    <out>/plots/           forest.{png,pdf}, validation.{png,pdf}
    <out>/compare.json     the grid, each run's outcome and error, the settings

Each run's id is the hash of its resolved config and of the cached data's content, so a finished
run is found again and reused: an interrupted compare continues where it stopped, and a second
compare with one more model trains only that model. A failed run is recorded with its error and
the rest of the grid goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from prlbench.config import run_id
from prlbench.errors import ConfigError
from prlbench.experiment.executors import RunResult, make_executor
from prlbench.experiment.grid import CompareConfig, Grid
from prlbench.store import CompareRecord, Outcome, Role, RunEntry, RunFolder, Store


@dataclass(frozen=True)
class RunOutcome:
    """One run of the grid, as this compare found or left it."""

    cfg: object  # RunConfig
    run_id: str | None
    status: Outcome
    run_dir: Path | None = None
    error: str = ""
    seconds: float = 0.0
    role: Role = Role.TABLE
    best_val_score: float | None = None  # what its epoch (and a candidate) was chosen by


def _outcome(cfg, run_id: str | None, status: Outcome, run_dir: Path | None = None,
             error: str = "", seconds: float = 0.0) -> RunOutcome:
    """A run's outcome with its validation score, read once from its run.json."""
    folder = RunFolder(run_dir) if run_dir is not None else None
    score = (folder.read_record().best_val_score
             if folder is not None and folder.has(RunFolder.RECORD) else None)
    return RunOutcome(cfg, run_id, status, run_dir, error, seconds, best_val_score=score)


@dataclass
class CompareResult:
    outcomes: list[RunOutcome]
    written: list[Path] = field(default_factory=list)
    markdown: str = ""
    warnings: list[str] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)  # an earlier report's files, now stale

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == Outcome.FAILED]

    @property
    def missing(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == Outcome.MISSING]


# --------------------------------------------------------------------------------- grid
def run_grid(grid: Grid, *, executor, data_dir: Path, out: Path, train: bool = True,
             on_event=None) -> list[RunOutcome]:
    """Run (or reuse) every run of the grid; returns one outcome per run of the table (the
    chosen setting of each arm on every reported seed), then one per tuning run (role
    CANDIDATE: every candidate of an arm with settings to choose, on every tuning seed;
    recorded with its validation score or error, never reported in the tables)."""
    on_event = on_event or (lambda *a: None)
    arms = grid.arms()
    cands = [grid.candidates(loss) for _, _, loss in arms]
    tuning = tuning_runs(grid)
    tried = _execute([c for *_, c in tuning], executor, data_dir, out, train, on_event)
    if not train:
        _check_tuning_complete(tried, out)
    chosen = [_select(cands[i], [(j, o) for (a, j, _), o in zip(tuning, tried) if a == i])
              for i in range(len(arms))]
    table = [grid.config(*arms[i], s, cands[i][chosen[i]]) for i in range(len(arms))
             for s in grid.seeds]
    reported = _execute(table, executor, data_dir, out, train, on_event)
    return reported + [replace(o, role=Role.CANDIDATE) for o in tried]


def tuning_runs(grid: Grid) -> list[tuple[int, int, object]]:
    """The tuning runs: (arm index, candidate index, config) for every candidate of an arm
    with settings to choose, on every tuning seed."""
    arms = grid.arms()
    cands = [grid.candidates(loss) for _, _, loss in arms]
    return [(i, j, grid.config(*arms[i], s, p)) for i in range(len(arms)) if len(cands[i]) > 1
            for j, p in enumerate(cands[i]) for s in grid.tune_seeds]


def _check_tuning_complete(tried: list[RunOutcome], out: Path) -> None:
    """--tables-only chooses settings from the tuning runs that exist: with one missing it
    would choose among the others and still say "tuned on validation". Refused instead."""
    missing = [o for o in tried if o.status == Outcome.MISSING]
    if missing:
        first = missing[0]
        raise ConfigError(
            f"--tables-only: {len(missing)} of the {len(tried)} tuning runs that choose the "
            f"settings on validation have not finished under {out} (first: {first.run_id}, "
            f"{first.cfg.loss.name} seed {first.cfg.train.seed}); the choice would be made "
            "without them. Train them: run the same command without --tables-only")


def _execute(cfgs: list, executor, data_dir: Path, out: Path, train: bool,
             on_event) -> list[RunOutcome]:
    if not train:
        return [lookup(c, data_dir, out) for c in cfgs]
    outcomes = []
    for cfg, r in zip(cfgs, executor.map(cfgs, data_dir, out, on_event), strict=True):
        record_failure(Store(out), r)
        run_dir = Path(r.run_dir) if r.run_dir else None
        outcomes.append(_outcome(cfg, r.run_id, r.status, run_dir, r.error, r.seconds))
    return outcomes


def record_failure(store: Store, r: RunResult) -> None:
    """A failed run's error and traceback next to its checkpoint (`runs/<id>.partial/
    failure.json`; the driver writes it for a run that failed on a Ray worker too). A run that
    failed before its id was known (e.g. a data set not preprocessed) is in compare.json only."""
    if r.status == Outcome.FAILED and r.run_id is not None:
        store.record_failure(r.run_id, r.error, r.trace)


def lookup(cfg, data_dir: Path, out: Path) -> RunOutcome:
    """A finished run of this config under `out` (REUSED), or MISSING: what --tables-only
    reports and --plan counts as reused."""
    from prlbench.data.cache import data_hash

    rid = run_id(cfg, data_hash(Path(data_dir), cfg.data.dataset))
    final = Store(out).finished(rid)
    if final.is_finished():
        return _outcome(cfg, rid, Outcome.REUSED, final.path)
    return _outcome(cfg, rid, Outcome.MISSING)


def _select(candidates: list[dict], tried: list[tuple[int, RunOutcome]]) -> int:
    """The index of the candidate with the best mean validation score over the tuning seeds.
    A candidate with a failed or missing tuning run ranks below every complete one (a mean
    over fewer seeds is not comparable); with none complete, the first candidate."""
    if len(candidates) == 1:
        return 0
    scores: dict[int, list] = {j: [] for j in range(len(candidates))}
    for j, o in tried:
        scores[j].append(o.best_val_score)
    complete = {j: sum(v) / len(v) for j, v in scores.items()
                if v and all(x is not None for x in v)}
    return max(complete, key=lambda j: (complete[j], -j)) if complete else 0


# ------------------------------------------------------------------------------ compare
def compare(cc: CompareConfig, *, data_dir: Path, out: Path, progress: bool = True,
            executor=None) -> CompareResult:
    """The whole compare: check the data, run the grid (with `executor`, default: the one `cc`
    names), write compare.json and the report."""
    grid, train = cc.grid, not cc.tables_only
    grid.check()
    if train and executor is None and cc.executor == "local":  # before any data is generated
        from prlbench.engine.run import resolve_device

        resolve_device(grid.base.train.device)
    manifests = prepare_data(grid, data_dir, progress=progress, generate=train)
    check_extra_splits(manifests, cc.splits)
    if train and executor is None:
        executor = _executor(cc)
    live = _Live(grid.size(), progress and train)
    t0 = time.perf_counter()
    with live.progress:
        outcomes = run_grid(grid, executor=executor, data_dir=data_dir, out=out, train=train,
                            on_event=live)
    res = CompareResult(outcomes)
    done = [o.run_dir for o in outcomes if o.run_dir is not None and o.role == Role.TABLE]
    if not train and not done:
        raise ConfigError(f"--tables-only: none of the {len(outcomes)} runs of this grid has "
                          f"finished under {out}; run the same command without --tables-only "
                          "to train them (or pass the --out of an earlier compare)")
    store = Store(out)
    # compare.json and the report are written under the experiment's lock, so that they always
    # come from one compare; a second compare on this --out waits here (and says for whom).
    with store.experiment_lock(on_wait=_waiting):
        if train:  # --tables-only leaves the record of the compare that trained the runs
            store.write_compare(_record(grid, res, time.perf_counter() - t0, cc.test_record()))
        if done:
            evaluate_extra_splits(done, cc.splits, data_dir, progress)
            _report(res, done, store, cc, data_notes(manifests))
            if not train and (store.root / Store.COMPARE).exists():  # the test its tables use
                store.write_compare(replace(store.read_compare(), test=cc.test_record()))
        else:
            from prlbench.report import clear_report

            res.removed = clear_report(out)
    return res


def _waiting(holder: str) -> None:
    _console().print(f"waiting for the compare that is writing its report into this --out "
                     f"({holder})", highlight=False, markup=False)


def significance_plan(cc: CompareConfig, alpha: float = 0.05) -> tuple[str, list[str]]:
    """Before training: what the chosen seeds, test and number of comparisons allow. Returns a
    line (the test, the correction, the AUC table's comparisons and the smallest adjusted p
    any cell can reach) and warnings (no cell can be significant, or equivalent)."""
    from prlbench.metrics import table_metrics
    from prlbench.report.analysis import (seeds_needed, smallest_adjusted_p,
                                          smallest_equivalence_p)
    from prlbench.report.table import CORRECTION_NAMES, TEST_NAMES

    grid, n = cc.grid, len(cc.grid.seeds)
    arms = len(grid.datasets) * len(grid.models) * (len(grid.losses) - 1)
    k = arms * len(table_metrics("auc"))
    test, corr = TEST_NAMES[cc.test], CORRECTION_NAMES[cc.correction]
    if n < 2 or k == 0:
        return "", []
    head = f"significance: {test}, {corr} over the AUC table's {k} comparisons at {alpha:g}"
    p_min = smallest_adjusted_p(cc.test, cc.correction, n, k)
    warnings = []
    if cc.test != "wilcoxon":
        line = f"{head}; with {n} seeds p has no floor (the data decide how small it gets)"
    else:
        line = (f"{head}; with {n} seeds the smallest adjusted p any cell can reach is "
                f"{p_min:.3g}")
        if p_min >= alpha:
            warnings.append(f"with {n} seeds, Wilcoxon and {k} comparisons no cell can be "
                            f"significant (smallest adjusted p {p_min:.3g} >= {alpha:g}); use "
                            f"--seeds {seeds_needed(cc.correction, k, alpha)} or more, or the "
                            "default --test twolevel")
        if cc.equivalence and "auc" in cc.equivalence:
            eq = smallest_equivalence_p(cc.test, cc.correction, n, k)
            if eq >= alpha:
                warnings.append(
                    f"with {n} seeds the Wilcoxon equivalence test over {k} comparisons cannot "
                    f"call any cell equivalent (smallest adjusted p {eq:.3g} >= {alpha:g}); "
                    f"use --seeds {seeds_needed(cc.correction, k, alpha, equivalence=True)} or "
                    "more, or the default --test twolevel")
    return line, warnings


def default_out() -> Path:
    """The experiment folder when --out is not given: $PRLBENCH_OUT/compare, else
    results/compare (train's runs go to $PRLBENCH_OUT/runs, else results/runs)."""
    import os

    return Path(os.environ.get("PRLBENCH_OUT") or "results") / "compare"


def prepare_data(grid: Grid, data_dir: Path, *, progress: bool, generate: bool) -> dict:
    """Fail before any training if a data set is not preprocessed; a generated data set is
    generated on first use, except for --tables-only, which never creates anything. Returns
    each data set's manifest, read once here for the checks and captions that need it."""
    import shlex

    from prlbench.data.cache import MANIFEST, dataset_dir, open_cache
    from prlbench.data.preprocess import ensure_generated
    from prlbench.data.variants import spec_of
    from prlbench.errors import CacheError

    # Every data set that needs a download or preprocess is named at once, not the first alone.
    missing = [n for n in grid.datasets if not spec_of(n).generated
               and not (dataset_dir(data_dir, n) / MANIFEST).exists()]
    if len(missing) > 1:
        where = shlex.quote(str(data_dir))
        raise CacheError(
            f"{len(missing)} data sets are not preprocessed in {data_dir}: {', '.join(missing)}; "
            "run: " + " && ".join(f"prlbench preprocess {shlex.quote(n)} --data-dir {where}"
                                  for n in missing)
            + " (docs/data.md says where to get each)")
    manifests = {}
    for name in grid.datasets:
        if generate:
            ensure_generated(data_dir, name, progress=progress)
        manifests[name] = open_cache(data_dir, name, verify=False)
    return manifests


def _executor(cc: CompareConfig):
    """The executor `cc` names (the local one's device was checked before any data, in
    compare(); Ray workers may have GPUs the driver lacks)."""
    gpus = 1.0 if cc.grid.base.train.device.startswith("cuda") else 0.0
    return make_executor(cc.executor, jobs=cc.jobs, ray_address=cc.ray_address,
                         threads=cc.threads, gpus=gpus, pack=cc.packed)


def data_notes(manifests: dict) -> dict[str, str]:
    """Per data set, what its manifest says about how labels and the test split were made,
    for the captions (KuaiRand: the deeper label that is the conversion, what happened to
    deeper labels without a click); nothing for a data set whose manifest does not say."""
    notes = {}
    for name, manifest in manifests.items():
        params = manifest.get("params")
        if not isinstance(params, dict) or not params.get("labels"):
            continue
        split = params.get("split") if isinstance(params.get("split"), dict) else {}
        parts = [f"labels {params['labels']}", params.get("unclicked_deep"),
                 split.get("test") and f"test split {split['test']}"]
        notes[name] = "; ".join(str(p) for p in parts if p)
    return notes


def _report(res: CompareResult, run_dirs: list[Path], store: Store, cc: CompareConfig,
            notes: dict[str, str]) -> None:
    from prlbench.report import StagedReport, analysis, plots, split_suffix, write_tables
    from prlbench.report.markdown import to_markdown
    from prlbench.report.table import build_table

    summaries = []
    for split in cc.splits:
        runs = analysis.load_runs(run_dirs, split)
        summary = analysis.summarise(runs, **cc.stats_options)
        summary.selection = cc.grid.selection()
        summary.data_notes = notes
        summaries.append(summary)
    # Tables and plots are staged and swapped in together: a failure midway (a full disk, a
    # damaged history.json) leaves the previous report whole, never new tables by old plots.
    report = StagedReport(store.root)
    with report as stage:
        protocol = _to_json_dict(store)
        for summary in summaries:
            write_tables(summary, stage.tables_dir, cc.formats, cells=cc.cells,
                         protocol=protocol)
            plots.forest_plot(summary, stage.plots_dir / f"forest{split_suffix(summary.split)}")
            _sweep(summary, cc, stage)
        plots.validation_curves(summaries[0].runs, stage.plots_dir / "validation")
    res.warnings = [w for s in summaries for w in s.warnings]
    res.written = report.written
    res.markdown = to_markdown(build_table(summaries[0], cells=cc.cells))


def _to_json_dict(store: Store) -> dict | None:
    """compare.json's content, for the setup paragraph (None where there is none)."""
    from dataclasses import asdict

    return asdict(store.read_compare()) if (store.root / Store.COMPARE).exists() else None


def _sweep(summary, cc: CompareConfig, stage) -> None:
    """Where the grid sweeps a generator knob (data-set variants differing in one knob): Δ
    against the knob, per loss, with the tables' CIs (plots/sweep.png, tables/sweep.csv), for
    CTR and CTCVR AUC and the CTR AUC against the noise-free clicks (synthetic data only)."""
    import pandas as pd

    from prlbench.data import variants
    from prlbench.fileio import atomic_write_bytes
    from prlbench.report import analysis, split_suffix, sweep
    from prlbench.report.table import ci_name

    if not any(variants.is_variant(d) for d in cc.grid.datasets):
        return
    cells = summary.cells[summary.cells["metric"].isin(sweep.SWEEP_METRICS)]
    extra = tuple(m for m in sweep.SWEEP_METRICS
                  if m not in summary.metrics and m in summary.runs)
    if extra:  # not in a table: its own summary (its own correction family), for the plot
        more = analysis.summarise(summary.runs, metrics=extra, delong=False,
                                  **cc.stats_options)
        cells = pd.concat([cells, more.cells], ignore_index=True)
    frame, warnings = sweep.sweep_frame(cells)
    summary.warnings.extend(w for w in warnings if w not in summary.warnings)
    if frame.empty:
        return
    suffix = split_suffix(summary.split)
    sweep.sweep_plot(frame.drop(columns="significant", errors="ignore"),
                     stage.plots_dir / f"sweep{suffix}", confidence=1 - summary.alpha,
                     ci=ci_name(summary))
    atomic_write_bytes(stage.tables_dir / f"sweep{suffix}.csv",
                       frame.to_csv(index=False, lineterminator="\n").encode("utf-8"))


def evaluate_extra_splits(run_dirs: list[Path], splits: tuple[str, ...], data_dir: Path,
                          progress: bool) -> None:
    """Score each finished run's best checkpoint on the extra evaluation splits the report
    needs (compare --test-split random / both), where it has not been done yet."""
    from prlbench.engine.run import evaluate_run

    todo = [(d, s) for s in splits if s != "test" for d in run_dirs
            if not RunFolder(d).has(RunFolder.metrics_name(s))]
    for i, (run_dir, split) in enumerate(todo, 1):
        if progress:
            _console().print(f"evaluating {Path(run_dir).name} on {split} ({i}/{len(todo)})",
                             highlight=False, markup=False)
        evaluate_run(Path(run_dir), data_dir, split=split)


def check_extra_splits(manifests: dict, splits: tuple[str, ...]) -> None:
    """--test-split random / both: every data set of the grid must have that split."""
    for name, manifest in manifests.items():
        have = manifest.get("extra_splits", {})
        lacking = [s for s in splits if s != "test" and s not in have]
        if lacking:
            raise ConfigError(f"--test-split: {name} has no {lacking[0]} split (only "
                              "kuairand_pure has one: its random-exposure log); leave the option "
                              f"out, or compare {name} separately")


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _record(grid: Grid, res: CompareResult, seconds: float, test: dict) -> CompareRecord:
    runs = tuple(RunEntry(run_id=o.run_id, status=o.status, role=o.role, error=o.error,
                          best_val_score=o.best_val_score, seconds=o.seconds,
                          dataset=o.cfg.data.dataset, model=o.cfg.model.name,
                          loss=o.cfg.loss.name, seed=o.cfg.train.seed,
                          run_dir=str(o.run_dir) if o.run_dir else None)
                 for o in res.outcomes)
    return CompareRecord(datasets=grid.datasets, models=grid.models, losses=grid.losses,
                         seeds=grid.seeds, loss_grid=grid.loss_grid, base=grid.base.to_dict(),
                         train_grid=grid.train_grid, tune_seeds=grid.tune_seeds,
                         seconds=seconds, runs=runs, test=test)


class _Live:
    """Live progress: runs done / running / failed, and the time left."""

    def __init__(self, total: int, enabled: bool) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.counts = {"done": 0, "reused": 0, "running": 0, "failed": 0}
        self.progress = Progress(TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), TextColumn("elapsed"),
                                 TimeElapsedColumn(),
                                 TextColumn("left"), TimeRemainingColumn(), disable=not enabled,
                                 console=Console(stderr=True))
        self.task = self.progress.add_task(self._text(), total=total)

    def _text(self) -> str:
        c = self.counts
        return (f"[green]{c['done']} trained[/] [cyan]{c['reused']} reused[/] "
                f"[yellow]{c['running']} running[/] [red]{c['failed']} failed[/]")

    def __call__(self, event: str, cfg, result: RunResult | None) -> None:
        if event == "start":
            self.counts["running"] += 1
        else:
            self.counts["running"] -= 1
            self.counts[result.status.value] += 1
            self.progress.advance(self.task)
            if result.status == Outcome.FAILED:
                from rich.markup import escape

                self.progress.console.print(f"[red]failed[/] {escape(str(result.run_id))}: "
                                            f"{escape(str(result.error))}", highlight=False)
        self.progress.update(self.task, description=self._text())

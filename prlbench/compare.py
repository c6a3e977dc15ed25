"""`prlbench compare`: run the grid (or reuse it), then write the statistics, tables and plots.

results/<experiment>/runs/<run-id>/   one folder per run (see prlbench.results)
results/<experiment>/tables/          auc.{md,tex}, logloss.{md,tex}, cells.csv, runs.csv,
                                      delong.csv
results/<experiment>/plots/           forest.{png,pdf}, validation.{png,pdf}
results/<experiment>/compare.json     the grid, each run's status and error, the settings
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from prlbench import results
from prlbench.errors import ConfigError
from prlbench.runner import Grid, Outcome, best_val_score, run_grid


@dataclass
class CompareResult:
    outcomes: list[Outcome]
    written: list[Path] = field(default_factory=list)
    markdown: str = ""
    warnings: list[str] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)  # an earlier report's files, now stale

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def missing(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "missing"]


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

    def __call__(self, event: str, cfg, result: dict | None) -> None:
        if event == "start":
            self.counts["running"] += 1
        else:
            self.counts["running"] -= 1
            self.counts[result["status"]] += 1
            self.progress.advance(self.task)
            if result["status"] == "failed":
                self.progress.console.print(f"[red]failed[/] {result['run_id']}: "
                                            f"{result['error']}", highlight=False)
        self.progress.update(self.task, description=self._text())


def compare(grid: Grid, *, executor, data_dir: Path, out: Path, formats: tuple[str, ...],
            train: bool = True, progress: bool = True, stats_options: dict | None = None
            ) -> CompareResult:
    grid.check()
    n_first = sum(len(grid.candidates(l)) for l in grid.losses) * len(grid.datasets) * len(
        grid.models)
    n_rest = len(grid.datasets) * len(grid.models) * len(grid.losses) * (len(grid.seeds) - 1)
    live = _Live(n_first + n_rest, progress and train)
    t0 = time.perf_counter()
    with live.progress:
        outcomes = run_grid(grid, executor=executor, data_dir=data_dir, out=out, train=train,
                            on_event=live)
    res = CompareResult(outcomes)
    done = [o.run_dir for o in outcomes if o.run_dir is not None and o.role == "table"]
    if not train and not done:
        raise ConfigError(f"--tables-only: none of the {len(outcomes)} runs of this grid has "
                          f"finished under {out}; run the same command without --tables-only "
                          "to train them (or pass the --out of an earlier compare)")
    if train:  # --tables-only leaves the record of the compare that trained the runs
        _write_record(grid, res, out, time.perf_counter() - t0)
    if done:
        _report(res, done, out, formats, stats_options or {}, _selection(grid))
    else:
        from prlbench.report import clear_report

        res.removed = clear_report(out)
    return res


def _selection(grid: Grid) -> dict:
    """loss -> {parameter: candidates} for every setting chosen on validation."""
    out = {}
    for loss in grid.losses:
        cands = grid.candidates(loss)
        if len(cands) > 1:
            out[loss] = {k: sorted({c[k] for c in cands}, key=str) for k in cands[0]
                         if len({c[k] for c in cands}) > 1}
    return {"seed": grid.seeds[0], "losses": out} if out else {}


def _report(res: CompareResult, run_dirs: list[Path], out: Path, formats: tuple[str, ...],
            stats_options: dict, selection: dict | None = None) -> None:
    from prlbench.report import analysis, plots, write_report
    from prlbench.report.markdown import to_markdown
    from prlbench.report.table import build_table

    runs = analysis.load_runs(run_dirs)
    summary = analysis.summarise(runs, **stats_options)
    summary.selection = selection or {}
    res.warnings = list(summary.warnings)
    res.written = write_report(summary, out, formats=formats)
    res.markdown = to_markdown(build_table(summary))
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots.forest_plot(summary, plot_dir / "forest")
    plots.validation_curves(runs, plot_dir / "validation")
    res.written += sorted(plot_dir.iterdir())


def _write_record(grid: Grid, res: CompareResult, out: Path, seconds: float) -> None:
    results.write_json(out / "compare.json", {
        "datasets": grid.datasets, "models": grid.models, "losses": grid.losses,
        "seeds": grid.seeds, "loss_grid": grid.loss_grid, "base": grid.base.to_dict(),
        "seconds": seconds,
        "runs": [{"run_id": o.run_id, "status": o.status, "role": o.role, "error": o.error,
                  "best_val_score": best_val_score(o.run_dir),
                  "seconds": o.seconds, "dataset": o.cfg.data.dataset, "model": o.cfg.model.name,
                  "loss": o.cfg.loss.name, "seed": o.cfg.train.seed,
                  "run_dir": str(o.run_dir) if o.run_dir else None} for o in res.outcomes],
    })

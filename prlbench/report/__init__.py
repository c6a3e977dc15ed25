"""Statistics, tables and plots of finished runs (the reporting layer of `prlbench compare`).

    runs = analysis.load_runs(run_dirs)            # one row per run
    summary = analysis.summarise(runs)             # every cell's statistics + how computed
    table = build_table(summary)                   # the one table model
    to_markdown(table), to_latex(table), to_csv(summary)
    write_report(summary, out)                     # out/tables/{auc,logloss}.{md,tex}, *.csv
"""

from __future__ import annotations

from pathlib import Path

from prlbench.metrics import TABLES
from prlbench.report.analysis import Summary, load_runs, summarise
from prlbench.report.csvout import delong_csv, runs_csv, to_csv
from prlbench.report.latex import to_latex
from prlbench.report.markdown import to_markdown
from prlbench.report.table import Table, build_table

FORMATS = ("md", "tex", "csv")
# Every file a report may write; one that this report did not write is removed, so that no table
# or plot of an earlier compare stays next to the new ones as if it were current.
TABLE_FILES = tuple(f"{t}.{ext}" for t in TABLES for ext in ("md", "tex")) + (
    "cells.csv", "runs.csv", "delong.csv")
PLOT_FILES = ("forest.png", "forest.pdf", "validation.png", "validation.pdf")

__all__ = ["FORMATS", "Summary", "Table", "build_table", "clear_report", "load_runs",
           "summarise", "to_csv", "to_latex", "to_markdown", "write_report"]


def write_report(summary: Summary, out_dir: Path, formats: tuple[str, ...] = FORMATS
                 ) -> list[Path]:
    """Write out_dir/tables/: auc.{md,tex} and logloss.{md,tex} (where the summary has those
    metrics, in the `formats` asked for), and always cells.csv, runs.csv and delong.csv, which
    the tables' captions refer to; each file atomically. Returns the paths."""
    from prlbench.errors import ConfigError
    from prlbench.experiment.store import Store
    from prlbench.fileio import atomic_write_bytes

    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ConfigError(f"unknown table format(s) {', '.join(sorted(unknown))}; valid: "
                          f"{', '.join(FORMATS)}")
    files: dict[str, str] = {}
    for kind in TABLES:
        table = build_table(summary, kind=kind)
        if not table.metrics:
            continue
        if "md" in formats:
            files[f"{kind}.md"] = to_markdown(table)
        if "tex" in formats:
            files[f"{kind}.tex"] = to_latex(table)
    # The captions cite cells.csv: the numbers behind the tables are written whatever `formats`.
    files["cells.csv"] = to_csv(summary)
    files["runs.csv"] = runs_csv(summary)
    if not summary.delong.empty:
        files["delong.csv"] = delong_csv(summary)
    written = []
    tables = Store(out_dir).tables_dir
    for name, text in files.items():
        atomic_write_bytes(tables / name, text.encode("utf-8"))
        written.append(tables / name)
    for name in set(TABLE_FILES) - set(files):
        (tables / name).unlink(missing_ok=True)
    return written


def clear_report(out_dir: Path) -> list[Path]:
    """Remove the tables and plots of an earlier report (when this one has nothing to show)."""
    from prlbench.experiment.store import Store

    store = Store(out_dir)
    gone = [store.tables_dir / n for n in TABLE_FILES] + [store.plots_dir / n for n in PLOT_FILES]
    gone = [p for p in gone if p.exists()]
    for p in gone:
        p.unlink()
    return gone

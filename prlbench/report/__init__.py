"""Statistics, tables and plots of finished runs (the reporting layer of `prlbench compare`).

    runs = analysis.load_runs(run_dirs)            # one row per run
    summary = analysis.summarise(runs)             # every cell's statistics + how computed
    table = build_table(summary)                   # the one table model
    to_markdown(table), to_latex(table), to_csv(summary)
    write_report(summary, out)                     # out/tables/: see write_tables
"""

from __future__ import annotations

import os
import shutil
import tempfile
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
# The tables of an extra evaluation split (compare --test-split both) carry its name:
# auc.test_random.md, cells.test_random.csv, forest.test_random.png.
SPLIT_SUFFIXES = ("", ".test_random")
TABLE_FILES = tuple(f"{t}{d}{x}.{ext}" for x in SPLIT_SUFFIXES for t in TABLES
                    for d in ("", "_detail") for ext in ("md", "tex")) + tuple(
    f"{name}{x}.csv" for x in SPLIT_SUFFIXES for name in ("cells", "runs", "delong", "sweep")) \
    + ("setup.md", "setup.tex", "references.bib")
PLOT_FILES = tuple(f"{p}{x}.{ext}" for x in SPLIT_SUFFIXES
                   for p in ("forest", "validation", "sweep") for ext in ("png", "pdf")) + tuple(
    f"{p}-wide{x}.pdf" for x in SPLIT_SUFFIXES for p in ("forest", "sweep"))

__all__ = ["FORMATS", "StagedReport", "Summary", "Table", "build_table", "clear_report",
           "load_runs", "summarise", "to_csv", "to_latex", "to_markdown", "write_report",
           "write_tables"]


def write_report(summary: Summary, out_dir: Path, formats: tuple[str, ...] = FORMATS, *,
                 cells: str = "std", protocol: dict | None = None) -> list[Path]:
    """Write out_dir/tables/ (write_tables), staged, then swapped in together (StagedReport).
    Returns the paths."""
    report = StagedReport(out_dir)
    with report as stage:
        write_tables(summary, stage.tables_dir, formats, cells=cells, protocol=protocol)
    return report.written


def split_suffix(split: str) -> str:
    """"" for the test split, ".test_random" for an extra evaluation split."""
    suffix = "" if split == "test" else f".{split}"
    if suffix not in SPLIT_SUFFIXES:
        raise ValueError(f"no report file names for the split {split!r}")
    return suffix


def write_tables(summary: Summary, tables: Path, formats: tuple[str, ...] = FORMATS, *,
                 cells: str = "std", protocol: dict | None = None) -> None:
    """Into the folder `tables`, in the `formats` asked for: auc.{md,tex} and logloss.{md,tex}
    in the paper layout (`cells`: what a cell shows beside its mean), auc_detail.{md,tex} and
    logloss_detail.{md,tex} in the long layout (the deltas, their CIs, the whole protocol in
    the Markdown caption), setup.{md,tex} (the experimental-setup paragraph, from the summary
    and `protocol`, compare.json's content) and references.bib (what setup.tex cites); and
    always cells.csv, runs.csv and delong.csv, the numbers behind the tables. The files of
    an extra evaluation split carry its name (auc.test_random.md); the setup is written with
    the test split's tables."""
    from prlbench.errors import ConfigError
    from prlbench.fileio import atomic_write_bytes

    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ConfigError(f"unknown table format(s) {', '.join(sorted(unknown))}; valid: "
                          f"{', '.join(FORMATS)}")
    files: dict[str, str] = {}
    suffix = split_suffix(summary.split)
    for kind in TABLES:
        table = build_table(summary, kind=kind, cells=cells)
        if not table.metrics:
            continue
        for layout, name in (("paper", kind), ("detail", f"{kind}_detail")):
            if "md" in formats:
                files[f"{name}{suffix}.md"] = to_markdown(table, layout=layout)
            if "tex" in formats:
                files[f"{name}{suffix}.tex"] = to_latex(table, layout=layout)
    if not suffix:
        from prlbench.report import setup

        if "md" in formats:
            files["setup.md"] = setup.setup_markdown(summary, protocol)
        if "tex" in formats:
            files["setup.tex"] = setup.setup_latex(summary, protocol)
            files["references.bib"] = setup.bibtex(
                setup.cited(setup.setup_text(summary, protocol)))
    # The captions cite cells.csv: the numbers behind the tables are written whatever `formats`.
    files[f"cells{suffix}.csv"] = to_csv(summary)
    files[f"runs{suffix}.csv"] = runs_csv(summary)
    if not summary.delong.empty:
        files[f"delong{suffix}.csv"] = delong_csv(summary)
    for name, text in files.items():
        atomic_write_bytes(Path(tables) / name, text.encode("utf-8"))


class StagedReport:
    """A report written whole or not at all. `with StagedReport(out) as stage:` yields a Store
    on a hidden folder inside `out` (same file system); write the report's files into its
    tables_dir / plots_dir. Only when the block ends without an error are they moved into
    out/tables and out/plots (renames, which need no disk space), and the report files that
    this report did not write removed there (no table or plot of an earlier compare stays next
    to the new ones as if it were current); `written` then lists them. On an error (a full
    disk, a damaged run file) the previous report stays as it was. The staging folder is
    removed either way."""

    SUBDIRS = (("tables", TABLE_FILES), ("plots", PLOT_FILES))

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.written: list[Path] = []

    def __enter__(self):
        from prlbench.store import Store

        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix=".report-", dir=self.out_dir))
        return Store(self.stage)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.written = self._swap_in()
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)

    def _swap_in(self) -> list[Path]:
        written = []
        for sub, known in self.SUBDIRS:
            staged = self.stage / sub
            if not staged.is_dir():  # this report has none of these (write_report: no plots)
                continue
            final = self.out_dir / sub
            final.mkdir(exist_ok=True)
            names = sorted(p.name for p in staged.iterdir())
            for name in names:
                os.replace(staged / name, final / name)
                written.append(final / name)
            for name in set(known) - set(names):
                (final / name).unlink(missing_ok=True)
        return written


def clear_report(out_dir: Path) -> list[Path]:
    """Remove the tables and plots of an earlier report (when this one has nothing to show)."""
    from prlbench.store import Store

    store = Store(out_dir)
    gone = [store.tables_dir / n for n in TABLE_FILES] + [store.plots_dir / n for n in PLOT_FILES]
    gone = [p for p in gone if p.exists()]
    for p in gone:
        p.unlink()
    return gone

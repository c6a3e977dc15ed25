"""The tables as a paper pastes them: each `\\input` into a standard two-column article
compiles with no error and no overfull box, at the body font or \\small, never scaled; the
setup paragraph compiles through bibtex with references.bib; the captions stay short; what
LaTeX would misprint is escaped. The compile tests run where pdflatex is installed (.ci/run
installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import make_tree

from prlbench.report import analysis, build_table, to_latex, to_markdown, write_report
from prlbench.report.latex import escape, text_pt
from prlbench.report.setup import REFERENCES, bibtex, cited, setup_text

HAS_TEX = shutil.which("pdflatex") is not None and shutil.which("bibtex") is not None
PROTOCOL = {"base": {"model": {"name": "mmoe", "preset": "small", "overrides": {}},
                     "train": {"epochs": 10, "batch_size": 2048, "lr": 0.001,
                               "weight_decay": 1e-6, "patience": 2, "precision": "fp32",
                               "init_bias": True, "embedding_optimizer": "adam"}},
            "tune_seeds": [1001, 1002]}
TABLES = ("auc", "auc_detail", "logloss", "logloss_detail")


def words(text: str) -> int:
    """A caption's length in words (whitespace-separated tokens)."""
    return len(text.split())


def compile_paper(tables: Path, name: str = "paper") -> str:
    """\\input every table of `tables` and setup.tex into a two-column A4 article with
    booktabs alone, run pdflatex, bibtex, pdflatex twice; assert no error, no overfull box,
    no undefined citation; returns the PDF's text ("" without pdftotext)."""
    inputs = "\n".join(f"\\input{{{t}.tex}}" for t in TABLES if (tables / f"{t}.tex").exists())
    (tables / f"{name}.tex").write_text(
        "\\documentclass[twocolumn,a4paper]{article}\n\\usepackage{booktabs}\n"
        f"\\begin{{document}}\n{inputs}\n\\input{{setup.tex}}\n"
        "\\bibliographystyle{plain}\n\\bibliography{references}\n\\end{document}\n")

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=tables, capture_output=True, text=True, timeout=120)

    first = run("pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex")
    assert first.returncode == 0, first.stdout[-3000:]
    bib = run("bibtex", name)
    assert bib.returncode == 0, bib.stdout
    assert "didn't find" not in bib.stdout and "Warning" not in bib.stdout, bib.stdout
    for _ in range(2):
        r = run("pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex")
        assert r.returncode == 0, r.stdout[-3000:]
    log = (tables / f"{name}.log").read_text(errors="replace")
    assert "Overfull" not in log, re.findall(r"Overfull.*\n.*", log)[:3]
    assert "undefined" not in log.lower(), re.findall(r".*undefined.*", log)[:3]
    for t in TABLES:
        path = tables / f"{t}.tex"
        if path.exists():
            tex = path.read_text()
            assert "\\resizebox" not in tex and "\\scalebox" not in tex
            # every float at the body font or \small, never smaller
            fonts = re.findall(r"\\centering\n(\\[a-z]+)", tex)
            assert set(fonts) <= {"\\small", "\\setlength", "\\caption"}, fonts
    if not shutil.which("pdftotext"):
        return ""
    out = run("pdftotext", f"{name}.pdf", "-")
    return " ".join(out.stdout.split())


def _summary(root: Path, **shape):
    runs = analysis.load_runs(make_tree(root, **shape))
    return analysis.summarise(runs, n_boot=300, test="ttest", two_level=False)


@pytest.fixture(scope="module")
def default_shape(tmp_path_factory):
    """The default compare's shape: one data set, MMoE, BCE / PWiseR / RankNet, 8 seeds."""
    return _summary(tmp_path_factory.mktemp("default"), datasets=("synthetic",),
                    models=("mmoe",), seeds=tuple(range(1, 9)))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """2 models x 3 data sets (one with a name full of LaTeX specials)."""
    return _summary(tmp_path_factory.mktemp("grid"),
                    datasets=("synthetic", "aliexpress_nl", "shop_#1&50%"),
                    models=("mmoe", "ple"), seeds=tuple(range(1, 7)))


def test_the_default_table_fits_one_column_with_a_short_caption(default_shape):
    table = build_table(default_shape)
    tex = to_latex(table)
    assert "\\begin{table}[t]" in tex and "\\begin{table*}" not in tex  # one column
    assert words(table.paper_caption) <= 60 < words(table.caption)
    md = to_markdown(table)
    assert "| Model" in md and "Δ vs" not in md  # the paper layout; deltas in auc_detail.md
    assert "Δ vs BCE" in to_markdown(table, layout="detail")


@pytest.mark.parametrize("cells", ["std", "mean"])
def test_two_data_sets_by_two_metrics_fit_one_column(tmp_path, cells):
    s = _summary(tmp_path, datasets=("aliexpress_nl", "aliexpress_fr"), models=("mmoe", "ple"),
                 seeds=tuple(range(1, 7)))
    tex = to_latex(build_table(s, metrics=("ctr_auc", "ctcvr_auc"), cells=cells))
    assert tex.count("\\begin{table}[t]") == 1 and "\\begin{table*}" not in tex
    assert "\\footnotesize" not in tex.split("\\begin{tabular}")[0]  # body font or \small


def test_a_grid_too_wide_for_the_page_is_split_never_shrunk(tmp_path):

    s = _summary(tmp_path, datasets=("aliexpress_nl", "aliexpress_fr", "aliexpress_es",
                                     "aliexpress_us", "aliccp"),
                 models=("mmoe",), seeds=tuple(range(1, 7)))
    table = build_table(s, cells="ci")
    tex = to_latex(table)
    parts = re.findall(r"\\begin\{table\*?\}", tex)
    assert len(parts) >= 2 and f"Part 1 of {len(parts)}" in tex
    assert "(all parts)" in tex  # one correction family over every part
    # each part's columns: its data sets, all five once, in order
    heads = re.findall(r"\\multicolumn\{3\}\{c\}\{([^}]*)\}", tex)
    assert heads == ["AliExpress-NL", "AliExpress-FR", "AliExpress-ES", "AliExpress-US",
                     "Ali-CCP"]
    assert text_pt("0.7234", "small") < text_pt("0.7234") < text_pt("0.7234 ± 0.0012")


@pytest.mark.skipif(not HAS_TEX, reason="no pdflatex / bibtex here")
@pytest.mark.slow
def test_the_tables_and_the_setup_compile_in_a_two_column_paper(default_shape, grid, tmp_path):
    for name, summary in (("default", default_shape), ("grid", grid)):
        for cells in ("std", "ci"):
            folder = tmp_path / f"{name}-{cells}"
            write_report(summary, folder, cells=cells, protocol=PROTOCOL)
            text = compile_paper(folder / "tables")
            if text:
                assert "Durmus" in text and "Holm" in text  # the bibliography, through bibtex
                # printed as it is (OT1 draws \_ as a rule, which pdftotext reads as a space)
                assert "#1&50%" in text or name == "default"
                assert "--equivalence" in text and "–equivalence" not in text


def test_the_setup_cites_only_what_references_bib_has(grid):
    text = setup_text(grid, PROTOCOL)
    keys = cited(text)
    assert keys and set(keys) <= set(REFERENCES)
    for needed in ("durmus2024pwiser", "ma2018mmoe", "tang2020ple", "holm1979simple",
                   "prlbench", "yan2014coupled"):
        assert needed in keys, needed
    bib = bibtex(keys)
    assert bib.count("@") == len(keys) and all(f"{{{k}," in bib for k in keys)
    for fact in ("Adam (learning rate 0.001, weight decay 1e-06), batch size 2048",
                 "patience of 2 epochs", "same 6 seeds (1–6)", "small preset"):
        assert fact in text, fact


def test_latex_specials_and_option_names_are_escaped():
    assert escape("shop_#1&50% --equivalence ~x ^y {z}") == (
        r"shop\_\#1\&50\% -{}-equivalence \textasciitilde{}x \textasciicircum{}y \{z\}")

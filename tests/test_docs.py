"""The docs that are generated from the code are current, and the repository's docs stand on
their own (no reference to notes outside it)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prlbench import docs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("page", sorted(docs.PAGES))
def test_generated_page_is_current(page):
    committed = (ROOT / "docs" / f"{page}.md").read_text()
    assert committed == docs.PAGES[page](), (
        f"docs/{page}.md is stale: run  python -m prlbench.docs {page} > docs/{page}.md")


def test_cli_page_lists_every_command_and_option():
    import typer

    from prlbench.cli import app

    text = docs.cli_markdown()
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        assert f"## prlbench {name}" in text
        for p in cmd.params:
            assert (f"`{p.opts[0]}`" if p.param_type_name == "option"
                    else f"`{p.name.upper()}`") in text, (name, p.name)


def test_results_format_documents_every_field_of_every_record():
    import dataclasses

    from prlbench import store

    text = docs.results_format_markdown()
    for cls in (store.RunRecord, store.Epoch, store.Failure, store.CompareRecord,
                store.RunEntry):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), (cls.__name__, f.name)
            assert f"| `{f.name}` |" in text, (cls.__name__, f.name)
    assert f"version **{store.SCHEMA}**" in text


def test_docs_module_runs_as_a_command():
    out = subprocess.run([sys.executable, "-m", "prlbench.docs", "results-format"],
                         capture_output=True, text=True, check=True)
    assert out.stdout == docs.results_format_markdown()
    bad = subprocess.run([sys.executable, "-m", "prlbench.docs", "nope"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def _texts():
    """The repository's own text files (git's view: tracked and not ignored)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in listed.splitlines():
        path = ROOT / name
        if path.suffix in (".md", ".py", ".toml", ".yaml", ".yml", ".cfg", ".txt", "") and \
                path.is_file() and not name.startswith("tests/"):
            yield path


def test_nothing_in_the_repository_cites_notes_outside_it():
    pattern = re.compile(r"METHOD\.md|DESIGN\.md|DATASETS\.md|\.\./shared")
    # .ci/run alone may name the samples folder beside the clone (it sets PRLBENCH_SAMPLES)
    found = [str(p.relative_to(ROOT)) for p in _texts()
             if p.relative_to(ROOT).as_posix() != ".ci/run"
             and pattern.search(p.read_text(errors="ignore"))]
    assert found == []


def test_readme_is_a_front_page_that_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    first = "\n".join(readme.splitlines()[:12])
    assert "prlbench compare" in first and 'python -m pytest -q' in first
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name != "README.md":
            assert f"docs/{page.name}" in readme or f"({page.name})" in (
                ROOT / "docs" / "README.md").read_text(), page.name


def test_every_relative_link_of_the_pages_reaches_a_file_the_repository_keeps():
    """A link to a file that is missing or git-ignored (a record left out of a commit) fails
    here, not in a reader's browser."""
    listed = set(subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.splitlines())
    if not listed:
        pytest.skip("not a git checkout")
    pages = [p for p in listed if p.endswith(".md") and (p == "README.md" or p.startswith(
        ("docs/", "results/")))]
    kept = listed | {str(Path(p).parent) for p in listed} | {
        str(q) for p in listed for q in Path(p).parents}
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", (ROOT / page).read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (Path(page).parent / target.split("#")[0]).as_posix()
            norm = str(Path(os.path.normpath(path)))
            if norm not in kept:
                broken.append(f"{page}: {target}")
    assert broken == []


def test_the_code_map_in_development_md_is_current():
    text, generated = (ROOT / "docs" / "development.md").read_text(), docs.code_map()
    start, end = text.find(docs.CODE_MAP_START), text.find(docs.CODE_MAP_END)
    assert 0 <= start < end, "docs/development.md lost its code map markers"
    assert text[start:end + len(docs.CODE_MAP_END)] + "\n" == generated, (
        "the code map in docs/development.md is stale: replace the block between its markers "
        "with the output of  python -m prlbench.docs code-map")
    # every module is in it, each with a docstring
    assert "(no docstring)" not in generated
    for path in (ROOT / "prlbench").rglob("*.py"):
        assert f"prlbench/{path.relative_to(ROOT / 'prlbench').as_posix()} " in generated


@pytest.mark.slow
def test_the_init_bias_figures_of_training_md_reproduce(tmp_path):
    """training.md's init-bias figures are produced by `python -m prlbench.docs init-bias`
    (dated, with the machine); rerun here, each agrees within 0.02 (CPUs differ in the last
    digits of a float sum, never by that much)."""
    text = (ROOT / "docs" / "training.md").read_text()
    start, end = text.find(docs.INIT_BIAS_START), text.find(docs.INIT_BIAS_END)
    assert 0 <= start < end, "docs/training.md lost its init-bias markers"
    block = text[start:end]
    shown = [float(x) for x in re.findall(r"\b0\.\d\d\b", block)]
    assert len(shown) == 4, block
    found = docs.init_bias_runs(tmp_path / "data", tmp_path / "out")
    measured = [*found[True], *found[False]]
    assert all(abs(a - b) <= 0.02 for a, b in zip(shown, measured)), (shown, measured)
    assert min(found[True]) > max(found[False])  # what the page says init_bias does

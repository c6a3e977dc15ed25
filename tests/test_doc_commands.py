"""Every `prlbench` command in a ```bash block of README.md and docs/*.md runs, as written but
shrunk (docs/development.md, "Documented commands run in the suite"), and does what the page
says: it succeeds, and every path it prints exists. A command marked in its page as needing
what the suite lacks (`# [needs a GPU]`, `# [needs the internet]`, `# [needs your files]`,
`# [needs a Ray cluster]`) is run too, and must fail with one clean line that says what is
missing, leaving nothing behind.

The substitution, applied to each command before it runs:
- `--seeds N` becomes `--seeds 2` (a list keeps its first two); a compare without `--seeds`
  gets `--seeds 2`; `--epochs N` becomes `--epochs 1`, and train / compare get `--epochs 1`;
  a local compare without `--jobs` gets `--jobs 1` (its runs in this process);
- the synthetic data set is generated once at 20,000 rows (`--rows 20000`); a variant
  name `synthetic[...]` gets `rows=20000`, a compare sweeping a knob gets `--rows 20000`, and
  `preprocess synthetic` gets `--rows 20000` (replacing any other);
- `results/runs/<run-id>` (or any example run folder) is the run the page trained last (one
  is trained first where the page has none); `...` in a command is left out;
- a ```yaml block right after `<!-- file: NAME -->` is written to NAME first.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
ROWS = "20000"
MARKS = ("a GPU", "the internet", "your files", "a Ray cluster")
_MARK = re.compile(r"#.*\[needs (" + "|".join(MARKS) + r")\]")
_FILE = re.compile(r"<!-- file: (\S+) -->\s*```yaml\n(.*?)```", re.S)
_KNOB_FLAGS = ("--noise-rate", "--click-rate", "--conversion-rate")


@dataclass(frozen=True)
class DocCommand:
    page: str
    line: int
    text: str  # as written, without the trailing comment
    needs: str  # "" or one of MARKS

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def fenced(text: str) -> list[tuple[str, int, list[str]]]:
    """The page's fenced code blocks: (language, line number of the first line, lines)."""
    blocks, lang, start, body = [], None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), i + 1, []
            else:
                blocks.append((lang, start, body))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def doc_commands(page: Path) -> list[DocCommand]:
    """The `prlbench` commands of a page's ```bash blocks, in order."""
    out = []
    for lang, first, lines in fenced(page.read_text()):
        if lang != "bash":
            continue
        for i, line in enumerate("\n".join(lines).replace("\\\n", " ").splitlines()):
            mark = _MARK.search(line)
            code = line.split(" #")[0].strip() if not line.strip().startswith("#") else ""
            for part in code.split("&&"):
                part = part.strip()
                if part.startswith("prlbench "):
                    out.append(DocCommand(str(page.relative_to(ROOT)), first + i, part,
                                          mark.group(1) if mark else ""))
    return out


def page_files(page: Path) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in _FILE.finditer(page.read_text())}


ALL = [c for p in PAGES for c in doc_commands(p)]
TIMES: list[tuple[float, str]] = []  # (seconds, command) of every command run
# Commands (as run, after shrinking) that succeeded on another page: the same command with the
# same data is not run twice; one that prints or depends on a page's own files always runs.
VERIFIED: dict[tuple[str, ...], str] = {}


def _set(args: list[str], flag: str, value: str, add: bool = True) -> list[str]:
    if flag in args:
        i = args.index(flag)
        return args[:i + 1] + [value] + args[i + 2:]
    return args + [flag, value] if add else args


def _shrink_dataset(name: str) -> str:
    if not name.startswith("synthetic[") or "rows=" in name:
        return name
    return name[:-1] + f",rows={ROWS}]"


def shrink(cmd: DocCommand, last_run: Path | None) -> list[str]:
    """The command's arguments (after `prlbench`), shrunk as the module doc says."""
    args = [a for a in shlex.split(cmd.text)[1:] if a != "..."]
    verb = args[0] if args else ""
    if verb in ("train", "compare"):
        args = _set(args, "--epochs", "1")
        if "--seeds" in args:
            i = args.index("--seeds")
            seeds = args[i + 1].split(",")
            args[i + 1] = "2" if len(seeds) == 1 else ",".join(seeds[:2])
        elif verb == "compare":
            args += ["--seeds", "2"]
    if verb == "compare" and "--jobs" not in args and "--executor" not in args:
        args += ["--jobs", "1"]  # the runs in this process: no worker start-up per compare
    if verb == "preprocess" and args[1:2] == ["synthetic"]:
        args = _set(args, "--rows", ROWS)
    for flag in ("--dataset", "--datasets"):
        if flag in args:
            i = args.index(flag)
            args[i + 1] = ",".join(_shrink_dataset(d) for d in re.split(r",(?![^\[]*\])",
                                                                        args[i + 1]))
    if verb == "preprocess" and len(args) > 1:
        args[1] = _shrink_dataset(args[1])
    if verb == "compare" and any(f in args for f in _KNOB_FLAGS) and "--rows" not in args:
        args += ["--rows", ROWS]
    if verb == "evaluate" and len(args) > 1 and "runs/" in args[1] and last_run is not None:
        args[1] = str(last_run)
    return args


def stated_files(page: Path) -> list[str]:
    """The files a page's plain code blocks say the default compare writes: each line that
    starts with results/compare/ (placeholders like <run-id> left out)."""
    found = []
    for lang, _, lines in fenced(page.read_text()):
        if lang:
            continue
        for line in lines:
            first = line.split(" ")[0]
            if first.startswith("results/compare/") and not re.search(r"[<{*]", first):
                found.append(first)
    return found


def printed_paths(output: str) -> list[Path]:
    """The paths a command says it wrote: "run folder: P", "wrote: P, Q", "run folders in P"."""
    paths = []
    for m in re.finditer(r"run folder: (\S.*?)\s*$", output, re.M):
        paths.append(m.group(1))
    for m in re.finditer(r"^wrote: (.*)$", output, re.M):
        paths += [p.strip() for p in m.group(1).split(", ")]
    for m in re.finditer(r"run folders in (\S+?);", output):
        paths.append(m.group(1))
    return [Path(p) for p in paths]


@pytest.fixture(scope="module", autouse=True)
def _report_times():
    """PRLBENCH_DOC_TIMES=FILE: each command's seconds, slowest first, written to FILE."""
    import os

    yield
    where = os.environ.get("PRLBENCH_DOC_TIMES")
    if where:
        Path(where).write_text("".join(f"{s:7.1f}  {c}\n" for s, c in sorted(TIMES,
                                                                            reverse=True)))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A shared data folder with the synthetic data set at 20,000 rows."""
    from prlbench.cli import app

    data = tmp_path_factory.mktemp("docdata")
    r = CliRunner().invoke(app, ["preprocess", "synthetic", "--rows", ROWS, "--data-dir",
                                 str(data)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return data


def test_every_page_has_commands_and_they_are_found():
    pages = {c.page for c in ALL}
    for name in ("README.md", "docs/compare.md", "docs/training.md", "docs/data.md",
                 "docs/cli.md"):
        assert name in pages, name
    assert len(ALL) >= 60
    marked = [c for c in ALL if c.needs]
    assert {c.needs for c in marked} >= {"a GPU", "the internet", "your files"}


def _offline(monkeypatch) -> None:
    """No address but loopback is ever contacted: a name lookup for any other host fails, as
    it does on a machine without the internet."""
    import socket

    real = socket.getaddrinfo

    def lookup(host, *args, **kwargs):
        if host not in ("localhost", "127.0.0.1", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: no network in the doc tests")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)


def _run_page(page: Path, workspace: Path, tmp_path: Path, monkeypatch) -> None:
    from prlbench.cli import app

    _offline(monkeypatch)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PRLBENCH_DATA_DIR", str(workspace))
    monkeypatch.setenv("PRLBENCH_OUT", str(cwd / "results"))
    monkeypatch.setenv("COLUMNS", "200")
    for name, body in page_files(page).items():
        (cwd / name).write_text(body)
    runner = CliRunner()
    last_run: Path | None = None
    cmds = doc_commands(page)
    # a page that makes tables from its own earlier runs runs every command itself
    own_runs = any("--tables-only" in c.text and "--out" not in c.text for c in cmds)
    for cmd in cmds:
        args = shrink(cmd, last_run)
        if args[0] == "evaluate" and last_run is None and not cmd.needs:
            first = runner.invoke(app, ["train", "--epochs", "1"], catch_exceptions=False)
            assert first.exit_code == 0, first.output
            last_run = _newest_run(cwd)
            args = shrink(cmd, last_run)
        key = tuple(args)
        if key in VERIFIED and args[0] == "compare" and not own_runs \
                and "--tables-only" not in args and "--out" not in args:
            continue  # the same grid, already run as written on another page
        locks, data = _locks(cwd), _contents(workspace)
        t0 = time.perf_counter()
        r = runner.invoke(app, args, catch_exceptions=False)
        TIMES.append((time.perf_counter() - t0, str(cmd)))
        out = r.output
        if cmd.needs:
            assert r.exit_code != 0, f"{cmd}: marked as needing {cmd.needs}, but it ran"
            assert "Traceback" not in out and "error:" in out, f"{cmd}:\n{out}"
            assert _locks(cwd) == locks, f"{cmd}: left a lock behind"
            assert _contents(workspace) == data, f"{cmd}: changed the data folder"
            if cmd.needs == "a Ray cluster":  # in prlbench's terms, not Ray's
                assert "--ray-address" in out and "`--address`" not in out, out
            continue
        assert r.exit_code == 0, f"{cmd}\n  ran as: prlbench {shlex.join(args)}\n{out}"
        for path in printed_paths(out):
            assert path.exists(), f"{cmd}: printed {path}, which does not exist\n{out}"
        VERIFIED[key] = str(cmd)
        if args[0] == "train":
            last_run = _newest_run(cwd) or last_run
    for path in stated_files(page):  # the files the page says its commands write
        assert (cwd / path).exists(), f"{page.name} says its commands write {path}; they did not"


def _newest_run(cwd: Path) -> Path | None:
    runs = [p for p in (cwd / "results" / "runs").glob("*") if p.is_dir()
            and not p.name.startswith(".") and not p.name.endswith(".partial")] \
        if (cwd / "results" / "runs").is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def _contents(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _locks(cwd: Path) -> set[str]:
    return {str(p.relative_to(cwd)) for p in cwd.rglob("*.lock")}


FAST_PAGES = ("docs/training.md", "docs/data.md")


@pytest.mark.slow
@pytest.mark.parametrize("page", [str(p.relative_to(ROOT)) for p in PAGES
                                  if doc_commands(p)])
def test_the_commands_of_a_page_run_as_documented(page, workspace, tmp_path, monkeypatch):
    _run_page(ROOT / page, workspace, tmp_path, monkeypatch)


def test_the_substitution_shrinks_seeds_epochs_and_rows():
    cmd = DocCommand("x", 1, 'prlbench compare --noise-rate 0,0.3 --seeds 10 --test bootstrap', "")
    assert shrink(cmd, None) == ["compare", "--noise-rate", "0,0.3", "--seeds", "2", "--test",
                                 "bootstrap", "--epochs", "1", "--jobs", "1", "--rows", ROWS]
    cmd = DocCommand("x", 1, 'prlbench train --dataset "synthetic[noise=0.5]" --seeds 8', "")
    assert shrink(cmd, None) == ["train", "--dataset", f"synthetic[noise=0.5,rows={ROWS}]",
                                 "--seeds", "2", "--epochs", "1"]
    assert "results/compare/tables/auc.tex" in stated_files(ROOT / "README.md")
    cmd = DocCommand("x", 1, "prlbench evaluate results/runs/<run-id>", "")
    assert shrink(cmd, Path("/r/x")) == ["evaluate", "/r/x"]
    assert printed_paths("best epoch 1; run folder: results/runs/synthetic[noise=0.5]-a\n"
                         "wrote: a/b.md, a/c.tex\n") == [
        Path("results/runs/synthetic[noise=0.5]-a"), Path("a/b.md"), Path("a/c.tex")]

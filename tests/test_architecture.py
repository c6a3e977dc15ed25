"""The shape of the code: the imports of prlbench/ form a tree (no cycle, lazy imports inside
functions included), no module imports another package's private names, the CLI stays a thin
skin, and only the store opens the files of a run folder."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "prlbench"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


MODULES = _modules()


def _owner(name: str) -> str:
    """The module that `name` (a module or a name inside one) lives in."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> list[tuple[str, str]]:
    """(imported module, imported name or "") of every prlbench import, at any depth."""
    out = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "prlbench":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append((full, "") if full in MODULES else (node.module, alias.name))
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.split(".")[0] == "prlbench"]
    return out


def _graph() -> dict[str, set[str]]:
    return {m: {_owner(t) for t, _ in _imports(m)} - {m} for m in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_prlbench_lazy_imports_included():
    graph = _graph()
    assert len(graph) > 40 and "prlbench.experiment.store" in graph["prlbench.engine.run"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def _package(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def test_no_private_name_is_imported_from_another_package():
    bad = []
    for m in MODULES:
        for target, name in _imports(m):
            owner = _owner(target)
            private = (name.startswith("_") and not name.startswith("__")) or any(
                p.startswith("_") and not p.startswith("__") for p in target.split("."))
            if private and _package(owner) != _package(m):
                bad.append(f"{m} imports {target}{'.' + name if name else ''}")
    assert bad == []


def test_cli_functions_are_short():
    tree = ast.parse((PKG / "cli.py").read_text())
    long = {f.name: f.end_lineno - f.lineno + 1 for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno + 1 > 60}
    assert long == {}


RUN_FILES = {"config.json", "run.json", "history.json", "metrics.json", "predictions.parquet",
             "best.pt", "state.pt", "failure.json", "ray.json", "compare.json"}


def test_only_the_store_names_the_files_of_a_run_folder():
    """A file name as a string of its own (a path being built) appears in store.py alone; the
    others say RunFolder.RECORD and go through the store's readers and writers."""
    found = []
    for m, path in MODULES.items():
        if m == "prlbench.experiment.store":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                found.append(f"{m}: {node.value!r}")
    assert found == []


def test_only_the_store_reads_json_records():
    users = {m for m in MODULES for target, name in _imports(m)
             if _owner(target) == "prlbench.fileio" and name in ("read_json", "write_json")}
    assert users == {"prlbench.experiment.store"}

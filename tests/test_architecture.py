"""The shape of the code: the imports of prlbench/ form a tree (no cycle, lazy imports inside
functions included) that follows the package order (LEVELS), no module imports another
package's private names or reaches another module's through an alias, the CLI stays a thin skin,
and only the store opens the files of a run folder."""

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
    assert len(graph) > 40 and "prlbench.store" in graph["prlbench.engine.run"]
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


# The package order, lowest first: a module imports modules of its own level or below, never
# above (docs/development.md). Each entry is a module or a package (with everything in it).
LEVELS = (
    ("prlbench", "prlbench.errors", "prlbench.fileio", "prlbench.signals", "prlbench.machine"),
    ("prlbench.registry", "prlbench.stats", "prlbench.specs"),
    ("prlbench.data", "prlbench.models", "prlbench.losses", "prlbench.metrics"),
    ("prlbench.config",),
    ("prlbench.store",),
    ("prlbench.report",),
    ("prlbench.engine",),
    ("prlbench.experiment",),
    ("prlbench.catalog", "prlbench.docs", "prlbench.cli", "prlbench.__main__"),
)


def _level(module: str) -> int:
    found = [i for i, names in enumerate(LEVELS) for n in names
             if module == n or (n != "prlbench" and module.startswith(n + "."))]
    assert found, f"{module} has no level in LEVELS: add it"
    return max(found)


def test_packages_import_only_their_level_or_below():
    up = [f"{m} (level {_level(m)}) imports {t} (level {_level(t)})"
          for m, targets in _graph().items() for t in targets if _level(t) > _level(m)]
    assert up == []
    assert _level("prlbench.engine.run") > _level("prlbench.store") > _level("prlbench.config")




def _reach_ins(module: str, source: str | None = None) -> set[tuple[str, str]]:
    """(aliased module, private name) of every `alias._name` in `module` (or in `source`),
    where alias is bound to another prlbench module (`import prlbench.x as alias`,
    `from prlbench import x`)."""
    tree = ast.parse(source if source is not None else MODULES[module].read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names
                            if a.asname and a.name in MODULES})
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names
                            if f"{node.module}.{a.name}" in MODULES})
    return {(aliases[n.value.id], n.attr) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id in aliases and aliases[n.value.id] != module
            and n.attr.startswith("_") and not n.attr.startswith("__")}


def test_no_private_name_is_reached_through_a_module_alias():
    # (engine/pack.py once drove engine/run.py's run life cycle this way; it now lives in
    # engine/session.py, public)
    found = {(m, target): name for m in MODULES for target, name in _reach_ins(m)}
    assert found == {}


def test_the_reach_in_finder_sees_an_alias():
    import textwrap
    code = textwrap.dedent("""
        from prlbench.engine import run as solo
        import prlbench.store as st
        solo._open_run(); st.Store; st._read(); x._hidden
    """)
    assert _reach_ins("prlbench.cli", code) == {("prlbench.engine.run", "_open_run"),
                                                ("prlbench.store", "_read")}


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
        if m == "prlbench.store":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in RUN_FILES:
                found.append(f"{m}: {node.value!r}")
    assert found == []


def test_only_the_store_reads_json_records():
    users = {m for m in MODULES for target, name in _imports(m)
             if _owner(target) == "prlbench.fileio" and name in ("read_json", "write_json")}
    assert users == {"prlbench.store"}

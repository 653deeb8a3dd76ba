"""The package's shape: small modules, no import cycles, deployed code apart from dev-only code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "refresh"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package that ``name`` imports, at any depth of the file (lazy imports too)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle worth reporting
    return {name: {t for t in deps if not t.startswith(name + ".")} for name, deps in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_over_the_size_limit():
    long = {str(path.relative_to(ROOT)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_resolves_relative_and_lazy_imports(tmp_path):
    module = tmp_path / "mod.py"
    module.write_text("from .sibling import thing\nfrom .. import other\nimport pkg.c\n"
                      "def late():\n    from pkg.a.deep import x\n", encoding="utf-8")
    known = {"pkg", "pkg.a", "pkg.a.mod", "pkg.a.sibling", "pkg.other", "pkg.c", "pkg.a.deep", "pkg.unused"}
    assert _imports("pkg.a.mod", module, known) == {"pkg.a.sibling", "pkg.other", "pkg", "pkg.c", "pkg.a.deep"}


def test_readme_architecture_table_names_every_module():
    """The README's "Architecture: where the code lives" table names every module of every folder."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    missing = {}
    for folder in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        name = folder.relative_to(ROOT).as_posix()
        rows = [line for line in readme if line.startswith(f"| `{name}` |")]
        assert len(rows) == 1, f"README has no architecture row for {name}"
        modules = sorted(p.stem if p.is_file() else p.name for p in folder.iterdir()
                         if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists())
        absent = [m for m in modules if f"`{m}`" not in rows[0]]
        if absent:
            missing[name] = absent
    assert missing == {}, f"modules the README's architecture table does not name: {missing}"


def _crossing(graph: dict[str, set[str]], source: str, allowed: tuple[str, ...], exempt: tuple[str, ...] = ()) -> (
        list[tuple[str, str]]):
    """Imports from modules under ``source`` to modules of the package outside ``allowed`` (prefixes)."""
    return sorted((a, b) for a, deps in graph.items() for b in deps
                  if a.startswith(source) and a not in exempt and not b.startswith(allowed))


def test_layers_follow_the_flow():
    """The core depends on nothing above it (only ``context``, the composition root, wires the stages
    together); the Power BI client only on the core; no stage on the surfaces; nothing deployed on the
    dev-only code (``python -m refresh local`` reaches it through ``__main__``, the one named exception)."""
    graph = _graph()
    assert _crossing(graph, "refresh.core", ("refresh.core",), exempt=("refresh.core.context",)) == []
    assert _crossing(graph, "refresh.powerbi", ("refresh.core", "refresh.powerbi")) == []
    for stage in ("refresh.core", "refresh.detection", "refresh.jobs", "refresh.monitoring", "refresh.powerbi"):
        assert [(a, b) for a, b in _crossing(graph, stage, ("refresh.core",)) if b.startswith("refresh.surfaces")] \
            == [], stage
    deployed = {a: deps for a, deps in graph.items() if not a.startswith("refresh.dev")}
    assert [(a, b) for a, deps in deployed.items() for b in deps if b.startswith("refresh.dev")] == \
        [("refresh.__main__", "refresh.dev.local.cli")]


def test_layer_check_sees_a_crossing():
    graph = {"refresh.core.a": {"refresh.jobs.b"}, "refresh.core.context": {"refresh.jobs.b"}, "refresh.jobs.b": set()}
    assert _crossing(graph, "refresh.core", ("refresh.core",), exempt=("refresh.core.context",)) == \
        [("refresh.core.a", "refresh.jobs.b")]

"""The package's imports run one way (docs/ARCHITECTURE.md, "Which way imports run"): nothing under
``models/`` or ``data/``, nor ``infer.py`` or ``api.py``, imports ``train/``, and no module reaches
itself through imports (function-level ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ramer

ROOT = Path(ramer.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The ramer modules ``path`` imports, anywhere in the file (``from a import b`` counts as ``a.b``
    when ``a.b`` is a module, else as ``a``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.startswith("ramer")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ramer") and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m in known}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def test_nothing_below_the_training_package_imports_it():
    graph = import_graph()
    below = [m for m in graph if m.startswith(("ramer.models", "ramer.data")) or m in ("ramer.infer", "ramer.api")]
    assert below, "no module found: the package layout changed"
    upward = {m: sorted(d for d in graph[m] if d.startswith("ramer.train")) for m in below}
    assert {m: d for m, d in upward.items() if d} == {}


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if d == m or d == "ramer":  # a package's own names, the top package's lazy `load`
                continue
            if state.get(d) == 1:
                cycles.append(path[path.index(d) :] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_module_imports_the_top_package():
    """``ramer/__init__.py`` stands above every module (its lazy ``load`` is ``ramer.api``'s): a module
    that imports one of its names (``from ramer import __version__``) reaches ``api`` from below; the
    version is ``ramer.version``'s."""
    graph = import_graph()
    assert sorted(m for m, deps in graph.items() if "ramer" in deps and m != "ramer") == []


def test_the_version_is_the_one_pyproject_states():
    """What a run's files record as the ramer that wrote them (``ramer.version``) is the version the
    package is built and installed as."""
    pyproject = ROOT.parents[1] / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("an installed ramer, not a checkout: no pyproject.toml")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    assert tomllib.loads(pyproject.read_text())["project"]["version"] == ramer.__version__

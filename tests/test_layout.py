"""The package's shape, checked like behaviour: the layers, no import cycles, small modules.

The layer contracts live in ``pyproject.toml`` (``[tool.importlinter]``); ``tox -e lint`` runs
them too. README, "How keystile is built", says what each layer is for.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "keystile"
#: The framework adapters: each only translates a request in and a decision out.
ADAPTERS = (
    "starlette.py",
    "fastapi.py",
    "wsgi.py",
    "flask.py",
    "flask_management.py",
    "flask_cli.py",
    "django/middleware.py",
    "django/admission.py",
    "django/csrf.py",
    "django/decorators.py",
    "django/views.py",
    "drf/__init__.py",
    "drf/authentication.py",
    "drf/errors.py",
    "drf/permissions.py",
    "drf/schema.py",
    "drf/users.py",
)
LINT_IMPORTS = (
    "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True))"
)
MAX_MODULE_LINES = 400
MAX_ADAPTER_LINES = 150


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_the_layer_contracts_hold() -> None:
    # In a child process: import-linter configures logging, which other tests capture.
    run = subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    imported = graph.find_modules_directly_imported_by(child)
                    work.append((child, iter(sorted(imported))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_counting_type_checking_imports() -> None:
    graph = grimp.build_graph("keystile", exclude_type_checking_imports=False)
    assert _cycles(graph) == []


def test_the_cycle_finder_sees_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_module_over_400_lines() -> None:
    too_long = {
        str(path.relative_to(PACKAGE)): _lines(path)
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.parts and _lines(path) > MAX_MODULE_LINES
    }
    assert too_long == {}


def test_adapters_stay_thin() -> None:
    too_long = {
        name: _lines(PACKAGE / name)
        for name in ADAPTERS
        if _lines(PACKAGE / name) >= MAX_ADAPTER_LINES
    }
    assert too_long == {}


def test_every_adapter_is_listed() -> None:
    # A new adapter module joins ADAPTERS (and the import-linter contract) on arrival.
    top_level = {
        name
        for name in os.listdir(PACKAGE)
        if name.endswith(".py") and name not in ("__init__.py", "__main__.py")
    }
    assert top_level == {name for name in ADAPTERS if "/" not in name}

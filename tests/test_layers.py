"""The layers stay layers: data flows io -> preprocess -> backends -> heads -> bundle ->
pipeline -> front-ends, and no module imports a layer above its own, nor takes part in
an import cycle. Imports under ``if TYPE_CHECKING:`` are annotations, not dependencies,
and are not counted; imports inside functions are (a lazy upward import is still one).

README's "Layout" shows the same picture; change both together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import edgemed

ROOT = Path(edgemed.__file__).resolve().parent
EXPORT = ROOT.parent / "export"

#: Lowest first. A module belongs to the first layer with a prefix matching its name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "edgemed._version",
            "edgemed._lazy",
            "edgemed._setup",
            "edgemed._scratch",
            "edgemed.errors",
            "edgemed.limits",
            "edgemed.settings",
            "edgemed.fsutil",
            "edgemed.signing",
            "edgemed.ids",
        ),
    ),
    ("io", ("edgemed.io",)),
    (
        "preprocess",
        ("edgemed.preprocess", "edgemed.postprocess", "edgemed.sliding_window", "edgemed.volume"),
    ),
    ("backends", ("edgemed.backends", "edgemed.cuda")),
    ("heads", ("edgemed.heads", "edgemed.result")),
    ("bundle", ("edgemed.bundle",)),
    (
        "pipeline",
        ("edgemed.pipeline", "edgemed.render", "edgemed.gallery", "edgemed.report_images"),
    ),
    (
        "front-ends",
        (
            "edgemed.cli",
            "edgemed.bench",
            "edgemed.doctor",
            "edgemed.export",
            "edgemed.serve",
            "edgemed.dicomnode",
            "edgemed.triton",
        ),
    ),
]


def _modules() -> dict[str, Path]:
    found = {}
    for base, prefix in ((ROOT, "edgemed"), (EXPORT, "edgemed.export")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


MODULES = _modules()


def _layer(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and README's Layout)")


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str | None:
    """The edgemed module an import names (a package's attribute import: the package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> tuple[set[str], set[str]]:
    """(module-level imports, all runtime imports) of edgemed modules, TYPE_CHECKING
    blocks left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    every: set[str] = set()

    def visit(nodes: list[ast.stmt], at_top: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse, at_top)
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                target = _resolve(name)
                if target is not None and target != module:
                    every.add(target)
                    if at_top:
                        top.add(target)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.AST):
                    nested_top = at_top and not isinstance(
                        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
                    )
                    if isinstance(node, ast.ClassDef):
                        nested_top = at_top
                    visit([n for n in inner if isinstance(n, ast.stmt)], nested_top)
                    for h in inner:
                        if isinstance(h, ast.ExceptHandler):
                            visit(h.body, at_top)

    visit(tree.body, True)
    return top, every


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for module in MODULES:
        if module != "edgemed":  # the package's own __init__ re-exports the public API
            _layer(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "edgemed"))
def test_no_upward_import(module):
    own = _layer(module)
    upward = sorted(t for t in GRAPH[module][1] if t != "edgemed" and _layer(t) > own)
    assert not upward, f"{module} ({LAYERS[own][0]}) imports higher layers: " + ", ".join(
        f"{t} ({LAYERS[_layer(t)][0]})" for t in upward
    )


def test_no_import_cycles():
    """No cycle among module-level imports (package __init__s count as modules)."""
    edges = {m: {t for t in GRAPH[m][0] if t != "edgemed"} for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            # A submodule importing its own package __init__ is how Python loads it.
            if m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            dfs(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_violation(tmp_path):
    """The test can fail: an upward import and a TYPE_CHECKING one, parsed the same way."""
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "from edgemed.pipeline import Pipeline\n"
        "if TYPE_CHECKING:\n    from edgemed.cli import main\n"
        "def f():\n    from edgemed.bundle import Bundle\n"
    )
    top, every = _imports("edgemed.io.fake", src)
    assert top == {"edgemed.pipeline"}
    assert every == {"edgemed.pipeline", "edgemed.bundle"}

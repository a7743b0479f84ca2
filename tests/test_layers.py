"""Layers of the package: who may import whom (from the source, with `ast`; no module is imported).

Every import statement counts, at module level or inside a function: a function-level import still
ties the two modules together, and a cycle through one only fails later, at the first call.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "infllava"


def _modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """{dotted name: (file, is a package's __init__)} of every module under root."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the modules of the package it imports}. `from pkg import name` is an import of the
    module pkg.name when there is one, else of pkg."""
    mods = _modules(root)
    top = root.name
    graph: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in mods.items():
        deps = set()
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking_block(block)
                       for n in ast.walk(block)}  # `if TYPE_CHECKING:` imports never run
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:
                    deps.add(f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target)
        graph[mod] = {d for d in deps if d in mods and d != mod and d.split(".")[0] == top}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_function_level_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "sub" / "c.py").write_text("def g():\n    import pkg.sub.a\n")
    (pkg / "d.py").write_text("from .sub.a import x\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.a"] == {"pkg.sub.b"} and graph["pkg.d"] == {"pkg.sub.a"}
    assert cycles(graph) == [["pkg.sub.a", "pkg.sub.b", "pkg.sub.c"]]


def test_no_import_cycle_in_the_package():
    assert cycles(import_graph()) == []


def test_the_shared_training_pieces_break_the_align_trainer_circle():
    graph = import_graph()
    assert "infllava.training.align" in graph["infllava.training.trainer"]  # the stage dispatch
    assert "infllava.training.trainer" not in graph["infllava.training.align"]
    for mod in ("infllava.training.align", "infllava.training.trainer"):
        assert {"infllava.training.schedule", "infllava.training.final"} <= graph[mod]


def test_evaluation_does_not_import_training():
    graph = import_graph()
    evaluation = [m for m in graph if m == "infllava.evaluation" or m.startswith("infllava.evaluation.")]
    assert len(evaluation) > 2
    for mod in evaluation:
        bad = sorted(d for d in graph[mod] if d == "infllava.training" or d.startswith("infllava.training."))
        assert not bad, f"{mod} imports {bad}"
    # the records both read come from the data layer, which depends on neither
    assert "infllava.data.records" in graph["infllava.evaluation.evaluate"]
    assert "infllava.data.records" in graph["infllava.training.data"]
    assert not {d for d in graph["infllava.data.records"] if d.startswith(("infllava.training", "infllava.evaluation"))}


def test_align_and_evaluate_import_in_a_fresh_interpreter():
    code = ("import sys, infllava.evaluation.evaluate, infllava.evaluation.hrvqa\n"
            "assert not [m for m in sys.modules if m.startswith('infllava.training')], 'evaluation loaded training'\n"
            "import infllava.training.align, infllava.training.trainer\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)

"""The benchmark's shape, read from its sources with ast: bench/'s modules import each
other without a circle, the groups of cases build on bench/runner.py, which imports
none of them, bench/cases.py (their registry) is imported by the entry point alone,
and bench/main.py, which bench/run runs, is the one entry point."""

from __future__ import annotations

import ast
from pathlib import Path

from bench.cases import GROUPS

BENCH = Path(__file__).resolve().parent.parent / "bench"
# Programs the benchmark launches by path in processes of their own (the client's
# launcher, Django's ready time inside a host's namespace), not modules of the package.
LAUNCHED = {"bench.measure", "bench.django_ready"}


def modules() -> dict[str, ast.Module]:
    return {f"bench.{path.stem}": ast.parse(path.read_text(), str(path))
            for path in sorted(BENCH.glob("*.py")) if path.stem != "__init__"}


def bench_imports(name: str, tree: ast.Module) -> set[str]:
    """The bench modules `name` imports anywhere in it: at the top, under
    TYPE_CHECKING or inside a function alike."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = (node.module or "") if not node.level else ".".join(filter(None, ("bench", node.module)))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    package = set(modules())
    return {module for module in found if module in package and module != name}


def graph() -> dict[str, set[str]]:
    return {name: bench_imports(name, tree) for name, tree in modules().items()}


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(edges[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += edges[module]
    return seen


def has_main_block(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
               for node in tree.body)


def group_modules() -> set[str]:
    return {function.__module__ for group in GROUPS for function in (group.run, group.notes) if function}


def test_the_import_graph_has_no_circle() -> None:
    edges = graph()
    circles = sorted(name for name in edges if name in reachable(edges, name))
    assert circles == []


def test_the_runner_imports_no_group_and_no_group_imports_the_registry() -> None:
    edges = graph()
    groups = group_modules()
    assert {"bench.baseline", "bench.ciflow", "bench.ansible_module", "bench.lifetimes"} <= groups <= set(edges)
    assert "bench.runner" not in groups and "bench.cases" not in groups
    assert reachable(edges, "bench.runner") & groups == set()
    assert all("bench.runner" in edges[module] for module in groups)
    assert sorted(name for name, imported in edges.items() if "bench.cases" in imported) == ["bench.main"]


def test_bench_main_is_the_one_entry_point() -> None:
    trees = modules()
    edges = graph()
    assert sorted(name for name, tree in trees.items() if has_main_block(tree)) == sorted({"bench.main", *LAUNCHED})
    for program in LAUNCHED:
        assert edges[program] == set() and not any(program in imported for imported in edges.values())
    assert "-m bench.main" in (BENCH / "run").read_text()

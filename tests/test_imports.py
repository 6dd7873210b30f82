"""The package's imports flow one way: no module of ``cai_lightning`` imports, directly or through others, a
module that imports it. Read from the source (``ast``), so imports inside functions count too: they tie the
files together just the same, only later."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cai_lightning"


def module_names(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__``)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _outside_type_checking(tree: ast.AST):
    """The nodes of ``tree``, less the bodies of ``if TYPE_CHECKING:``, which never run."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in (child, *_outside_type_checking(child)))
            continue
        yield node
        yield from _outside_type_checking(node)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> dict[str, list[str]]:
    """The package's modules that ``name`` imports, each with the names it takes from it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, list[str]] = {}
    for node in _outside_type_checking(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.setdefault(alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                if target in modules and target != name:
                    found.setdefault(target, []).append(alias.name)
    return found


def import_cycles(package: Path) -> list[list[str]]:
    """The strongly connected groups of more than one module in the import graph (Tarjan), each sorted."""
    modules = module_names(package)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return [
        [f"{a} -> {b}: {', '.join(graph[a][b]) or '(module)'}" for a in group for b in graph[a] if b in group]
        for group in cycles
    ]


def test_the_package_has_no_import_cycle():
    assert import_cycles(PACKAGE) == []


def test_a_cycle_is_found_and_named(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub.b import B\n")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import C\n\ndef f():\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("from ..a import f\nB = 1\n")
    (package / "c.py").write_text("import pkg.a\n")
    assert import_cycles(package) == [["pkg.a -> pkg.sub.b: b", "pkg.sub.b -> pkg.a: f"]]

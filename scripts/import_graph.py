"""Print the import graph's loops among bertcls modules; exit 1 if there is one.

Every `import bertcls...` and `from bertcls... import` counts, including those inside functions: an import deferred
to dodge a loop still closes it. Imports under `if TYPE_CHECKING:` never run and only name types for annotations, so
they are left out (as import-linter's `exclude_type_checking_imports` does); `--type-checking` counts them too.
`python scripts/import_graph.py [--edges] [--type-checking]`.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "bertcls"
ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(tree: ast.AST, type_checking: bool):
    """ast.walk, leaving out the body of `if TYPE_CHECKING:` unless `type_checking`."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if not type_checking and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imported_names(tree: ast.AST, module: str, is_package: bool, type_checking: bool = False) -> set[str]:
    """Every bertcls module name an import in `tree` mentions, whatever its depth."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in _walk(tree, type_checking):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            # `from bertcls import data` imports a module; `from bertcls.data import f` names an attribute.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def import_graph(root: Path = ROOT, type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> the bertcls modules it imports (the package's own `__init__` left out of the targets)."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(f, root): f for f in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for imported in imported_names(tree, name, path.name == "__init__.py", type_checking):
            # The innermost real module: `bertcls.data.load` -> `bertcls.data`.
            while imported not in modules and "." in imported:
                imported = imported.rpartition(".")[0]
            # Importing `bertcls.speed.toplayer` runs `bertcls.speed` too, but a package's __init__ that only
            # re-exports does not make a loop of its own: the edge goes to the module named.
            if imported in modules and imported != name and imported != PACKAGE:
                targets.add(imported)
        graph[name] = targets
    return graph


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted, largest first."""
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found, key=lambda c: (-len(c), c))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="also print every module's bertcls imports")
    parser.add_argument("--type-checking", action="store_true", help="count imports under `if TYPE_CHECKING:` too")
    args = parser.parse_args()
    graph = import_graph(type_checking=args.type_checking)
    if args.edges:
        for name in sorted(graph):
            print(f"{name} -> {', '.join(sorted(graph[name])) or '-'}")
    found = loops(graph)
    short = lambda m: m.removeprefix(PACKAGE + ".")  # noqa: E731
    for component in found:
        print("loop:", " ".join(short(m) for m in component))
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, {len(found)} loops")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

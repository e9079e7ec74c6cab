"""The import graph of crwatch's own modules, read from their source, and its loops.

Every `import` and `from ... import` counts wherever it stands: at the top of a module,
inside a function (a deferred import dodges a loop at run time but is still one), or
under `if TYPE_CHECKING`. `from package import name` is an import of package.name when
that is a module, else of package; relative imports are resolved against the importer.
Loops are the strongly connected components of the graph (Tarjan's algorithm).
"""
from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("tracker", "probes", "api")


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} (line {self.line})"


class ImportGraph:
    """Module -> the crwatch modules it imports, each with the line of its first import."""

    def __init__(self, edges: dict[str, dict[str, int]]):
        self.edges = edges

    @classmethod
    def read(cls, root: Path, packages: tuple[str, ...] = PACKAGES) -> ImportGraph:
        files = {_module_name(path.relative_to(root)): path
                 for package in packages for path in sorted((root / package).rglob("*.py"))}
        edges = {module: _imports_of(module, path, files) for module, path in files.items()}
        return cls(edges)

    def imports(self) -> list[Import]:
        return [Import(importer, imported, line) for importer, targets in sorted(self.edges.items())
                for imported, line in sorted(targets.items())]

    def loops(self) -> list[list[str]]:
        """Every set of modules that import one another in a loop, each sorted."""
        return sorted(sorted(component) for component in _strongly_connected(self.edges)
                      if len(component) > 1)

    def shortest_loop(self, through: str, within: set[str]) -> list[str]:
        """The fewest modules of `within` leading from `through` back to it, `through` first."""
        came_from: dict[str, str] = {}
        queue = deque([through])
        while queue:
            module = queue.popleft()
            for imported in sorted(self.edges[module]):
                if imported == through:
                    path = [module]
                    while path[-1] != through:
                        path.append(came_from[path[-1]])
                    return path[::-1]
                if imported in within and imported not in came_from:
                    came_from[imported] = module
                    queue.append(imported)
        return [through]

    def describe(self, loop: list[str]) -> str:
        """A loop as a reader fixes it: one cycle through it, then every import inside it."""
        members = set(loop)
        cycle = self.shortest_loop(loop[0], members)
        lines = [f"{len(loop)} modules import one another, e.g. "
                 + " -> ".join(cycle + [cycle[0]])]
        for module in loop:
            inside = sorted((imported, line) for imported, line in self.edges[module].items()
                            if imported in members)
            lines.append(f"    {module} -> "
                         + ", ".join(f"{imported} (line {line})" for imported, line in inside))
        return "\n".join(lines)


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports_of(module: str, path: Path, files: dict[str, Path]) -> dict[str, int]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            target = _owning_module(name, files)
            if target is not None and target != module:
                found[target] = min(found.get(target, node.lineno), node.lineno)
    return found


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[:len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _owning_module(name: str, files: dict[str, Path]) -> str | None:
    """The crwatch module `name` is or lives in (None: not one of ours)."""
    while name and name not in files:
        name = name.rpartition(".")[0]
    return name or None


def _strongly_connected(edges: dict[str, dict[str, int]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (the graph's depth must not meet the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, pending = work[-1]
            imported = next(pending, None)
            if imported is not None:
                if imported not in index:
                    index[imported] = low[imported] = len(index)
                    stack.append(imported)
                    on_stack.add(imported)
                    work.append((imported, iter(sorted(edges[imported]))))
                elif imported in on_stack:
                    low[module] = min(low[module], index[imported])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
            if low[module] == index[module]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == module:
                        break
                components.append(component)
    return components

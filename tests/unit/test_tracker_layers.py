"""tracker/ is layered as its package docstrings say: no module imports another in a loop,
none imports a layer above its own, and nothing imports api.

Imports are read from the source (every `import`, at module level or inside a
function), so an import deferred to dodge a loop counts as the loop it dodges.
"""
from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Bottom up; a module may import its own layer's modules and any layer below.
LAYERS = (
    ("tracker.procfs", "tracker.rules", "tracker.safe_text", "tracker.clock", "tracker.supervised",
     "tracker.criu.options"),
    ("tracker.criu",),
    ("tracker.environment", "tracker.holders"),
    ("tracker.context",),
    ("tracker.checks",),
    ("tracker.audit", "tracker.profiles"),
    ("tracker.verdict",),
    ("tracker.gate", "tracker.live"),
)


def modules() -> dict[str, Path]:
    found = {}
    for path in (REPO / "tracker").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(path: Path, package: str) -> set[str]:
    """Every module name `path` imports, relative imports resolved against `package`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    """module -> the tracker modules (and api names) it imports; `from package import
    module` imports the module, `from module import name` the module."""
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for imported in imports(path, package):
            if imported.startswith("api"):
                targets.add(imported)
            elif (target := resolve(imported)) and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def layer_of(name: str) -> int:
    for rank, members in enumerate(LAYERS):
        if any(name == member or name.startswith(member + ".") for member in members):
            return rank
    raise AssertionError(f"{name} is in no layer of this test: add it where it belongs")


def test_no_tracker_module_imports_another_in_a_loop():
    try:
        tuple(TopologicalSorter(graph()).static_order())
    except CycleError as error:
        # graphlib lists each module before the one that imports it
        raise AssertionError(f"import loop: {' imports '.join(reversed(error.args[1]))}") from None


def test_tracker_never_imports_api():
    found = {name: sorted(t for t in targets if t.startswith("api"))
             for name, targets in graph().items()}
    assert not {name: api for name, api in found.items() if api}


def test_no_tracker_module_imports_a_layer_above_its_own():
    upward = sorted(f"{name} -> {target}" for name, targets in graph().items()
                    for target in targets
                    if target.startswith("tracker") and layer_of(target) > layer_of(name))
    assert not upward


def test_the_checks_use_the_registry_and_catalogue_not_the_package_that_fills_them():
    # tracker.checks imports every check: a check importing it back is a loop.
    edges = graph()
    assert not [name for name, targets in edges.items()
                if name.startswith("tracker.checks.") and "tracker.checks" in targets]

"""The layout holds: no module imports another in a loop, each layer imports only those
below it, and every package says in its docstring what lives there.

Imports are read from the source (tests/support/imports.py), function-level ones too.
The layers: probes/ (the kernel side) stands alone; tracker/ is layered bottom up as its
package docstring says (TRACKER_LAYERS: the foundation of procfs, rules, text and time;
CRIU; the host; the audit's context; the checks; the audit; the verdict; on top the gate
and the live table) and never imports api/; of api's three products (service, cli, ci)
the CLI starts the service and runs CI, and neither of those imports the CLI.
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.support.imports import PACKAGES, Import, ImportGraph

REPO = Path(__file__).resolve().parents[2]

# tracker/, bottom up (its package docstring says why): a module imports its own layer and
# those below, never one above.
TRACKER_LAYERS = (
    ("tracker.procfs", "tracker.proc_locks", "tracker.rules", "tracker.safe_text", "tracker.clock",
     "tracker.supervised", "tracker.criu.options"),
    ("tracker.criu",),
    ("tracker.environment", "tracker.holders"),
    ("tracker.context",),
    ("tracker.checks",),
    ("tracker.audit", "tracker.profiles"),
    ("tracker.verdict",),
    ("tracker.gate", "tracker.live"),
)
LAYER_WHY = "a tracker module imports its own layer and those below, never one above"

# importer (a module or package) -> what it must never import, and why
MAY_NOT_IMPORT: dict[str, tuple[tuple[str, ...], str]] = {
    "tracker": (("api",), "the tracker is a library that the service, CLI and CI call"),
    "probes": (("tracker", "api"), "the kernel side and its wire format stand alone"),
    "api.service": (("api.cli", "api.ci"), "the service is started by the CLI, not built on it"),
    "api.ci": (("api.cli",), "CI gating calls the tracker and the service, not the CLI"),
}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def tracker_layer(module: str) -> int:
    """The layer of the most specific entry naming the module (tracker.criu.options sits
    below the rest of tracker.criu)."""
    matches = [(len(member), rank) for rank, members in enumerate(TRACKER_LAYERS)
               for member in members if within(module, member)]
    assert matches, f"{module} is in no layer of TRACKER_LAYERS: add it where it belongs"
    return max(matches)[1]


def layering_violations(graph: ImportGraph) -> list[str]:
    broken = []
    for edge in graph.imports():
        broken += [f"{edge}: {why}" for importer, (forbidden, why) in MAY_NOT_IMPORT.items()
                   if within(edge.importer, importer)
                   and any(within(edge.imported, package) for package in forbidden)]
        if (edge.importer.startswith("tracker.") and edge.imported.startswith("tracker.")
                and tracker_layer(edge.imported) > tracker_layer(edge.importer)):
            broken.append(f"{edge}: {LAYER_WHY}")
    return broken


def test_no_module_imports_another_in_a_loop():
    graph = ImportGraph.read(REPO)
    loops = graph.loops()
    assert not loops, "import loops:\n" + "\n".join(graph.describe(loop) for loop in loops)


def test_each_layer_imports_only_those_below_it():
    broken = layering_violations(ImportGraph.read(REPO))
    assert not broken, "imports against the layering:\n" + "\n".join(broken)


def test_tests_share_helpers_through_tests_support_only():
    reaching = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            reaching += [f"{path.relative_to(REPO)}:{node.lineno} imports {name}"
                         for name in names if name.startswith("tests.")
                         and name.rpartition(".")[2].startswith("test_")]
    assert not reaching, "helpers to move to tests/support:\n" + "\n".join(reaching)


def test_every_package_says_what_lives_there():
    silent = [str(init.relative_to(REPO)) for package in PACKAGES
              for init in sorted((REPO / package).rglob("__init__.py"))
              if not ast.get_docstring(ast.parse(init.read_text()))]
    assert not silent, f"packages without a docstring: {silent}"


# ---------------------------------------------------------------- the checks themselves

def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_loop_through_a_deferred_import_is_found_and_printed(tmp_path):
    write_package(tmp_path, {
        "tracker/__init__.py": "",
        "tracker/rules.py": "def catalogue():\n    from tracker.checks import MODULES\n",
        "tracker/checks/__init__.py": "from tracker.checks import files\nMODULES = (files,)\n",
        "tracker/checks/files.py": "from ..rules import catalogue\n",
        "tracker/alone.py": "import tracker.rules\n",
    })
    graph = ImportGraph.read(tmp_path, ("tracker",))
    assert graph.loops() == [["tracker.checks", "tracker.checks.files", "tracker.rules"]]
    assert graph.describe(graph.loops()[0]).splitlines() == [
        "3 modules import one another, e.g. "
        "tracker.checks -> tracker.checks.files -> tracker.rules -> tracker.checks",
        "    tracker.checks -> tracker.checks.files (line 1)",
        "    tracker.checks.files -> tracker.rules (line 1)",
        "    tracker.rules -> tracker.checks (line 2)",
    ]


def test_imports_against_the_layering_are_named_with_their_line(tmp_path):
    write_package(tmp_path, {
        "tracker/__init__.py": "", "tracker/procfs.py": "from tracker.audit import audit\n",
        "tracker/audit.py": "import os\n\n\ndef audit():\n    from tracker.live import table\n",
        "tracker/live/__init__.py": "", "tracker/live/table.py": "",
        "probes/__init__.py": "", "probes/reader.py": "from tracker.procfs import Proc\n",
        "api/__init__.py": "", "api/ci/__init__.py": "", "api/cli/__init__.py": "",
        "api/ci/run.py": "from api.cli import main\n",
    })
    assert layering_violations(ImportGraph.read(tmp_path)) == [
        f"api.ci.run -> api.cli (line 1): {MAY_NOT_IMPORT['api.ci'][1]}",
        f"probes.reader -> tracker.procfs (line 1): {MAY_NOT_IMPORT['probes'][1]}",
        f"tracker.audit -> tracker.live.table (line 5): {LAYER_WHY}",
        f"tracker.procfs -> tracker.audit (line 1): {LAYER_WHY}",
    ]
    assert str(Import("a", "b", 3)) == "a -> b (line 3)"

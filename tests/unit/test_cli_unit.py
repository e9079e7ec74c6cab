"""The command line's own rules: one table of exit statuses, the CI engine apart from the
command line, and commands that start without loading what they do not use."""
from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from api import exit_codes, render
from api.cli.main import COMMANDS, build_parser

API = Path(__file__).resolve().parents[2] / "api"


def modules(package: str) -> list[Path]:
    return sorted((API / package).glob("*.py"))


def test_a_run_exits_with_the_command_s_failure_else_with_its_tree_s_verdict():
    assert exit_codes.of_run(0, checkpointable=True) == exit_codes.OK == 0
    assert exit_codes.of_run(0, checkpointable=False) == exit_codes.NOT_CHECKPOINTABLE == 1
    assert exit_codes.of_run(3, checkpointable=True) == 3
    assert exit_codes.of_run(128 + 9, checkpointable=False) == 137


def test_every_outcome_of_the_gate_has_an_exit_status():
    assert set(exit_codes.GATE_OUTCOMES) == set(render.GATE_OUTCOMES)
    assert exit_codes.GATE_OUTCOMES["dump_failed"] == exit_codes.DUMP_FAILED == 3


def test_every_command_of_the_parser_has_a_module_with_run():
    commands = next(action for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    assert set(commands.choices) == set(COMMANDS)
    for module in COMMANDS.values():
        path = API.parent / (module.replace(".", "/") + ".py")
        functions = {node.name for node in ast.parse(path.read_text()).body
                     if isinstance(node, ast.FunctionDef)}
        assert "run" in functions, module


@pytest.mark.parametrize("path", modules("cli") + modules("ci"), ids=lambda path: path.name)
def test_no_module_but_the_table_writes_an_exit_status_as_a_number(path):
    if path.name == "exit_codes.py":
        return
    numbers = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) \
                and type(node.value.value) is int:
            numbers.append(f"line {node.lineno}: return {node.value.value}")
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.exit", "exit") \
                and any(isinstance(arg, ast.Constant) for arg in node.args):
            numbers.append(f"line {node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Name) and node.id.startswith("EXIT_"):
            numbers.append(f"line {node.lineno}: {node.id}")
    assert not numbers


@pytest.mark.parametrize("path", modules("ci"), ids=lambda path: path.name)
def test_the_ci_package_never_imports_the_command_line(path):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {name for name in imported if name == "api.cli" or name.startswith("api.cli.")}


@pytest.mark.parametrize("argv", [["rules"], ["check", "--json", str(os.getpid())]],
                         ids=lambda argv: argv[0])
def test_a_command_that_judges_starts_without_the_service_or_the_probes(argv):
    # Loading FastAPI and uvicorn alone costs more than a whole `crwatch check`.
    program = ("import sys\nfrom api.cli.main import main\nstatus = main(sys.argv[1:])\n"
               "heavy = sorted(name for name in sys.modules if name.split('.')[0] in "
               "('fastapi', 'starlette', 'pydantic', 'uvicorn', 'bcc') or name.startswith("
               "('api.service.app', 'api.ci', 'probes.loader', 'tracker.live')))\n"
               "print(status, heavy, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", program, *argv], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout  # the command did its work
    assert done.stderr.splitlines()[-1] in ("0 []", "1 []")


def test_a_check_starts_without_the_gate_the_service_s_settings_or_dataclasses():
    # Each is paid at every start: the gate and the settings belong to other commands, and
    # dataclasses loads inspect (ast, dis, tokenize) and builds each class from source text.
    program = ("import sys\nfrom api.cli.main import main\nstatus = main(sys.argv[1:])\n"
               "loaded = sorted(name for name in sys.modules if name.startswith(("
               "'tracker.gate', 'api.service.', 'api.cli.serve')) or name in "
               "('api.service', 'dataclasses', 'inspect'))\n"
               "print(status, loaded, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", program, "check", "--json", str(os.getpid())],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout
    assert done.stderr.splitlines()[-1] in ("0 []", "1 []")


def test_the_list_of_commands_loads_no_command():
    # main and the /proc/locks reader a check begins before its imports, nothing else
    program = ("import sys\nfrom api.cli.main import main\ntry:\n    main(['--help'])\n"
               "except SystemExit:\n    pass\n"
               "print(sorted(name for name in sys.modules if name.startswith(('api.', 'tracker', "
               "'probes')) and name not in ('api.cli', 'api.cli.main', 'api.exit_codes', "
               "'tracker', 'tracker.proc_locks')), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60)
    assert "check" in done.stdout and "serve" in done.stdout
    assert done.stderr.splitlines()[-1] == "[]"

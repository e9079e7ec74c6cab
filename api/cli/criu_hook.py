"""`crwatch criu-hook`: CRIU's action script that rechecks the tree at `pre-dump`.

CRIU runs an action script by its path, without arguments, so the hook is also
installed as its own command, `crwatch-criu-hook`:

    criu dump -t PID -D DIR --action-script "$(command -v crwatch-criu-hook)"

At `pre-dump` (just before CRIU seizes the tree) it freezes the tree, rechecks
it and judges it by the options CRIU was actually given and by that CRIU's
version. When the tree is not checkpointable it prints crwatch's reasons and
exits 1, and CRIU aborts the dump ("Pre dump script failed"). Every other
action passes.
"""
from __future__ import annotations

import os
import sys

from api import exit_codes
from api.render import gate_text
from tracker.checks.catalogue import catalogue
from tracker.criu.options import given_options
from tracker.criu.runner import probe_criu
from tracker.gate.recheck import GateError, GateRequest, gate
from tracker.procfs import ProcessGone
from tracker.profiles import profile


def main() -> int:
    """The `crwatch-criu-hook` command. It takes no arguments: CRIU says what it dumps
    in the environment (CRTOOLS_SCRIPT_ACTION, CRTOOLS_INIT_PID), and which options it was
    given on its own command line, read from its /proc."""
    action = os.environ.get("CRTOOLS_SCRIPT_ACTION")
    if action is None:
        print("crwatch criu-hook: this is CRIU's action script; give its path to CRIU:\n"
              '  criu dump -t PID -D DIR --action-script "$(command -v crwatch-criu-hook)"',
              file=sys.stderr)
        return exit_codes.USAGE
    if action != "pre-dump":
        return exit_codes.OK
    try:
        pid = int(os.environ["CRTOOLS_INIT_PID"])
    except (KeyError, ValueError):
        print("crwatch criu-hook: CRIU did not say which tree it dumps (CRTOOLS_INIT_PID)",
              file=sys.stderr)
        return exit_codes.ABORT_DUMP
    criu_pid = os.getppid()
    criu = probe_criu(f"/proc/{criu_pid}/exe")
    chosen = profile("criu", criu.version if criu else None)
    allow = criu_options(_cmdline(criu_pid))
    try:
        # The tree is released before this returns, and CRIU seizes it right after.
        document = gate(GateRequest(pid, tree=True, allow=tuple(allow)), chosen)
    except ProcessGone:
        print(f"crwatch criu-hook: no process with pid {pid}", file=sys.stderr)
        return exit_codes.ABORT_DUMP
    except GateError as error:  # pid 1, or a tree holding crwatch
        print(f"crwatch criu-hook: {error}", file=sys.stderr)
        return exit_codes.ABORT_DUMP
    if document["checkpointable"]:
        print(f"crwatch: pid {pid} is checkpointable ({chosen.label}); CRIU may go on",
              file=sys.stderr)
        return exit_codes.OK
    print(gate_text(document), file=sys.stderr)
    return exit_codes.ABORT_DUMP


def criu_options(argv: list[str]) -> list[str]:
    """The options of CRIU's command line that crwatch's rules name, as `--allow` values."""
    return given_options(argv, {rule.option for rule in catalogue() if rule.option})


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return [word.decode(errors="replace") for word in cmdline.read().split(b"\0") if word]
    except OSError:
        return []


def run(args) -> int:
    """`crwatch criu-hook`: the same as `crwatch-criu-hook` (its parser takes no arguments)."""
    return main()

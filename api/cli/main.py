"""`crwatch`: the parser of its command line, and the dispatch to the module of each command.

Each command's module is imported only when that command runs, by name from
COMMANDS: `crwatch check` starts without loading FastAPI, uvicorn, the probes, the
gate or the service's settings. Each module adds its command's arguments
(`add_arguments(parser)`) and runs it (`run(args)`); a run builds the arguments of
its own command alone, and `crwatch --help` lists the others by their summary.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Iterable

from api import exit_codes
from tracker import proc_locks

# Each command's module: its `run(args)` does the command and returns its exit status.
COMMANDS = {"check": "api.cli.check", "rules": "api.cli.rules", "env": "api.cli.env",
            "watch": "api.cli.watch", "gate": "api.cli.gate", "criu-hook": "api.cli.criu_hook",
            "run": "api.cli.run", "serve": "api.cli.serve"}

# The module whose `add_arguments(parser)` adds each command's arguments: the command's
# own, but for serve (its module loads the service as it is imported) and criu-hook, which
# has none (CRIU passes the action and the pid in the environment).
ARGUMENTS = {"check": "api.cli.check", "rules": "api.cli.rules", "env": "api.cli.env",
             "watch": "api.cli.watch", "gate": "api.cli.gate", "run": "api.cli.run",
             "serve": "api.cli.serve_arguments"}

SUMMARIES = {
    "check": "audit processes and print their verdicts",
    "rules": "list the rule catalogue",
    "env": "show the dumper's environment verdicts depend on (capabilities, network lock, "
           "CRIU features, kernel)",
    "watch": "stream nocr/cr transitions as NDJSON (needs root)",
    "gate": "freeze the tree, recheck it, judge, thaw; optionally dump it with CRIU (needs root)",
    "criu-hook": "CRIU's --action-script: recheck at pre-dump, abort the dump if the tree is not "
                 "checkpointable (installed as crwatch-criu-hook)",
    "run": "run a command and judge its whole process tree, for CI (root, or a running service)",
    "serve": "run the service: probes, REST API (needs root)",
}


def build_parser(with_arguments: Iterable[str] = tuple(SUMMARIES)) -> argparse.ArgumentParser:
    """The parser of every command, with the arguments of those in `with_arguments` (all of
    them by default); the others are there by name and summary."""
    parser = argparse.ArgumentParser(
        prog="crwatch", description="Can this process be checkpointed right now, and if not, why?")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in SUMMARIES.items():
        subparser = commands.add_parser(name, help=summary)
        if name in ARGUMENTS and name in with_arguments:
            importlib.import_module(ARGUMENTS[name]).add_arguments(subparser)
    return parser


def _named(argv: list[str]) -> tuple[str, ...]:
    """The command argv names, its first word that is not an option (none for --help)."""
    first = next((word for word in argv if not word.startswith("-")), None)
    return () if first is None else (first,)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    named = _named(argv)
    if named == ("check",):
        # With --holders its audits read /proc/locks, whose first reader in a while waits
        # about 10 ms in the kernel, longer than a small process's audit: begun now, the
        # wait overlaps the imports of the checks. Nor does a check need the cycle
        # collector, which its imports alone would set off some 40 times (check.run says
        # why).
        if "--holders" in argv:
            proc_locks.read_ahead()
        gc.disable()
    args = build_parser(named).parse_args(argv)
    try:
        return importlib.import_module(COMMANDS[args.command]).run(args)
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
    except BrokenPipeError:
        # the reader went away (crwatch ... | head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())

"""`crwatch`: the parser of its command line, and the dispatch to the module of each command.

Each command's module is imported only when that command runs, by name from
COMMANDS: `crwatch check` starts without loading FastAPI, uvicorn or the probes.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from api import exit_codes
from api.cli import arguments
from api.service.settings import (
    DEFAULT_DB,
    DEFAULT_DUMP_ROOT,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_SOCKET,
    LOCAL_VARIABLE,
    SOCKET_VARIABLE,
)
from tracker.criu.facts_cache import REFRESH_VARIABLE
from tracker.gate.freeze import DEFAULT_WATCHDOG_S

# Each command's module: its `run(args)` does the command and returns its exit status.
COMMANDS = {"check": "api.cli.check", "rules": "api.cli.rules", "env": "api.cli.env",
            "watch": "api.cli.watch", "gate": "api.cli.gate", "criu-hook": "api.cli.criu_hook",
            "run": "api.cli.run", "serve": "api.cli.serve"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crwatch", description="Can this process be checkpointed right now, and if not, why?")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (_check, _rules, _env, _watch, _gate, _criu_hook, _run, _serve):
        add_command(commands)
    return parser


def _check(commands) -> None:
    check = commands.add_parser("check", help="audit processes and print their verdicts")
    check.add_argument("pids", nargs="+", type=arguments.pid, metavar="PID")
    arguments.add_scope_arguments(
        check, "judge each pid's own findings, without its descendants (a checkpoint takes "
               "them too: `criu dump -t PID` dumps the tree)")
    check.add_argument("--json", action="store_true",
                       help="print verdict documents (crwatch.verdict/1)")
    check.add_argument("--allow", action="append", default=[], metavar="OPTION",
                       help="a CRIU option the dump may use (repeatable), "
                            "e.g. --allow=--tcp-established")
    check.add_argument("--holders", action="store_true",
                       help="name the processes outside the tree that hold the other end of "
                            "its pipes and sockets (reads every fd of the host; no verdict "
                            "depends on them)")
    check.add_argument("--local", action="store_true",
                       help="audit here rather than ask the crwatch service running on "
                            f"{DEFAULT_SOCKET} (or ${SOCKET_VARIABLE}), whose answers say "
                            f'"answered_by": "service"; the same as {LOCAL_VARIABLE}=1')
    arguments.add_profile_arguments(check)


def _rules(commands) -> None:
    rules = commands.add_parser("rules", help="list the rule catalogue")
    rules.add_argument("--json", action="store_true")
    arguments.add_profile_arguments(rules)


def _env(commands) -> None:
    env = commands.add_parser("env", help="show the dumper's environment verdicts depend on "
                                          "(capabilities, network lock, CRIU features, kernel)")
    env.add_argument("--json", action="store_true",
                     help="print the environment document (crwatch.environment/1)")
    env.add_argument("--refresh", action="store_true",
                     help=f"ask CRIU again for its features rather than believe what an earlier "
                          f"run kept (the same as {REFRESH_VARIABLE}=1 for any command)")


def _watch(commands) -> None:
    watch = commands.add_parser("watch", help="stream nocr/cr transitions as NDJSON (needs root)")
    arguments.add_profile_arguments(watch)
    # Prints the exact BPF program and cflags that would be loaded (for debugging the probes).
    watch.add_argument("--print-bpf", action="store_true", help=argparse.SUPPRESS)


def _gate(commands) -> None:
    gate = commands.add_parser(
        "gate", help="freeze the tree, recheck it, judge, thaw; optionally dump it with CRIU "
                     "(needs root)")
    gate.add_argument("pid", type=arguments.pid, metavar="PID")
    arguments.add_scope_arguments(
        gate, "recheck the pid alone, without its descendants (not with --dump: CRIU dumps "
              "the whole tree)")
    gate.add_argument("--allow", action="append", default=[], metavar="OPTION",
                      help="a CRIU option the dump may use (repeatable)")
    gate.add_argument("--dump", metavar="DIR",
                      help="when the gate passes, dump the tree into DIR with the real CRIU, "
                           "with exactly the options the verdict requires")
    gate.add_argument("--no-leave-running", dest="leave_running", action="store_false",
                      help="let CRIU end the tree after the dump, as plain `criu dump` does "
                           "(default: --leave-running)")
    gate.add_argument("--watchdog", type=arguments.seconds, default=DEFAULT_WATCHDOG_S,
                      metavar="SECONDS",
                      help=f"the longest the tree may stay frozen for the recheck "
                           f"(default {DEFAULT_WATCHDOG_S:g})")
    gate.add_argument("--json", action="store_true",
                      help="print the gate document (crwatch.gate/1)")
    gate.add_argument("--local", action="store_true",
                      help="run the gate here even if a crwatch service answers (no drift report)")
    gate.add_argument("--service", metavar="URL",
                      help="the service to run the gate (default: $CRWATCH_URL, else "
                           f"http://{DEFAULT_HOST}:{DEFAULT_PORT} when it answers)")
    gate.add_argument("--criu", metavar="PATH", help="the CRIU to dump with, when the gate "
                      "runs here (default: "
                      "$CRWATCH_CRIU, else the one scripts/setup.sh provides, else criu on PATH)")
    # Stays frozen this long after the recheck: exercises the watchdog and crash tests.
    gate.add_argument("--hold", type=arguments.seconds, default=0.0, help=argparse.SUPPRESS)
    arguments.add_profile_arguments(gate)


def _criu_hook(commands) -> None:
    commands.add_parser(
        "criu-hook", help="CRIU's --action-script: recheck at pre-dump, abort the dump if the "
                          "tree is not checkpointable (installed as crwatch-criu-hook)")


def _run(commands) -> None:
    run = commands.add_parser(
        "run", help="run a command and judge its whole process tree, for CI (root, or a "
                    "running service)",
        description="Exit status: the command's own when it fails; else 1 when a process of "
                    "its tree was non-checkpointable beyond the allowed options; else 0.")
    run.add_argument("--allow", action="append", default=[], metavar="OPTION",
                     help="a CRIU option the checkpoint may use (repeatable)")
    run.add_argument("--junit", metavar="FILE", help="write a JUnit XML report (a test case "
                                                    "per process)")
    run.add_argument("--json", metavar="FILE", help="write the report (crwatch.run/1)")
    run.add_argument("--at-end", action="store_true",
                     help="judge only what still runs when the command ends, not transient states")
    run.add_argument("--at-signal", type=arguments.signal_number, metavar="SIGNAL",
                     help="judge the tree each time crwatch gets this signal (the command "
                          "finds crwatch's pid in $CRWATCH_PID), e.g. USR1")
    run.add_argument("--at-file", metavar="PATH",
                     help="judge the tree each time the workload creates or touches PATH")
    run.add_argument("--degraded-ok", action="store_true",
                     help="without root or a service, judge by periodic audits instead of "
                          "refusing")
    run.add_argument("--interval", type=arguments.seconds, default=0.5, metavar="SECONDS",
                     help="how often to audit when degraded (default 0.5)")
    run.add_argument("--service", metavar="URL",
                     help="the service whose events to use (default: $CRWATCH_URL, else "
                          f"http://{DEFAULT_HOST}:{DEFAULT_PORT} when it answers)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    arguments.add_profile_arguments(run)


def _serve(commands) -> None:
    serve = commands.add_parser("serve", help="run the service: probes, REST API (needs root)")
    serve.add_argument("--host", default=DEFAULT_HOST,
                       help=f"address to listen on (default {DEFAULT_HOST}; others need --token)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    serve.add_argument("--token", help="callers must send `Authorization: Bearer TOKEN` "
                                       "(default: $CRWATCH_TOKEN)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also accept requests whose Host header names NAME (repeatable; "
                            "by default only the bound address, 127.0.0.1, ::1 and localhost: "
                            "other names are refused against DNS rebinding)")
    serve.add_argument("--db", type=Path, default=DEFAULT_DB,
                       help=f"the history database (default {DEFAULT_DB})")
    serve.add_argument("--retention-days", type=float, default=30.0,
                       help="history older than this is dropped (default 30)")
    serve.add_argument("--criu", metavar="PATH", help="the CRIU for gates' dumps (default: "
                       "$CRWATCH_CRIU, else the one scripts/setup.sh provides, else criu on PATH)")
    serve.add_argument("--dump-root", type=Path, default=DEFAULT_DUMP_ROOT, metavar="DIR",
                       help="a gate's dump.directory must be inside it, `..` and symlinks "
                            f"resolved (default {DEFAULT_DUMP_ROOT})")
    serve.add_argument("--socket", type=arguments.socket_path, default=DEFAULT_SOCKET,
                       metavar="PATH",
                       help="also listen on this unix socket, where `crwatch check` asks "
                            f"first (default for root: {DEFAULT_SOCKET}; `none`: only TCP); "
                            "callers are known by their uid, as on loopback")
    serve.add_argument("--no-probes", action="store_true",
                       help="do not attach the eBPF probes: answer from audits alone")
    arguments.add_profile_arguments(serve)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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

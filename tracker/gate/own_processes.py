"""crwatch's own processes, which the gate must never freeze.

A frozen crwatch cannot thaw what it froze: the service (or `crwatch gate`) would sit
frozen until the helper's watchdog, and a frozen helper could never thaw at all. So the
gate refuses, before anything is frozen, pid 1 (init: its tree is every process, and a
held init holds the host), the process running the gate, and any tree that contains a
crwatch process: `crwatch serve`, another `crwatch gate`, the CRIU hook, a freezer
helper. Those are known by their command line (`crwatch SUBCOMMAND`, `freeze_helper.py`,
which the gate runs by path or through standalone.py's loader)
and only when they run as root, as crwatch's freezing ones must: another user cannot make
a tree ungateable by naming a process of theirs "crwatch".
"""
from __future__ import annotations

import os
from pathlib import Path

from tracker.procfs import DEFAULT_PROC_ROOT, AccessDenied, Proc, ProcessGone

INIT = 1
COMMANDS = {"crwatch", "crwatch-criu-hook"}
HELPER = "freeze_helper.py"


def role(pid: int, proc_root: Path = DEFAULT_PROC_ROOT) -> str | None:
    """What crwatch process this is ("crwatch serve", "crwatch's freezer helper"), or None."""
    process = Proc(pid, proc_root)
    try:
        found = _role_in(process.read("cmdline").split("\0"))
        if found is None or process.status.get("Uid", "").split()[1:2] != ["0"]:  # euid
            return None
    except (ProcessGone, AccessDenied):
        return None
    return found


def _role_in(argv: list[str]) -> str | None:
    words = [word for word in argv if word]
    if words and os.path.basename(words[0]).startswith("python"):
        words = _after_interpreter(words[1:])
    if not words:
        return None
    program = os.path.basename(words[0])
    if program == HELPER:
        return "crwatch's freezer helper"
    if program in COMMANDS:
        subcommand = next((word for word in words[1:] if not word.startswith("-")), None)
        return f"{program} {subcommand}" if subcommand and program == "crwatch" else program
    return None


def _after_interpreter(words: list[str]) -> list[str]:
    """The script and its arguments, past the interpreter's own options (-I, -S, -u ...).
    With -c, the program the code's first argument names (standalone.py's loader)."""
    for index, word in enumerate(words):
        if not word.startswith("-"):
            return words[index:]
        if word == "-c":
            return words[index + 2:]
        if word == "-m" and index + 1 < len(words):
            module = words[index + 1]
            return (["crwatch", *words[index + 2:]] if module in ("api.cli", "api.cli.main")
                    else [module, *words[index + 2:]])
    return []


def crwatch_within(pids: list[int], own: dict[int, str],
                   proc_root: Path = DEFAULT_PROC_ROOT) -> tuple[int, str] | None:
    """The first of `pids` that is crwatch's (`own`: pids known to be, with their roles)."""
    for pid in pids:
        found = own.get(pid) or role(pid, proc_root)
        if found:
            return pid, found
    return None


def refusal(pid: int, tree_pids: list[int], own: dict[int, str],
            proc_root: Path = DEFAULT_PROC_ROOT) -> str | None:
    """Why the gate must not freeze `pid` (with `tree_pids`, the pid first), or None."""
    if pid == INIT:
        return ("pid 1 is init: freezing it would hold the whole host (and its tree is every "
                "process, crwatch included); the gate refuses it")
    found = crwatch_within(tree_pids, own, proc_root)
    if found is None:
        return None
    inside, what = found
    if inside == pid:
        return (f"pid {pid} is crwatch itself ({what}): the gate never freezes the crwatch "
                f"that must thaw it")
    return (f"the tree of pid {pid} contains crwatch itself: pid {inside} ({what}); the gate "
            f"never freezes the crwatch that must thaw it (gate a tree without it, or the "
            f"pid alone: --only, tree=false)")

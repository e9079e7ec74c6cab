"""The exit status of every crwatch command, in one table.

Scripts and CI jobs branch on these numbers, and the README's command reference
documents them: they never change meaning. Several names share a number where
commands share a convention (1 is "no" to the question a command answers).
argparse exits USAGE by itself on arguments it cannot parse.
"""
from __future__ import annotations

import signal

# check: every process is checkpointable; gate: passed (and CRIU dumped, with --dump);
# run: the command succeeded and its tree stayed checkpointable; criu-hook: CRIU may go on;
# rules, env, watch, serve: done.
OK = 0
# check: a process is not checkpointable; gate: refused, CRIU was not run; run: a process
# of the tree was non-checkpointable beyond the allowed options.
NOT_CHECKPOINTABLE = 1
# criu-hook: CRIU must abort the dump (the tree is not checkpointable, or cannot be
# rechecked); CRIU stops on any status but 0 ("Pre dump script failed").
ABORT_DUMP = 1
# watch: the eBPF probes could not be loaded.
PROBES_FAILED = 1
# A usage error: arguments, a pid that does not exist or cannot be checkpointed as given
# (a thread id, init), a command that needs root, settings serve refuses, an environment
# that cannot be read; run: a report that cannot be written (said before the command
# runs, or at the end, where the run would have exited OK).
USAGE = 2
# gate: the gate passed but CRIU's dump failed.
DUMP_FAILED = 3
# run: the command cannot be found or started, as a shell says it.
COMMAND_NOT_FOUND = 127
# Any command stopped by SIGINT (Ctrl-C), as a shell reports a process killed by it.
INTERRUPTED = 128 + signal.SIGINT

# gate: the exit status of each outcome of the gate document (crwatch.gate/1).
GATE_OUTCOMES = {"passed": OK, "dumped": OK, "refused": NOT_CHECKPOINTABLE,
                 "dump_failed": DUMP_FAILED}


def of_run(command_status: int, checkpointable: bool) -> int:
    """run: the command's own status when it failed (128 + N when killed by signal N),
    else whether its tree stayed checkpointable."""
    if command_status:  # a shell's failure: nonzero
        return command_status
    return OK if checkpointable else NOT_CHECKPOINTABLE

"""A process tree built from a fuzzer composition (bench/fuzz_criu.py).

    python -m bench.fuzz_subject SPEC.json     (ready pipe fd in $CRWATCH_FUZZ_READY_FD)

The spec names a tree of processes, each with the generators it applies, in
order (bench/fuzz/__init__.py gives the stages). Every process reports to its
parent on a pipe of its own once everything of its subtree is built, and then
holds; the root reports the whole tree's pids on the fuzzer's ready pipe, as
one JSON line, and closes it. Nothing changes after that line. A generator
the kernel refuses makes the report say so ("refused"), and the fuzzer counts
the composition as skipped.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bench.fuzz import load
from bench.fuzz.runtime import Context, close_inherited, hold, host_pid


class Refused(Exception):
    """A generator could not make its state on this kernel."""


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    ready_fd = int(os.environ.pop("CRWATCH_FUZZ_READY_FD"))
    build(spec, 0, ready_fd)


def build(spec: dict, index: int, report_fd: int) -> None:
    """Build process `index` (this process) and its subtree, report, and hold."""
    generators = load()
    process = spec["processes"][index]
    ctx = Context(index, Path(spec["scratch"]), report_fd)
    report = {"pids": {str(index): host_pid()}, "others": ctx.others, "sysv": ctx.sysv,
              "refused": None}
    try:
        run_stage(ctx, process, "build", generators)
        children = fork_children(spec, index, ctx)
        for child_index, pid, pipe in children:
            merge(report, read_report(pipe, child_index, pid))
            for step in stage_of(spec["processes"][child_index], "by_parent", generators):
                apply(step, generators, ctx, pid)
        for hook in ctx.after_children:
            run_hook(hook, [pid for _, pid, _ in children])
        for stage in ("privileges", "threads"):
            run_stage(ctx, process, stage, generators)
        final = stage_of(process, "final", generators)
        if final:
            apply(final[0], generators, ctx, report=lambda: send(report_fd, report))
            hold()
    except Refused as refused:
        report["refused"] = str(refused)
    send(report_fd, report)
    hold()


def stage_of(process: dict, stage: str, generators: dict) -> list[dict]:
    return [step for step in process["generators"] if generators[step["name"]].stage == stage]


def run_stage(ctx: Context, process: dict, stage: str, generators: dict) -> None:
    for step in stage_of(process, stage, generators):
        apply(step, generators, ctx)


def apply(step: dict, generators: dict, ctx: Context, *args, **extra) -> None:
    try:
        generators[step["name"]].build(ctx, *args, **step.get("params", {}), **extra)
    except Refused:
        raise
    except Exception as error:  # the kernel's refusal, whatever form it takes
        raise Refused(f"{step['name']}: {type(error).__name__}: {error}") from None


def run_hook(hook, children: list[int]) -> None:
    """A generator's step once the children are built (a refusal like its own)."""
    try:
        hook(children)
    except Exception as error:
        raise Refused(f"{getattr(hook, '__qualname__', 'hook').split('.')[0]}: "
                      f"{type(error).__name__}: {error}") from None


def fork_children(spec: dict, index: int, ctx: Context) -> list[tuple[int, int, int]]:
    """Fork each child of this process; each builds its own subtree and reports on a pipe."""
    children = []
    for child_index, child in enumerate(spec["processes"]):
        if child.get("parent") != index:
            continue
        ctx.child_number = len(children)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            for _, _, sibling_pipe in children:   # an older sibling's report pipe
                os.close(sibling_pipe)
            os.close(read_end)
            os.close(ctx.report_fd)
            try:
                for hook in ctx.in_children:
                    hook()
                if not child.get("inherit", True):
                    close_inherited(ctx.shared_fds | {write_end})
            except Exception as error:
                send(write_end, {"pids": {str(child_index): host_pid()}, "others": [],
                                 "sysv": [], "refused": f"fork: {error}"})
                hold()
            build(spec, child_index, write_end)
            os._exit(0)
        os.close(write_end)
        children.append((child_index, pid, read_end))
    return children


def read_report(pipe: int, index: int, pid: int) -> dict:
    with os.fdopen(pipe, "rb") as reports:
        line = reports.readline()
    if not line:
        raise Refused(f"process {index} (pid {pid}) died before reporting")
    return json.loads(line)


def merge(report: dict, child: dict) -> None:
    report["pids"].update(child["pids"])
    for key in ("others", "sysv"):
        report[key].extend(child[key])
    if child["refused"] and not report["refused"]:
        raise Refused(child["refused"])


def send(fd: int, report: dict) -> None:
    os.write(fd, (json.dumps(report) + "\n").encode())
    os.close(fd)


if __name__ == "__main__":
    main()

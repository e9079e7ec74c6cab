"""The dumper itself: what CRIU refuses before it looks at any process.

CRIU's check_caps() (cr-check.c) runs first in every command: without
CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in its effective set it stops, and
when not running as root it stops unless given `--unprivileged`. These are
facts about the dumper's environment (tracker.environment), reported once per
dump, on the tree's root.
"""
from __future__ import annotations

from typing import Iterator

from tracker.context import AuditContext
from tracker.procfs import Proc
from tracker.rules import BLOCKER, OPTION, Finding, Rule

RULES = (
    Rule("dumper.no_checkpoint_capability", "The dumper has neither CAP_CHECKPOINT_RESTORE nor "
         "CAP_SYS_ADMIN", BLOCKER,
         "run the dumper with CAP_CHECKPOINT_RESTORE (e.g. `setcap cap_checkpoint_restore+eip` "
         "on criu) or as root with CAP_SYS_ADMIN",
         criu_message="CRIU needs to have the CAP_SYS_ADMIN or the CAP_CHECKPOINT_RESTORE "
                      "capability"),
    Rule("dumper.unprivileged", "The dumper does not run as root", OPTION,
         "dump with --unprivileged (CRIU then skips what needs root, e.g. other users' "
         "processes and network namespaces it does not own)",
         option="--unprivileged", criu_message="Running as non-root requires '--unprivileged'"),
)


def check_process(ctx: AuditContext, proc: Proc) -> Iterator[Finding]:
    if proc.pid != ctx.root_pid:
        return
    environment = ctx.environment
    if not environment.can_checkpoint:
        yield Finding("dumper.no_checkpoint_capability",
                      f"pid {proc.pid}: the dumper's effective capabilities "
                      f"({environment.credentials.effective.hex}) lack both "
                      "CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN", proc.pid,
                      environment_fact="the dumper lacks CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN")
    elif environment.unprivileged:
        yield Finding("dumper.unprivileged",
                      f"pid {proc.pid}: the dumper runs as uid {environment.credentials.euid}, "
                      "not root", proc.pid,
                      environment_fact=f"the dumper's euid is {environment.credentials.euid}")

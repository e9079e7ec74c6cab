"""`crwatch env [--json]`: the dumper's environment, the facts verdicts depend on."""
from __future__ import annotations

import argparse
import os
import sys

from api import exit_codes
from tracker import environment
from tracker.criu.facts_cache import REFRESH_VARIABLE
from tracker.safe_text import json_text, visible_all

LOCK_NEEDS = {"iptables": "no option needed", "nftables": "needs --network-lock nftables",
              "none": "no lock works: install iptables, or lock it yourself and use "
                      "--network-lock skip"}

FACTS_FROM = {"cache": "  (features kept from an earlier run: --refresh asks CRIU again)",
              "criu": "  (features asked of CRIU now)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the environment document (crwatch.environment/1)")
    parser.add_argument("--refresh", action="store_true",
                        help=f"ask CRIU again for its features rather than believe what an earlier "
                             f"run kept (the same as {REFRESH_VARIABLE}=1 for any command)")


def run(args) -> int:
    if args.refresh:    # CRIU is found and asked below: neither believes a kept answer
        os.environ[REFRESH_VARIABLE] = "1"
    try:
        facts = environment.current()
    except (OSError, ValueError) as error:  # /proc/self/status unreadable or unexpected
        print(f"crwatch: cannot read the dumper's environment: {error}", file=sys.stderr)
        return exit_codes.USAGE
    if args.json:
        print(json_text(facts.to_json(), indent=2))
    else:
        print(environment_text(facts))
    return exit_codes.OK


def _capability_summary(capabilities: environment.Capabilities) -> str:
    """The shorter of the two lists: what the set lacks, or the little it holds."""
    missing, held = capabilities.missing(), capabilities.names()
    if len(held) < len(missing):
        return f"holds only: {', '.join(held) or 'nothing'}"
    return f"lacks: {', '.join(missing) or 'nothing'}"


def environment_text(facts: environment.Environment) -> str:
    document = visible_all(facts.to_json())  # paths come from PATH and /proc
    dumper, criu, lock = document["dumper"], document["criu"], document["network_lock"]
    capabilities = dumper["capabilities"]
    lines = [
        f"kernel        {document['kernel']}",
        f"dumper        uid {dumper['uid']} gid {dumper['gid']} euid {dumper['euid']}"
        + ("  (not root: CRIU needs --unprivileged)" if dumper["unprivileged"] else ""),
    ]
    for name in ("effective", "permitted", "bounding"):
        lines.append(f"  {name:<11} {capabilities[name]['hex']}  "
                     f"{_capability_summary(getattr(facts.credentials, name))}")
    lines.append("  " + ("can checkpoint (CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN)"
                         if dumper["can_checkpoint"] else
                         "CANNOT checkpoint: neither CAP_CHECKPOINT_RESTORE nor CAP_SYS_ADMIN"))
    lines.append("  " + ("CAP_SYS_RESOURCE: processes under other ids can be dumped"
                         if dumper["sys_resource"] else
                         f"{facts.sys_resource_fact()}: processes under other uids or gids "
                         "cannot be dumped"))
    lines.append(f"criu          {criu['version'] or 'not found'}"
                 + (f" at {criu['path']}" if criu["path"] else "")
                 + FACTS_FROM.get(facts.criu_facts_from, ""))
    for name, present in {**criu["features"], **criu["libraries"]}.items():
        lines.append(f"  {name:<22} {'yes' if present else 'no'}")
    lines.append("network lock  (CRIU's default is iptables)")
    for tool, where in lock["tools"].items():
        lines.append(f"  {tool:<18} {where or 'not on PATH'}")
    for label, what in (("TCP connections", "connections"), ("own netns", "namespace")):
        lines.append(f"  {label:<18} {lock[what]} ({LOCK_NEEDS[lock[what]]})")
    return "\n".join(lines)

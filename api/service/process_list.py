"""GET /processes: one page of the process list, judged and filtered, from the rows
ProcessRows keeps (state.py), so a request only filters.

Each row holds its process's own verdict under every profile; the verdict of the
tree rooted at each row is made from those of its members (tree_rows.py), and the
state the probes track is shown for the row's identity only.
"""
from __future__ import annotations

from api.service.tree_rows import Member, TreeVerdict, tree_verdicts
from tracker.profiles import Profile
from tracker.safe_text import unicode_text

LIST_SCHEMA = "crwatch.processes/1"


def process_list(rows: list[dict], judged_by: Profile, *,
                 tracked: dict[int, tuple[float, str]], dumper_namespaces: dict[str, str],
                 checked_at: str, verdict_is: str | None = None,
                 tree_verdict_is: str | None = None, comm: str | None = None,
                 cgroup: str | None = None, offset: int = 0, limit: int = 100) -> dict:
    """The rows that pass the filters, one page of them. `tracked`: pid: (start time,
    state) of what the probes mark; `dumper_namespaces`: where CRIU would run."""
    trees = _tree_verdicts(rows, judged_by, dumper_namespaces)
    page = []
    for row in rows:
        judged = row["judged"][judged_by.name]  # every profile is judged in the row
        tree = trees[row["pid"]]
        if ((verdict_is is not None and judged[0] != verdict_is)
                or (tree_verdict_is is not None and tree.verdict != tree_verdict_is)
                # matched as JSON shows them (bytes that are not UTF-8 as the text \xNN)
                or (comm is not None and comm not in unicode_text(row["comm"]))
                or (cgroup is not None and cgroup not in unicode_text(row["cgroup"]))):
            continue
        state = tracked.get(row["pid"])
        page.append({"pid": row["pid"], "ppid": row["ppid"], "start_time": row["start_time"],
                     "comm": row["comm"], "cgroup": row["cgroup"], "verdict": judged[0],
                     "required_options": judged[1], "checkpointable": judged[2],
                     "codes": row["codes"],
                     "tracked": state[1] if state and state[0] == row["start_time"] else None,
                     "tree_verdict": tree.verdict, "tree_checkpointable": tree.checkpointable,
                     "tree_required_options": tree.options, "tree_size": tree.size,
                     "tree_nested_namespace": tree.nested})
    return {"schema": LIST_SCHEMA, "profile": judged_by.name, "total": len(page),
            "offset": offset, "limit": limit, "processes": page[offset:offset + limit],
            "checked_at": checked_at}


def _tree_verdicts(rows: list[dict], judged_by: Profile,
                   dumper_namespaces: dict[str, str]) -> dict[int, TreeVerdict]:
    """pid: the verdict of the tree rooted there, from the rows."""
    members = [Member(row["pid"], row["ppid"], *row["judged"][judged_by.name][:2],
                      namespaces=row["namespaces"]) for row in rows]
    return tree_verdicts(members, dumper_namespaces)

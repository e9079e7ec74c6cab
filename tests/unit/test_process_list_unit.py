"""One page of the process list (api/service/process_list.py) from fixture rows: filters
on a row's own verdict, its tree's, its command and cgroup as JSON shows them; `total`
counts every match, the page is cut after; the probes' state only for the row's identity.
(The same through the service with real processes: test_service.py, test_dashboard.py.)"""
from __future__ import annotations

from api.service.process_list import process_list
from tracker.profiles import profile

CRIU = profile("criu", (4, 2, 1))


def row(pid: int, ppid: int, verdict: str = "ok", *, comm: str = "sleep",
        cgroup: str = "/user.slice", start_time: float = 100.0) -> dict:
    options = ["--tcp-established"] if verdict == "needs_options" else []
    return {"pid": pid, "ppid": ppid, "start_time": start_time, "comm": comm,
            "cgroup": cgroup, "namespaces": {}, "codes": [],
            "judged": {"criu": (verdict, options, verdict == "ok")}}


ROWS = [row(10, 1), row(11, 10, "needs_options", comm="nginx"),
        row(12, 10, comm="b\udcffad", cgroup="/system.slice/web.service"),
        row(20, 1, "blocked", comm="nginx")]


def listed(**filters) -> dict:
    return process_list(ROWS, CRIU, tracked={}, dumper_namespaces={}, checked_at="now",
                        **filters)


def pids(document: dict) -> list[int]:
    return [entry["pid"] for entry in document["processes"]]


def test_rows_are_filtered_by_their_own_verdict_and_by_their_trees():
    assert pids(listed(verdict_is="ok")) == [10, 12]
    assert pids(listed(tree_verdict_is="needs_options")) == [10, 11]
    assert pids(listed(tree_verdict_is="blocked")) == [20]
    tree = listed()["processes"][0]
    assert (tree["tree_verdict"], tree["tree_required_options"], tree["tree_size"]) == (
        "needs_options", ["--tcp-established"], 3)


def test_names_are_matched_as_json_shows_them():
    assert pids(listed(comm="nginx")) == [11, 20]
    assert pids(listed(comm="\\xff")) == [12]  # a byte that is not UTF-8, as its text
    assert pids(listed(cgroup="web.service")) == [12]


def test_total_counts_every_match_and_the_page_is_cut_after():
    document = listed(offset=1, limit=2)
    assert (document["total"], pids(document)) == (4, [11, 12])
    assert (document["schema"], document["profile"], document["checked_at"]) == (
        "crwatch.processes/1", "criu", "now")


def test_the_probes_state_is_shown_only_for_the_rows_identity():
    document = process_list(ROWS, CRIU, tracked={10: (100.0, "nocr"), 11: (99.0, "nocr")},
                            dumper_namespaces={}, checked_at="now")
    assert [entry["tracked"] for entry in document["processes"]] == ["nocr", None, None, None]

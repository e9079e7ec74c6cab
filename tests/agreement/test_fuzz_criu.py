"""The differential fuzzer (bench/fuzz_criu.py): a bounded run against the real CRIU,
and the parts of it that need no CRIU.

The bounded run composes CRWATCH_FUZZ_COMPOSITIONS random trees (default 100)
from CRWATCH_FUZZ_SEED (default below, printed), and fails on any unsafe
verdict (crwatch said a dump would work and CRIU refused it), naming each
reproducer; `python -m bench.fuzz_criu --replay PATH` re-runs one.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fuzz_criu
from bench.fuzz import STAGES, load
from tracker.criu.runner import DumpResult, find_criu

REPO = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("CRWATCH_FUZZ_SEED", "20261207"))
COMPOSITIONS = int(os.environ.get("CRWATCH_FUZZ_COMPOSITIONS", "100"))
FAMILIES = {"files", "sockets", "anon", "memory", "locks", "ipc", "namespaces", "task", "terminal",
            "devices"}


@pytest.mark.criu
def test_bounded_fuzz_run_finds_no_unsafe_verdict():
    criu = find_criu()
    assert criu is not None, "no CRIU: scripts/setup.sh provides one"
    out = REPO / "build" / "fuzz-test"
    figures = fuzz_criu.fuzz(COMPOSITIONS, SEED, 4, out, list(load().values()), criu)
    assert figures["compositions"] == COMPOSITIONS
    unsafe = [d for d in figures["disagreements"] if d["result"] == fuzz_criu.UNSAFE]
    unexplained = [d for d in unsafe if not fuzz_criu.known_cause(d["generators"])]
    for disagreement in unsafe:
        cause = fuzz_criu.known_cause(disagreement["generators"])
        print(f"{out / fuzz_criu.reproducer_name(disagreement['index'])}: {disagreement['why']}"
              + (f" (known: {cause})" if cause else ""))
    assert not unexplained, (
        f"seed {SEED}: {len(unexplained)} unsafe verdict(s); reproducers: "
        + ", ".join(str(out / fuzz_criu.reproducer_name(d["index"])) for d in unexplained))


def test_generators_cover_every_family_with_a_docstring_each():
    generators = load()
    assert len(generators) >= 40
    assert {g.family for g in generators.values()} == FAMILIES
    assert all(g.doc and g.stage in STAGES for g in generators.values())


def test_the_same_seed_composes_the_same_trees_and_a_tree_has_1_to_4_processes():
    pool = list(load().values())
    first = [fuzz_criu.compose(random.Random(f"5:{i}"), 4, pool) for i in range(50)]
    again = [fuzz_criu.compose(random.Random(f"5:{i}"), 4, pool) for i in range(50)]
    assert first == again
    assert {len(tree) for tree in first} == {1, 2, 3, 4}
    for tree in first:
        assert tree[0]["parent"] is None and tree[0]["generators"]
        assert all(p["parent"] < i for i, p in enumerate(tree) if i)
        json.dumps(tree)   # a reproducer holds it as it is


def test_a_composition_never_puts_a_vfork_with_threads_or_a_stop_or_a_final_stage_twice():
    pool = list(load().values())
    generators = load()
    for index in range(300):
        for process in fuzz_criu.compose(random.Random(f"9:{index}"), 4, pool):
            chosen = [generators[step["name"]] for step in process["generators"]]
            assert sum(g.exclusive for g in chosen) <= 1
            assert not (any(g.single_threaded for g in chosen)
                        and any(g.stage == "threads" or g.threaded for g in chosen))
            names = {g.name for g in chosen}
            assert not any(names & set(g.conflicts) for g in chosen)


class FakeCriu:
    """Answers dumps from a table (the classification alone; the bounded run uses the real CRIU)."""

    version = (4, 2, 1)

    def __init__(self, *answers: tuple[bool, str]):
        self.answers = list(answers)
        self.calls: list[list[str]] = []

    def dump(self, pid: int, options=()) -> DumpResult:
        self.calls.append(list(options))
        ok, error = self.answers.pop(0)
        return DumpResult(ok, 0 if ok else 1, [] if ok else [error], "", ["criu", *options])


def outcome(verdict: str, reasons: list[dict] = ()) -> fuzz_criu.Outcome:
    result = fuzz_criu.Outcome(0, [])
    # this test's own pid stands in for the tree: it lives through every dump
    result.document = {"verdict": verdict, "reasons": list(reasons),
                       "processes": [{"pid": os.getpid()}]}
    return result


FILE_LOCKS = {"code": "lock.flock", "option": "--file-locks", "option_value": None,
              "severity": "option"}
LOCKS_ERROR = ("Error (criu/file-lock.c:110): Some file locks are hold by dumping tasks! "
               "You can try --file-locks to dump them.")


@pytest.mark.parametrize("verdict, reasons, answers, expected", [
    ("ok", [], [(True, "")], fuzz_criu.AGREE),
    ("ok", [], [(False, "Error (x): refused")], fuzz_criu.UNSAFE),
    # otherwise: with the options first, then plainly (once, when there are no options)
    ("needs_options", [FILE_LOCKS], [(True, ""), (False, LOCKS_ERROR)], fuzz_criu.AGREE),
    ("needs_options", [FILE_LOCKS], [(True, ""), (True, "")], fuzz_criu.OVERCAUTIOUS),
    ("needs_options", [FILE_LOCKS], [(False, "Error: else"), (False, LOCKS_ERROR)], fuzz_criu.UNSAFE),
    ("blocked", [], [(False, "Error: no")], fuzz_criu.AGREE),
    ("blocked", [], [(True, "")], fuzz_criu.OVERCAUTIOUS),
    ("blocked", [FILE_LOCKS], [(True, "")], fuzz_criu.OVERCAUTIOUS),
    ("blocked", [FILE_LOCKS], [(False, "Error: no"), (True, "")], fuzz_criu.OVERCAUTIOUS),
    ("blocked", [FILE_LOCKS], [(False, "Error: no"), (False, "Error: no")], fuzz_criu.AGREE),
    ("unknown", [], [], fuzz_criu.UNKNOWN),
])
def test_classification(verdict, reasons, answers, expected):
    criu = FakeCriu(*answers)
    result = outcome(verdict, reasons)
    fuzz_criu.classify(result, criu, 1)
    assert result.result == expected
    assert criu.answers == []   # every planned dump was made, no more
    if len(criu.calls) == 2:
        assert criu.calls == [["--file-locks"], []]


def test_an_agreeing_refusal_for_a_cause_no_reason_predicts_is_noted():
    kvm = {"code": "device.chr.unsupported", "option": None, "option_value": None,
           "severity": "blocker"}
    other = "Error (criu/sk-queue.c:144): skqueue: Control messages in queue, not supported"
    result = outcome("blocked", [kvm])
    fuzz_criu.classify(result, FakeCriu((False, other)), 1)
    assert (result.result, result.other_cause) == (fuzz_criu.AGREE, other)
    predicted = outcome("blocked", [kvm])
    fuzz_criu.classify(predicted, FakeCriu((False, "Error (x): Can't dump file 3 of that type "
                                                   "[20660] (chr 10:232)")), 1)
    assert predicted.other_cause == ""


def test_a_transient_failure_is_retried_once_and_counted():
    criu = FakeCriu((False, "Error (compel/src/lib/infect.c:1): Unable to detach from PID 5"), (True, ""))
    result = outcome("ok")
    fuzz_criu.classify(result, criu, 1)
    assert (result.result, result.retries, len(criu.calls)) == (fuzz_criu.AGREE, 1, 2)


def test_dropping_an_empty_leaf_renumbers_the_parents():
    tree = [{"parent": None, "generators": [{"name": "pipe"}]},
            {"parent": 0, "generators": []},
            {"parent": 0, "generators": [{"name": "pipe"}]}]
    assert fuzz_criu.drop_empty_leaf(tree) == [tree[0], dict(tree[2], parent=0)]
    assert fuzz_criu.drop_empty_leaf([tree[0]]) is None


@pytest.mark.parametrize("arguments, message", [
    # The fuzzer refuses to start without root before it reads generators or reproducers.
    pytest.param(["--generators", "pipe,no_such_thing"], "unknown generator(s): no_such_thing",
                 marks=pytest.mark.root),
    pytest.param(["--replay", "/nonexistent/repro.json"], "cannot read /nonexistent/repro.json",
                 marks=pytest.mark.root),
    (["--compositions", "0"], "--compositions must be at least 1"),
])
def test_bad_input_is_one_clear_line_and_exit_status_2(arguments, message):
    run = subprocess.run([sys.executable, "-m", "bench.fuzz_criu", *arguments], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr


def test_a_reproducer_that_is_not_one_is_refused(tmp_path: Path):
    path = tmp_path / "repro.json"
    path.write_text(json.dumps({"processes": [{"parent": None, "generators": [{"name": "nope"}]}]}))
    with pytest.raises(fuzz_criu.UsageError, match="unknown generators: nope"):
        fuzz_criu.load_reproducer(path)


def test_a_refused_generator_skips_the_composition_and_leaves_no_process(tmp_path: Path):
    processes = [
        {"parent": None, "generators": [{"name": "pipe", "params": {"data": True, "ends": "both"}}]},
        {"parent": 0, "inherit": True, "generators": [
            {"name": "zombie_child", "params": {"count": 1}},
            {"name": "device", "params": {"path": "/dev/crwatch-no-such-device", "mode": "rdwr"}}]},
    ]
    workdir = tmp_path / "composition"
    result = fuzz_criu.run(0, processes, find_criu(), workdir)
    assert result.result == fuzz_criu.SKIPPED
    assert result.why.startswith("not built: device: FileNotFoundError")
    assert not fuzz_criu.running_command(str(workdir / "spec.json"))
    assert not workdir.exists()


def test_a_tree_still_building_when_the_fuzzer_gives_up_is_killed_whole(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(fuzz_criu, "READY_TIMEOUT", 0.02)   # about half its build (40 ms here)
    processes = [{"parent": None, "generators": [{"name": "threads", "params": {"count": 1}}]},
                 {"parent": 0, "generators": [{"name": "session", "params": {"kind": "setsid"}}]},
                 {"parent": 1, "generators": [{"name": "zombie_child", "params": {"count": 1}}]}]
    workdir = tmp_path / "composition"
    subject = fuzz_criu.Subject(processes, workdir)
    try:
        with pytest.raises(RuntimeError, match="no ready line"):
            subject.await_ready()
    finally:
        subject.stop()
    assert not fuzz_criu.running_command(str(workdir / "spec.json"))


def test_reduce_keeps_the_fewest_generators_that_disagree_the_same_way(tmp_path: Path, monkeypatch):
    # A stand-in for the real run: the tree "disagrees" while it holds an eventfd.
    def fake_run(index, processes, criu, workdir=None):
        result = fuzz_criu.Outcome(index, processes)
        if "eventfd" in fuzz_criu.generator_names(processes):
            result.result, result.why = fuzz_criu.UNSAFE, "crwatch: ok; CRIU refused it plainly"
            result.dumps = [{"options": [], "ok": False, "errors": ["Error (x.c:1): eventfd 7"]}]
        else:
            result.result = fuzz_criu.AGREE
        return result
    monkeypatch.setattr(fuzz_criu, "run", fake_run)
    step = {"name": "pipe", "params": {"data": False, "ends": "both"}}
    eventfd = {"name": "eventfd", "params": {"value": 0, "nonblock": False, "semaphore": False}}
    tree = [{"parent": None, "generators": [step, step]},
            {"parent": 0, "generators": [step, eventfd]},
            {"parent": 0, "generators": [step]}]
    original = fake_run(3, tree, None, None)
    path = tmp_path / "repro-0003.json"
    path.write_text(json.dumps(original.record(5)))
    reduced = fuzz_criu.reduce(path, None, echo=lambda line: None)
    assert reduced["generators"] == ["eventfd"]
    assert [p["parent"] for p in reduced["processes"]] == [None, 0]
    assert json.loads(path.with_suffix(".reduced.json").read_text())["generators"] == ["eventfd"]


@pytest.mark.parametrize("verdict, expected", [("ok", fuzz_criu.UNSAFE),
                                               ("blocked", fuzz_criu.SKIPPED)])
def test_a_dump_after_which_a_process_of_the_tree_died_counts_as_failed(verdict, expected):
    victim = subprocess.Popen(["sleep", "60"])
    try:
        class KillingCriu(FakeCriu):
            def dump(self, pid, options=()):
                os.kill(victim.pid, signal.SIGKILL)
                os.waitid(os.P_PID, victim.pid, os.WEXITED | os.WNOWAIT)   # dead, not reaped
                return super().dump(pid, options)
        result = fuzz_criu.Outcome(0, [])
        result.document = {"verdict": verdict, "reasons": [FILE_LOCKS] if verdict == "blocked" else [],
                           "processes": [{"pid": victim.pid}]}
        fuzz_criu.classify(result, KillingCriu((verdict == "ok", "Error (x): no")), victim.pid)
    finally:
        victim.kill()
        victim.wait()
    # ok: the dump "succeeded" and killed it; blocked: the plain dump would judge another tree
    assert result.result == expected
    assert f"the dump left the tree without pid(s) {victim.pid} (it killed them)" in \
        result.dumps[0]["errors"] or result.why.endswith(f"killed pid(s) {victim.pid}")

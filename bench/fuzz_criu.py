"""A differential fuzzer: crwatch's verdict against the real CRIU, on random process trees.

    python -m bench.fuzz_criu --compositions N [--seed S] [--max-processes 4]
                              [--out build/fuzz] [--generators a,b,c] [--verbose]
    python -m bench.fuzz_criu --replay build/fuzz/repro-0017.json
    python -m bench.fuzz_criu --reduce build/fuzz/repro-0017.json
    python -m bench.fuzz_criu --list

Each composition is a tree of 1-4 processes, each applying a few resource
generators (bench/fuzz/) drawn from the seed; bench/fuzz_subject.py builds it.
crwatch audits the tree (tracker.audit, judged under the `criu` profile), then
CRIU dumps it plainly and with exactly the options crwatch names
(tracker.criu.runner.arguments_for), and the pair is classified:

    ok             CRIU must dump it plainly                       else UNSAFE
    needs_options  the dump with the options must succeed          else UNSAFE
                   and the plain dump must fail                    else OVERCAUTIOUS
    blocked        both dumps must fail                            else OVERCAUTIOUS
    unknown        counted apart

The dump with the options comes first: a refused plain dump may still disturb
the tree (a write lease CRIU's reopen breaks kills its holder). A dump after
which a process of the tree has died counts as failed, and a composition whose
first dump killed one is skipped (the second would judge another tree). A failure
CRIU logs as its own trouble under load (tracker.criu.log.transient) is
retried once, and counted. A generator whose disagreement a change still to
come fixes carries a `known` mark naming that change; the bounded test in
tests/agreement/test_fuzz_criu.py fails only on unsafe verdicts no mark explains. Every
disagreement is saved as a reproducer
(seed, composition index, the tree with each generator's parameters,
crwatch's document, CRIU's commands and error lines) that --replay re-runs
and --reduce shrinks to the fewest generators that still disagree.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.fuzz import Generator, Place, load

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 60.0
HUGE_PAGES_PER_MAPPING = 2
# what differs between runs of one state: pids, fds, inodes, ids, device numbers, scratch paths
NUMBERS = re.compile(r"\b(0x)?[0-9a-f]*\d[0-9a-f]*\b|crwatch-fuzz-\w+")
AGREE, UNSAFE, OVERCAUTIOUS, UNKNOWN, SKIPPED = "agree", "unsafe", "overcautious", "unknown", "skipped"


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


# ---- composing ----------------------------------------------------------------------

def compose(rng: random.Random, max_processes: int, pool: list[Generator]) -> list[dict]:
    """A random tree: each process names its parent and the generators it applies, in order."""
    count = rng.randint(1, max_processes)
    parents = [None] + [rng.randrange(index) for index in range(1, count)]
    processes = []
    for index in range(count):
        place = Place(index, index == 0, index in parents[1:])
        chosen: list[Generator] = []
        for _ in range(rng.randint(1, 2) if index == 0 else rng.randint(0, 2)):
            candidates = [g for g in pool if g.fits(place) and compatible(g, chosen)]
            if not candidates:
                break
            chosen.append(rng.choices(candidates, weights=[g.weight for g in candidates])[0])
        processes.append({
            "parent": parents[index],
            "inherit": rng.random() < 0.5,   # a child keeps its parent's fds, or only the shared ones
            "generators": [{"name": g.name, "params": g.draw(rng, place)} for g in chosen],
        })
    return processes


def compatible(candidate: Generator, chosen: list[Generator]) -> bool:
    """Whether one process can apply `candidate` after `chosen`."""
    if (candidate.once or candidate.stage not in ("build", "threads")) and candidate in chosen:
        return False    # a process is stopped, traced, moved to a user ns or vforked once
    if candidate.exclusive and any(g.exclusive for g in chosen):
        return False
    if any(g.name in candidate.conflicts or candidate.name in g.conflicts for g in chosen):
        return False
    threaded = any(g.stage == "threads" or g.threaded for g in [*chosen, candidate])
    single = any(g.single_threaded for g in chosen) or candidate.single_threaded
    return not (threaded and single)


def generator_names(processes: list[dict]) -> list[str]:
    return [step["name"] for process in processes for step in process["generators"]]


def known_cause(names: list[str]) -> str | None:
    """The changes known to fix a disagreement these generators take part in."""
    generators = load()
    causes = sorted({generators[name].known for name in names if generators[name].known})
    return "; ".join(causes) or None


def reproducer_name(index: int) -> str:
    return f"repro-{index:04d}.json"


# ---- running one composition --------------------------------------------------------

@dataclass
class Outcome:
    index: int
    processes: list[dict]
    result: str = SKIPPED
    why: str = ""
    document: dict | None = None
    dumps: list[dict] = field(default_factory=list)
    retries: int = 0
    seconds: float = 0.0
    other_cause: str = ""   # an agreeing refusal whose CRIU error no reason predicted

    def record(self, seed: int | None) -> dict:
        return {"schema": "crwatch.fuzz-reproducer/1", "seed": seed, "index": self.index,
                "result": self.result, "why": self.why, "processes": self.processes,
                "generators": generator_names(self.processes), "document": self.document,
                "dumps": self.dumps, "retries": self.retries, "other_cause": self.other_cause,
                "signature": signature(self) if self.result in (UNSAFE, OVERCAUTIOUS) else None}


class Subject:
    """The running tree of one composition, and everything it leaves behind."""

    def __init__(self, processes: list[dict], workdir: Path):
        self.scratch = workdir / "scratch"
        self.scratch.mkdir(parents=True)
        self.spec = spec = workdir / "spec.json"
        spec.write_text(json.dumps({"scratch": str(self.scratch), "processes": processes}))
        self.huge_pages = reserve_huge_pages(HUGE_PAGES_PER_MAPPING * sum(
            name == "hugetlb_mapping" for name in generator_names(processes)))
        self.lease_break_time = shorten_lease_break_time(processes)
        read_end, write_end = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.fuzz_subject", str(spec)], cwd=REPO,
            env=dict(os.environ, CRWATCH_FUZZ_READY_FD=str(write_end)), pass_fds=(write_end,),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        os.close(write_end)
        self.ready_pipe = read_end
        self.pid = self.process.pid
        self.report: dict = {"pids": {"0": self.pid}, "others": [], "sysv": []}

    def await_ready(self) -> None:
        """Wait for the tree's ready line (stop() cleans up whatever happens here)."""
        try:
            self.report = read_report(self.ready_pipe, self.process)
        finally:
            os.close(self.ready_pipe)

    def stop(self) -> None:
        """Kill every process of the tree and its helpers, then undo what they left: mounts,
        SysV objects and queues of the host namespace, files."""
        # (processes a generator added, zombies or pid-namespace inits, are descendants:
        # found below; a tree that never got ready reported nothing, but every process of it
        # still runs the subject's command line)
        pids = {*map(int, self.report["pids"].values()), *self.report["others"], self.pid}
        for _ in range(100):   # a tree still building forks on: until none is left
            pids |= running_command(str(self.spec))
            pids |= descendants_of(pids)
            alive = [pid for pid in sorted(pids) if kill(pid)]
            if not alive:
                break
            pids = set()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        unmount_below(self.scratch)
        remove_ipc(self.report["sysv"])
        for leftover in glob.glob(f"/dev/shm/{self.scratch.name}-*"):
            os.unlink(leftover)
        release_huge_pages(self.huge_pages)
        if self.lease_break_time is not None:
            LEASE_BREAK_TIME.write_text(self.lease_break_time)


def read_report(pipe: int, process: subprocess.Popen) -> dict:
    """The root's ready line, once every process of the tree has closed the ready pipe."""
    data = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([pipe], [], [], remaining)[0]:
            raise RuntimeError(f"the subject sent no ready line in {READY_TIMEOUT:g} s"
                               if b"\n" not in data else "the subject kept its ready pipe open")
        chunk = os.read(pipe, 65536)
        if not chunk:
            break
        data += chunk
    if b"\n" not in data:
        raise RuntimeError(f"the subject died before it was ready (status {process.poll()})")
    return json.loads(data.split(b"\n", 1)[0])


def kill(pid: int) -> bool:
    """SIGKILL; whether there was a process to kill (a zombie counts as none)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rpartition(")")[2].split()[0] in "ZX":
                return False
        os.kill(pid, signal.SIGKILL)
        return True
    except (OSError, IndexError):
        return False


def running_command(word: str) -> set[int]:
    """The processes whose command line holds `word`."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if word.encode() in cmdline.read().split(b"\0"):
                        found.add(int(entry))
            except OSError:
                continue
    return found


def descendants_of(pids: set[int]) -> set[int]:
    """Every live descendant of these pids (a pid-namespace init may have left their session)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, queue = set(), list(pids)
    while queue:
        for child in children.get(queue.pop(), []):
            if child not in found:
                found.add(child)
                queue.append(child)
    return found


def unmount_below(directory: Path) -> None:
    """Lazily unmount everything mounted at or below `directory`, deepest first."""
    for _ in range(20):
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        below = sorted({p for p in points if p == str(directory) or p.startswith(f"{directory}/")},
                       key=lambda p: -p.count("/"))
        if not below:
            return
        for point in below:
            subprocess.run(["umount", "-l", point], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)


def remove_ipc(objects: list) -> None:
    """Remove the SysV objects and POSIX queues the tree made in the fuzzer's own IPC namespace
    (those of a namespace of its own went with it)."""
    import ctypes

    own = os.stat("/proc/self/ns/ipc").st_ino
    libc = ctypes.CDLL(None, use_errno=True)
    for kind, ident, namespace in objects:
        if namespace != own:
            continue
        if kind == "mqueue":
            ctypes.CDLL("librt.so.1").mq_unlink(ident.encode())
        else:
            {"sem": lambda sem: libc.semctl(sem, 0, 0), "msg": lambda queue: libc.msgctl(queue, 0, None),
             "shm": lambda segment: libc.shmctl(segment, 0, None)}[kind](ident)


def uses(processes: list[dict], generator_name: str) -> bool:
    return any(step["name"] == generator_name
               for process in processes for step in process["generators"])


def sweep_posix_queues() -> None:
    """Unlink every queue of ours left in the fuzzer's IPC namespace, also by a tree that never
    reported what it made (a leftover queue shows in every mqueue mount of the host)."""
    import ctypes

    librt = ctypes.CDLL("librt.so.1")
    with tempfile.TemporaryDirectory(prefix="crwatch-fuzz-mq-") as where:
        if subprocess.run(["mount", "-t", "mqueue", "none", where]).returncode != 0:
            return
        try:
            for name in os.listdir(where):
                if name.startswith("crwatch-fuzz-"):
                    librt.mq_unlink(f"/{name}".encode())
        finally:
            subprocess.run(["umount", where])


HUGE_PAGES = Path("/proc/sys/vm/nr_hugepages")
LEASE_BREAK_TIME = Path("/proc/sys/fs/lease-break-time")


def shorten_lease_break_time(processes: list[dict]) -> str | None:
    """A tree holding a write lease: a dump that breaks it (CRIU reopens the file) would wait
    the kernel's lease-break-time, 45 s by default; 1 s says the same. The old value is
    returned, to be put back."""
    if not any(step["name"] == "file_lock" and step["params"].get("kind") == "lease_write"
               for process in processes for step in process["generators"]):
        return None
    saved = LEASE_BREAK_TIME.read_text()
    LEASE_BREAK_TIME.write_text("1")
    return saved


def reserve_huge_pages(count: int) -> int:
    """Raise vm.nr_hugepages by `count` (others may change it meanwhile: only ever add or take
    back our own share)."""
    if not count or not HUGE_PAGES.exists():
        return 0
    HUGE_PAGES.write_text(str(int(HUGE_PAGES.read_text()) + count))
    return count


def release_huge_pages(count: int) -> None:
    if count:
        HUGE_PAGES.write_text(str(max(0, int(HUGE_PAGES.read_text()) - count)))


# ---- judging ------------------------------------------------------------------------

def run(index: int, processes: list[dict], criu, workdir: Path | None = None) -> Outcome:
    """Build the composition, ask crwatch, dump with CRIU, classify; always tear it down
    (its working directory, a fresh one in /tmp unless given, included)."""
    from tracker.audit import audit
    from tracker.procfs import ProcessGone
    from tracker.profiles import profile
    from tracker.verdict import document

    started = time.monotonic()
    outcome = Outcome(index, processes)
    subject = None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="crwatch-fuzz-", dir="/tmp"))
    try:
        subject = Subject(processes, workdir)
        subject.await_ready()
        if subject.report.get("refused"):
            outcome.why = f"not built: {subject.report['refused']}"
            return outcome
        apply_root_stage(processes[0], subject.pid)
        try:
            outcome.document = document(audit(subject.pid, tree=True), profile("criu", criu.version))
        except ProcessGone as gone:
            outcome.why = f"the tree vanished during the audit ({gone})"
            return outcome
        except Exception as error:   # crwatch itself failed: no verdict to compare, say so
            outcome.result = UNKNOWN
            outcome.why = f"crwatch's audit raised {type(error).__name__}: {error}"
            return outcome
        classify(outcome, criu, subject.pid)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        outcome.why = f"the subject failed: {error}"
    finally:
        if subject is not None:
            subject.stop()
        if uses(processes, "posix_mqueue"):
            sweep_posix_queues()
        shutil.rmtree(workdir, ignore_errors=True)
        outcome.seconds = time.monotonic() - started
    return outcome


def apply_root_stage(root: dict, pid: int) -> None:
    """The root's by-parent generators (a stop): its parent is the fuzzer."""
    generators = load()
    for step in root["generators"]:
        if generators[step["name"]].stage == "by_parent":
            generators[step["name"]].build(None, pid, **step["params"])


def classify(outcome: Outcome, criu, pid: int) -> None:
    from tracker.criu.options import arguments_for

    verdict = outcome.document["verdict"]
    if verdict == "unknown":
        outcome.result, outcome.why = UNKNOWN, "crwatch could not judge the tree"
        return
    members = [process["pid"] for process in outcome.document.get("processes", [])] or [pid]
    if verdict == "ok":
        plain = dump(outcome, criu, pid, [], members)
        outcome.result, outcome.why = (AGREE, "") if plain["ok"] else \
            (UNSAFE, f"crwatch: ok; CRIU refused it plainly: {first_error(plain)}")
        return
    # With the options first: a refused plain dump may still disturb the tree (a write lease
    # CRIU's reopen breaks kills its holder) and spoil the dump after it.
    options = arguments_for(outcome.document["reasons"])
    named = dump(outcome, criu, pid, options, members)
    if verdict == "blocked" and named["ok"]:
        outcome.result, outcome.why = OVERCAUTIOUS, \
            f"crwatch: blocked; CRIU dumped it with {' '.join(options) or 'no options'}"
        return
    if killed := named.get("killed"):
        outcome.why = f"the dump with {' '.join(options) or 'no options'} killed pid(s) {killed}"
        return   # skipped: the plain dump would judge another tree
    plain = dump(outcome, criu, pid, [], members) if options else named
    if plain["ok"]:
        outcome.result, outcome.why = OVERCAUTIOUS, f"crwatch: {verdict}; CRIU dumped it plainly"
    elif verdict == "needs_options" and not named["ok"]:
        outcome.result, outcome.why = UNSAFE, (
            f"crwatch: needs {' '.join(options)}; CRIU refused it with them: {first_error(named)}")
    else:
        outcome.result = AGREE
        outcome.other_cause = unpredicted(outcome.document["reasons"], plain)


def unpredicted(reasons: list[dict], refused: dict) -> str:
    """CRIU's first error when no reason's rule predicts it (by the message the rule says CRIU
    prints), though some do say one: an agreement that may hide a disagreement behind it."""
    from tracker.checks.catalogue import catalogue

    messages = {catalogue()[r["code"]].criu_message for r in reasons if r["severity"] != "info"}
    messages.discard("")
    errors = " ".join(refused["errors"])
    if not messages or any(pattern.search(errors) for message in messages
                           for pattern in printf_patterns(message)):
        return ""
    return first_error(refused)


def printf_patterns(message: str) -> list[re.Pattern]:
    """CRIU's printf formats, as a rule quotes them (several joined by "; " or " / "), as
    patterns for its log lines."""
    patterns = []
    for alternative in re.split(r"; | / ", message.strip()):
        parts = re.split(r"%[-#0-9.lz]*[a-zA-Z]", alternative)
        patterns.append(re.compile(".*?".join(re.escape(part) for part in parts)))
    return patterns


def dump(outcome: Outcome, criu, pid: int, options: list[str], members: list[int]) -> dict:
    """One CRIU dump (retried once when CRIU's errors are its own trouble under load); a dump
    after which a process of the tree has died counts as a failure."""
    from tracker.criu.log import transient

    before = states(members)
    result = criu.dump(pid, options)
    if not result.ok and transient(result.errors):
        outcome.retries += 1
        result = criu.dump(pid, options)
    errors = list(result.errors)
    killed = [member for member, state in states(members).items()
              if state in ("gone", "Z", "X") and before[member] not in ("gone", "Z", "X")]
    if result.ok and killed:
        errors.append(f"the dump left the tree without pid(s) {', '.join(map(str, killed))} "
                      f"(it killed them)")
    record = {"options": options, "command": result.command, "ok": result.ok and not killed,
              "errors": errors, "seconds": round(result.seconds, 3),
              "killed": ", ".join(map(str, killed))}
    outcome.dumps.append(record)
    return record


def states(pids: list[int]) -> dict[int, str]:
    """Each process's state letter, or "gone"."""
    found = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                found[pid] = stat.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            found[pid] = "gone"
    return found


def first_error(record: dict) -> str:
    return record["errors"][0] if record["errors"] else "exit status without an error line"


# ---- the run ------------------------------------------------------------------------

@dataclass
class Totals:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, result: str) -> int:
        return sum(o.result == result for o in self.outcomes)

    def without_known(self) -> float | None:
        """The agreement once the disagreements a known part fixes are left out."""
        known = sum(o.result in (UNSAFE, OVERCAUTIOUS) and known_cause(generator_names(o.processes))
                    is not None for o in self.outcomes)
        judged = self.count(AGREE) + self.count(UNSAFE) + self.count(OVERCAUTIOUS) - known
        return round(100 * self.count(AGREE) / judged, 2) if judged else None

    def figures(self, seed: int | None) -> dict:
        judged = self.count(AGREE) + self.count(UNSAFE) + self.count(OVERCAUTIOUS)
        disagreeing: Counter = Counter()
        for outcome in self.outcomes:
            if outcome.result in (UNSAFE, OVERCAUTIOUS):
                disagreeing.update(set(generator_names(outcome.processes)))
        seconds = sum(o.seconds for o in self.outcomes)
        return {
            "schema": "crwatch.fuzz-summary/1", "seed": seed, "compositions": len(self.outcomes),
            "agree": self.count(AGREE), "unsafe": self.count(UNSAFE),
            "overcautious": self.count(OVERCAUTIOUS), "unknown": self.count(UNKNOWN),
            "skipped": self.count(SKIPPED),
            "skipped_why": dict(Counter(o.why.split(":")[0] + ": " + o.why.split(":")[1].strip()
                                        if o.why.count(":") > 1 else o.why
                                        for o in self.outcomes if o.result == SKIPPED)),
            "unknown_why": dict(Counter(o.why for o in self.outcomes if o.result == UNKNOWN)),
            "agreement_percent": round(100 * self.count(AGREE) / judged, 2) if judged else None,
            "retries": sum(o.retries for o in self.outcomes),
            "seconds_per_composition": round(seconds / len(self.outcomes), 3) if self.outcomes else None,
            "agreement_percent_without_known": self.without_known(),
            "agreeing_for_another_cause": dict(Counter(
                NUMBERS.sub("N", re.sub(r"^\(\d+\.\d+\) ", "", o.other_cause))
                for o in self.outcomes if o.other_cause).most_common()),
            "disagreements_per_generator": dict(disagreeing.most_common()),
            "distinct_disagreements": distinct(self.outcomes),
            "disagreements": [{"index": o.index, "result": o.result, "why": o.why,
                               "generators": generator_names(o.processes)}
                              for o in self.outcomes if o.result in (UNSAFE, OVERCAUTIOUS)],
        }


def signature(outcome: Outcome) -> str:
    """What a disagreement is about, without the numbers that differ between runs."""
    failed = next((record for record in outcome.dumps if not record["ok"]), None)
    text = outcome.why if failed is None else first_error(failed)
    text = re.sub(r"^\(\d+\.\d+\) ", "", text)
    return f"{outcome.result}: {NUMBERS.sub('N', text)}"


def distinct(outcomes: list[Outcome]) -> list[dict]:
    """Disagreements grouped by what they are about, with the smallest composition of each."""
    groups: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.result in (UNSAFE, OVERCAUTIOUS):
            groups.setdefault(signature(outcome), []).append(outcome)
    return [{"signature": key, "count": len(group),
             "smallest": min(group, key=lambda o: len(generator_names(o.processes))).index,
             "known": known_cause(generator_names(
                 min(group, key=lambda o: len(generator_names(o.processes))).processes))}
            for key, group in sorted(groups.items(), key=lambda item: -len(item[1]))]


def fuzz(compositions: int, seed: int, max_processes: int, out: Path, pool: list[Generator],
         criu, echo=print, verbose: bool = False) -> dict:
    echo(f"seed {seed}")
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("repro-*.json"), *out.glob("skipped-*.json"), *out.glob("unknown-*.json")]:
        old.unlink()
    totals = Totals()
    for index in range(compositions):
        rng = random.Random(f"{seed}:{index}")   # one composition replays without the others
        outcome = run(index, compose(rng, max_processes, pool), criu)
        totals.outcomes.append(outcome)
        if verbose:
            echo(f"#{index} {outcome.result} {outcome.document and outcome.document['verdict']} "
                 f"{outcome.seconds:.2f}s {outcome.why} [{', '.join(generator_names(outcome.processes))}]")
        if outcome.result == SKIPPED:   # kept to see why, not reported
            (out / f"skipped-{index:04d}.json").write_text(json.dumps(outcome.record(seed)) + "\n")
        if outcome.result == UNKNOWN:
            path = out / f"unknown-{index:04d}.json"
            path.write_text(json.dumps(outcome.record(seed), indent=1) + "\n")
            echo(f"#{index} UNKNOWN: {outcome.why} [{', '.join(generator_names(outcome.processes))}]"
                 f" -> {path}")
        if outcome.result in (UNSAFE, OVERCAUTIOUS):
            path = out / reproducer_name(index)
            path.write_text(json.dumps(outcome.record(seed), indent=1) + "\n")
            cause = known_cause(generator_names(outcome.processes))
            echo(f"#{index} {outcome.result.upper()}: {outcome.why} "
                 f"[{', '.join(generator_names(outcome.processes))}] -> {path}"
                 + (f" (known: {cause})" if cause else ""))
    figures = totals.figures(seed)
    (out / "summary.json").write_text(json.dumps(figures, indent=1) + "\n")
    print_figures(figures, echo)
    return figures


def print_figures(figures: dict, echo=print) -> None:
    echo(f"compositions {figures['compositions']}: agree {figures['agree']}, unsafe {figures['unsafe']}, "
         f"overcautious {figures['overcautious']}, unknown {figures['unknown']}, "
         f"skipped {figures['skipped']}")
    for why, count in figures["skipped_why"].items():
        echo(f"  skipped {count}: {why}")
    for why, count in figures["unknown_why"].items():
        echo(f"  unknown {count}: {why}")
    echo(f"agreement {figures['agreement_percent']}% of the judged compositions; "
         f"CRIU retried {figures['retries']} time(s); "
         f"{figures['seconds_per_composition']} s per composition")
    echo(f"agreement without the disagreements a known part fixes: "
         f"{figures['agreement_percent_without_known']}%")
    for name, count in figures["disagreements_per_generator"].items():
        echo(f"  {count:4d} disagreement(s) with {name}")
    if figures["agreeing_for_another_cause"]:
        echo("agreeing refusals whose CRIU error no reason predicts (a disagreement may hide behind):")
        for text, count in figures["agreeing_for_another_cause"].items():
            echo(f"  {count:4d} x {text}")
    echo(f"distinct disagreements: {len(figures['distinct_disagreements'])}")
    for group in figures["distinct_disagreements"]:
        echo(f"  {group['count']:4d} x {group['signature']} (smallest: #{group['smallest']}"
             + (f"; known: {group['known']})" if group["known"] else ")"))


def replay(path: Path, criu, echo=print) -> Outcome:
    """Run a reproducer's tree again and say whether it still disagrees the same way."""
    recorded = load_reproducer(path)
    outcome = run(recorded.get("index", 0), recorded["processes"], criu)
    echo(f"replay of {path} (seed {recorded.get('seed')}, composition {recorded.get('index')}): "
         f"{outcome.result} (recorded: {recorded.get('result')}) {outcome.why}")
    for record in outcome.dumps:
        echo(f"  {'dumped' if record['ok'] else 'failed'}: {' '.join(record['options']) or '(plain)'}"
             + (f": {record['errors'][0]}" if record["errors"] else ""))
    return outcome


def reduce(path: Path, criu, echo=print) -> dict:
    """Drop generators (and then childless processes without any) one at a time while the
    composition still disagrees the way the whole tree does now (same result, same CRIU
    error); save and return the smallest one."""
    recorded = load_reproducer(path)
    processes = json.loads(json.dumps(recorded["processes"]))
    last = run(recorded.get("index", 0), processes, criu)
    if last.result != recorded["result"]:
        raise UsageError(f"{path} no longer disagrees that way (now: {last.result} {last.why})")
    wanted = signature(last)   # as this run words it
    changed = True
    while changed:
        changed = False
        for index, process in enumerate(processes):
            for position in range(len(process["generators"]) - 1, -1, -1):
                trial = json.loads(json.dumps(processes))
                del trial[index]["generators"][position]
                outcome = run(recorded.get("index", 0), trial, criu)
                if same_disagreement(outcome, wanted):
                    processes, last, changed = trial, outcome, True
                    break
            if changed:
                break
        trial = drop_empty_leaf(processes)
        if not changed and trial is not None:
            outcome = run(recorded.get("index", 0), trial, criu)
            if same_disagreement(outcome, wanted):
                processes, last, changed = trial, outcome, True
    reduced = dict(recorded, processes=processes, generators=generator_names(processes),
                   reduced_from=str(path))
    if last is not None:
        reduced.update(document=last.document, dumps=last.dumps, why=last.why)
    target = path.with_suffix(".reduced.json")
    target.write_text(json.dumps(reduced, indent=1) + "\n")
    echo(f"reduced {path} to {len(processes)} process(es), generators "
         f"{generator_names(processes)}: {reduced['why']} -> {target}")
    return reduced


def same_disagreement(outcome: Outcome, wanted: str) -> bool:
    """`wanted` is a signature, or a bare result for reproducers that carry none."""
    if outcome.result not in (UNSAFE, OVERCAUTIOUS):
        return False
    return wanted == outcome.result if wanted in (UNSAFE, OVERCAUTIOUS) else signature(outcome) == wanted


def drop_empty_leaf(processes: list[dict]) -> list[dict] | None:
    """The tree without its last childless, generator-less process (renumbering parents)."""
    parents = {p["parent"] for p in processes}
    for index in range(len(processes) - 1, 0, -1):
        if not processes[index]["generators"] and index not in parents:
            trial = json.loads(json.dumps(processes))
            del trial[index]
            for process in trial:
                if process["parent"] is not None and process["parent"] > index:
                    process["parent"] -= 1
            return trial
    return None


def load_reproducer(path: Path) -> dict:
    try:
        recorded = json.loads(path.read_text())
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise UsageError(f"{path} is not JSON: {error}") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("processes"), list):
        raise UsageError(f"{path} is not a fuzzer reproducer (no process list)")
    unknown = set(generator_names(recorded["processes"])) - set(load())
    if unknown:
        raise UsageError(f"{path} names unknown generators: {', '.join(sorted(unknown))}")
    return recorded


def select_pool(names: str | None) -> list[Generator]:
    generators = load()
    if not names:
        return list(generators.values())
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in generators]
    if unknown or not wanted:
        raise UsageError(f"unknown generator(s): {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(sorted(generators))}")
    return [generators[name] for name in wanted]


def find_usable_criu():
    from tracker.criu.runner import find_criu

    if os.geteuid() != 0:
        raise UsageError("the fuzzer needs root (it mounts, traces and runs CRIU)")
    criu = find_criu()
    if criu is None or not criu.supported:
        raise UsageError("no usable CRIU (>= 4.2): run scripts/setup.sh or set CRWATCH_CRIU")
    return criu


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz_criu", description=__doc__.split("\n")[0])
    parser.add_argument("--compositions", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--max-processes", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "fuzz")
    parser.add_argument("--generators", help="draw only from these generators (comma-separated)")
    parser.add_argument("--replay", type=Path, help="re-run one reproducer")
    parser.add_argument("--reduce", type=Path, help="shrink one reproducer to its fewest generators")
    parser.add_argument("--list", action="store_true", help="list the generators and exit")
    parser.add_argument("--verbose", action="store_true", help="a line for every composition")
    arguments = parser.parse_args(argv)
    if arguments.compositions < 1:
        parser.error("--compositions must be at least 1")
    if not 1 <= arguments.max_processes <= 4:
        parser.error("--max-processes must be between 1 and 4")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    try:
        if arguments.list:
            for g in sorted(load().values(), key=lambda g: (g.family, g.name)):
                print(f"{g.family:10s} {g.name:34s} {g.doc}")
            return 0
        criu = find_usable_criu()
        if arguments.replay:
            outcome = replay(arguments.replay, criu)
            return 1 if outcome.result in (UNSAFE, OVERCAUTIOUS) else 0
        if arguments.reduce:
            reduce(arguments.reduce, criu)
            return 0
        seed = arguments.seed if arguments.seed is not None else random.SystemRandom().randrange(1 << 32)
        figures = fuzz(arguments.compositions, seed, arguments.max_processes, arguments.out,
                       select_pool(arguments.generators), criu, verbose=arguments.verbose)
        return 1 if figures["unsafe"] else 0
    except UsageError as error:
        print(f"fuzz_criu: {error}", file=sys.stderr)
        return 2
    except OSError as error:   # e.g. an --out directory that cannot be written
        print(f"fuzz_criu: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""List the candidate refusal sites on CRIU's dump path, from CRIU's own source.

A refusal site is a `pr_err` / `pr_perror` / `pr_msg` call followed, in the
same block, by an error exit: `return -1` (any negative value, NULL, false or
a status variable), `goto label`, `ret = -1` (any variable set negative),
`BUG()` or `exit()`. Consecutive calls before one exit are one site (CRIU often
prints a refusal and its hint as two lines: sk-inet.c's in-flight message).

The dump path is what CRIU's `cr_dump_tasks()` reaches (criu/cr-dump.c), plus
the parasite's command handlers (criu/pie/parasite.c `parasite_daemon_cmd`,
`parasite_trap_cmd`), which run inside the dumped task and log through CRIU.
Reachability is a name graph over criu/, criu/pie/ and compel/src/lib/: a
function reaches every function or global it names (so callbacks and the ops
tables of criu/files.c's dispatch count), and a global reaches every function
its initialiser names, except in the fields CRIU calls only at restore
(`.open`, `.collect`, `.restore`, `.mount`...). It over-approximates (a name shared by a restore-only
static in another file links to it too); the curated list in
docs/criu-refusals.md is the judged one.

The printed message is the format string exactly as CRIU writes it in the
source, string pieces joined; a macro between pieces (PRIx64) shows as
<PRIx64>. pr_perror adds ": <strerror(errno)>" at run time; CRIU's log puts
"Error (file:line): " and the file's LOG_PREFIX before pr_err/pr_perror text.

Usage (standard library only):
  criu_refusal_sites.py --git-dir /path/criu.git --commit v4.2 [--json] [--all]
  criu_refusal_sites.py --source /path/criu [--file criu/sk-unix.c]...
  ... --binary /usr/sbin/criu   (adds in_binary: is each message compiled into that CRIU?)
  ... --check-doc docs/criu-refusals.md   (what a new CRIU adds to or removes from the curated list)
Output: TSV (file, line, function, call, exit, prefix, message) or JSON.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass

SOURCE_DIRS = ("criu", "criu/pie", "compel/src/lib")
ROOTS = ("cr_dump_tasks", "parasite_daemon_cmd", "parasite_trap_cmd")
PRINT_CALLS = ("pr_err", "pr_perror", "pr_msg")
STATEMENTS_SCANNED = 8          # how far after a print an exit still belongs to it

IDENT = re.compile(r"[A-Za-z_]\w*")
PRINT_CALL = re.compile(r"\b(%s)\s*\(" % "|".join(PRINT_CALLS))
LOG_PREFIX = re.compile(r'^#define\s+LOG_PREFIX\s+"([^"]*)"', re.M)
# Ops-table fields CRIU calls only at restore (file_desc_ops.open, collect_image_info.collect,
# fstype.restore, tty_driver.img_get_index...): the dump path never goes through them.
RESTORE_FIELDS = re.compile(
    r"\.(?:open|collect|restore|mount|check_bindmount|img_get_index|grow)\s*=\s*&?\w+")
GLOBAL_INIT = re.compile(r"^[A-Za-z_][^;(){}]*?\b([A-Za-z_]\w*)\s*(?:\[[^\]]*\]\s*)*=\s*\{", re.M)
ERROR_EXITS = (
    ("return", re.compile(r"^return\s*(?:\(\s*)?(?:-|NULL\b|false\b|[A-Za-z_])")),
    ("goto", re.compile(r"^goto\s+\w+$")),
    ("set", re.compile(r"^(?:\*\s*)?[A-Za-z_][\w.>-]*\s*=\s*-\s*(?:\d|E[A-Z]+|1)")),
    ("bug", re.compile(r"^(?:BUG|BUG_ON|exit|_exit|abort)\s*\(")),
)
FLOW_ENDS = re.compile(r"^(?:return\b|break$|continue$|goto\b)")


class SourceError(Exception):
    """The CRIU source could not be read."""


@dataclass
class Site:
    file: str
    line: int
    function: str
    call: str
    exit: str
    prefix: str
    message: str
    reachable: bool = True
    in_binary: bool | None = None   # with --binary: is the message compiled into that CRIU?


# ---------------------------------------------------------------- reading the tree

class GitTree:
    def __init__(self, git_dir: str, commit: str):
        self.git_dir, self.commit = git_dir, commit
        self.sha = self._git("rev-parse", "--verify", f"{commit}^{{commit}}").strip()

    def _git(self, *args: str) -> str:
        try:
            done = subprocess.run(["git", "--git-dir", self.git_dir, *args],
                                  capture_output=True, text=True, errors="replace")
        except OSError as error:
            raise SourceError(f"cannot run git: {error}") from error
        if done.returncode != 0:
            raise SourceError(f"git {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def c_files(self, directory: str) -> list[str]:
        names = self._git("ls-tree", "--name-only", f"{self.sha}:{directory}").split()
        return [f"{directory}/{name}" for name in names if name.endswith(".c")]

    def read(self, path: str) -> str:
        return self._git("show", f"{self.sha}:{path}")


class DirTree:
    def __init__(self, root: str):
        if not os.path.isdir(os.path.join(root, "criu")):
            raise SourceError(f"{root} is not a CRIU source tree (no criu/ directory)")
        self.root, self.sha = root, "(working tree)"

    def c_files(self, directory: str) -> list[str]:
        full = os.path.join(self.root, directory)
        if not os.path.isdir(full):
            return []
        return sorted(f"{directory}/{name}" for name in os.listdir(full) if name.endswith(".c"))

    def read(self, path: str) -> str:
        with open(os.path.join(self.root, path), encoding="utf-8", errors="replace") as handle:
            return handle.read()


# ---------------------------------------------------------------- masking C

def mask(text: str) -> str:
    """The text with comments, preprocessor lines and string/char contents blanked.

    Lengths and newlines are kept, so offsets into the mask are offsets into
    the source; string literals keep their quotes so they can be found again.
    """
    out = list(text)
    i, n, line_start = 0, len(text), True
    while i < n:
        c = text[i]
        if line_start and c == "#":
            while i < n and not (text[i] == "\n" and text[i - 1] != "\\"):
                out[i] = " "
                i += 1
            continue
        if c in " \t":
            i += 1
            continue
        line_start = c == "\n"
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            for j in range(i, end):
                if text[j] != "\n":
                    out[j] = " "
            i = end
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                if text[j] == "\\":
                    out[j] = " "
                    j += 1
                if j < n and text[j] != "\n":
                    out[j] = " "
                j += 1
            i = j + 1
        else:
            i += 1
    return "".join(out)


def closing_paren(masked: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(masked)):
        if masked[i] == "(":
            depth += 1
        elif masked[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return len(masked) - 1


def format_argument(text: str, masked: str, start: int, end: int) -> str:
    """The first argument of a call (text[start:end] holds the arguments): its string pieces."""
    pieces, depth, i = [], 0, start
    while i < end:
        c = masked[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            break
        if c == '"':
            close = masked.index('"', i + 1)
            pieces.append(text[i + 1:close])
            i = close + 1
            continue
        word = IDENT.match(masked, i)
        if word and (i == 0 or not (masked[i - 1].isalnum() or masked[i - 1] == "_")):
            pieces.append(f"<{word.group()}>")
            i = word.end()
            continue
        i += 1
    return "".join(pieces)


# ---------------------------------------------------------------- functions and globals

@dataclass
class Function:
    name: str
    file: str
    start: int          # offset of the body's "{"
    end: int            # offset of the body's closing "}"
    returns: str = ""   # the declared return type, as written


def is_predicate(body: str) -> bool:
    """A function whose every return is 0/1 or false/true: there 0 and false mean no."""
    values = {" ".join(v.split()) for v in re.findall(r"\breturn\b([^;]*);", body)}
    return bool(values) and values <= {"0", "1", "false", "true"} and bool(values & {"1", "true"})


def zero_means_failure(function: Function, body: str) -> bool:
    """0 is the failure value of ids, pointers, bools and 0/1 predicates; of an int it is success."""
    kind = " ".join(function.returns.replace("static", "").replace("inline", "").split())
    if "*" in kind or kind in ("bool", "unsigned int", "unsigned", "u32", "uint32_t", "unsigned long"):
        return True
    return is_predicate(body)


def line_starts(text: str) -> list[int]:
    starts = [0]
    starts.extend(i + 1 for i, c in enumerate(text) if c == "\n")
    return starts


def functions_of(path: str, masked: str) -> list[Function]:
    """Kernel style: a function body opens and closes with a brace in column 0."""
    found = []
    for opening in re.finditer(r"^\{", masked, re.M):
        closing = re.compile(r"^\}", re.M).search(masked, opening.end())
        if not closing:
            continue
        head_start = max(masked.rfind(";", 0, opening.start()), masked.rfind("}", 0, opening.start()))
        head = masked[head_start + 1:opening.start()]
        name = re.search(r"([A-Za-z_]\w*)\s*\((?:[^()]|\([^()]*\))*\)\s*(?:__\w+(?:\([^()]*\))?\s*)*$", head)
        if name:
            returns = head[:name.start(1)].strip().splitlines()[-1:] or [""]
            found.append(Function(name.group(1), path, opening.start(), closing.start(), returns[0]))
    return found


def globals_of(masked: str) -> dict[str, str]:
    """Global initialisers (ops tables, handler arrays): name -> initialiser text."""
    found = {}
    for match in GLOBAL_INIT.finditer(masked):
        end = re.compile(r"^\};", re.M).search(masked, match.end())
        if end:
            found[match.group(1)] = RESTORE_FIELDS.sub("", masked[match.end():end.start()])
    return found


# ---------------------------------------------------------------- reachability

def reachable_functions(units: dict[str, tuple[str, str]], roots=ROOTS) -> set[tuple[str, str]]:
    """(file, function) pairs the dump path can reach through names."""
    functions: dict[str, list[Function]] = {}
    bodies: dict[tuple[str, str], str] = {}
    global_inits: dict[str, list[tuple[str, str]]] = {}
    for path, (_, masked) in units.items():
        for function in functions_of(path, masked):
            functions.setdefault(function.name, []).append(function)
            bodies[(path, function.name)] = masked[function.start:function.end]
        for name, init in globals_of(masked).items():
            global_inits.setdefault(name, []).append((path, init))

    def targets(path: str, name: str) -> list[tuple[str, str]]:
        local = [f for f in functions.get(name, ()) if f.file == path]
        return [(f.file, f.name) for f in (local or functions.get(name, ()))]

    seen_functions: set[tuple[str, str]] = set()
    seen_globals: set[tuple[str, str]] = set()
    work = [key for root in roots for key in targets("", root)]
    while work:
        key = work.pop()
        if key in seen_functions:
            continue
        seen_functions.add(key)
        names = [(key[0], word) for word in set(IDENT.findall(bodies[key]))]
        while names:
            path, word = names.pop()
            work.extend(t for t in targets(path, word) if t not in seen_functions)
            for init_path, init in global_inits.get(word, ()):
                if (init_path, word) not in seen_globals:
                    seen_globals.add((init_path, word))
                    names.extend((init_path, w) for w in set(IDENT.findall(init)))
    return seen_functions


# ---------------------------------------------------------------- sites

def statements_after(masked: str, at: int, limit: int):
    """The statements following offset `at` in the same block, nested blocks skipped.

    When the print ends its block (`} else { pr_err(...); } goto out;`), the
    enclosing block's statements follow: that is where CRIU then leaves.
    """
    depth, start, count, i, climbed = 0, at, 0, at, False
    while i < len(masked) and count < limit:
        c = masked[i]
        if c in "({[":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "}":
            if depth == 0:
                if climbed or count:
                    return
                climbed, start = True, i + 1
                i += 1
                continue
            depth -= 1
            if depth == 0:
                start = i + 1
        elif c == ";" and depth == 0:
            statement = " ".join(masked[start:i].split())
            start = i + 1
            count += 1
            yield statement
        i += 1


def error_exit(statement: str, zero_fails: bool) -> str | None:
    # leading labels go: `err: return ret` is `return ret`
    statement = re.sub(r"^(?:(?!default\b)[A-Za-z_]\w*\s*:(?!:)\s*)+", "", statement)
    statement = re.sub(r"^(?:else\s+)?(?:if\s*\(.*\)\s*)?", "", statement)
    if zero_fails and re.match(r"^return\s*\(?\s*(?:0|false)\s*\)?$", statement):
        return statement
    for kind, pattern in ERROR_EXITS:
        if pattern.match(statement):
            if kind == "return" and re.match(r"^return\s*\(?\s*(?:0|1|true)\s*\)?$", statement):
                return None
            return statement
    return None


def sites_of(path: str, text: str, masked: str, prefix: str,
             reachable: set[tuple[str, str]], everything: bool) -> list[Site]:
    starts = line_starts(text)
    found = []
    for function in functions_of(path, masked):
        is_reachable = (path, function.name) in reachable
        if not (is_reachable or everything):
            continue
        body = masked[function.start:function.end]
        zero_fails = zero_means_failure(function, body)
        pending: list[tuple[int, str, str]] = []
        for call in PRINT_CALL.finditer(body):
            open_at = function.start + call.end() - 1
            close_at = closing_paren(masked, open_at)
            message = format_argument(text, masked, open_at + 1, close_at)
            semicolon = masked.find(";", close_at)
            line = bisect.bisect_right(starts, function.start + call.start())
            pending.append((line, call.group(1), message))
            following = list(statements_after(masked, semicolon + 1, STATEMENTS_SCANNED))
            if following and re.match(r"^(?:if\b.*)?\b(?:%s)\s*\(" % "|".join(PRINT_CALLS), following[0]):
                continue    # the next print (even a conditional one) belongs to the same refusal
            exits = (error_exit(s, zero_fails) for s in following_until_flow(following))
            exit_statement = next((e for e in exits if e), None)
            if exit_statement:
                first = pending[0]
                found.append(Site(path, first[0], function.name,
                                  "+".join(p[1] for p in pending), exit_statement, prefix,
                                  " / ".join(clean(p[2]) for p in pending), is_reachable))
            pending = []
    return found


def following_until_flow(statements: list[str]):
    """Statements up to and including the first that leaves the block's flow."""
    for statement in statements:
        yield statement
        if FLOW_ENDS.match(re.sub(r"^(?:else\s+)?", "", statement)):
            return


def clean(message: str) -> str:
    return message[:-2] if message.endswith("\\n") else message


def extract(tree, files: list[str], everything: bool = False) -> list[Site]:
    units = {}
    for directory in SOURCE_DIRS:
        for path in tree.c_files(directory):
            text = tree.read(path)
            units[path] = (text, mask(text))
    unknown = sorted(set(files) - set(units))
    if unknown:
        raise SourceError(f"no such source file on the dump path's directories: {', '.join(unknown)}")
    reachable = reachable_functions(units)
    sites = []
    for path in sorted(units):
        if files and path not in files:
            continue
        text, masked = units[path]
        prefix = LOG_PREFIX.search(text)
        sites.extend(sites_of(path, text, masked, prefix.group(1) if prefix else "",
                              reachable, everything))
    return sites


# ---------------------------------------------------------------- a built CRIU

FORMAT_PIECE = re.compile(r"%[-+ #0-9.*]*(?:hh|h|ll|l|z|j|t|L)?[a-zA-Z]|<\w+>")
C_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "'": "'", "\\": "\\"}


def binary_strings(path: str) -> str:
    """The printable runs of a binary, as `strings` shows them."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise SourceError(f"cannot read {path}: {error}") from error
    return "\n".join(run.decode("ascii") for run in re.findall(rb"[\x20-\x7e\t\n]{4,}", data))


def literal_chunk(message: str) -> str:
    """The longest fixed piece of one format string (escapes decoded), or "" when too short to tell."""
    text = re.sub(r"\\(.)", lambda m: C_ESCAPES.get(m.group(1), m.group(1)), message)
    chunks = [c for c in FORMAT_PIECE.split(text) if c.strip()]
    best = max(chunks, key=len, default="")
    return best if len(best.strip()) >= 6 else ""


def mark_in_binary(sites: list[Site], strings: str) -> None:
    """Whether every message of a site is in the binary (None: too short to tell)."""
    for site in sites:
        chunks = [literal_chunk(part) for part in site.message.split(" / ")]
        chunks = [c for c in chunks if c]
        site.in_binary = all(c in strings for c in chunks) if chunks else None


# ---------------------------------------------------------------- the curated doc

DOC_ROW = re.compile(r"^\| (\d+) \| `([^`]*)` \| `(.*)` \| [^|]* \| ")


def doc_sites(text: str) -> set[tuple[str, int, str]]:
    """(file, line, message) of the rows of docs/criu-refusals.md's per-file tables."""
    found, current = set(), None
    for line in text.splitlines():
        if line.startswith("### "):
            current = line[4:].strip()
        row = DOC_ROW.match(line)
        if row and current:
            found.add((current, int(row.group(1)), row.group(3).replace("\\|", "|")))
    return found


def doc_drift(sites: list[Site], text: str) -> tuple[list[tuple], list[tuple]]:
    """Sites the doc lacks, and rows of the doc the source no longer has."""
    extracted = {(s.file, s.line, s.message.replace("`", "'")) for s in sites}
    listed = doc_sites(text)
    return sorted(extracted - listed), sorted(listed - extracted)


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--git-dir", help="a CRIU git directory (read with --commit)")
    where.add_argument("--source", help="a CRIU source directory")
    parser.add_argument("--commit", default="HEAD", help="tag or commit in --git-dir (default HEAD)")
    parser.add_argument("--file", action="append", default=[],
                        help="only this source file (criu/sk-unix.c); repeatable")
    parser.add_argument("--all", action="store_true",
                        help="also sites in functions the dump path does not reach")
    parser.add_argument("--binary", help="a built criu executable: say whether each message is in it "
                        "(a check that the source read matches the CRIU that runs)")
    parser.add_argument("--check-doc", metavar="MD",
                        help="compare with the curated list (docs/criu-refusals.md): print the sites "
                        "it lacks and the rows the source no longer has; exit 1 when they differ")
    parser.add_argument("--json", action="store_true", help="JSON instead of TSV")
    args = parser.parse_args(argv)
    try:
        tree = GitTree(args.git_dir, args.commit) if args.git_dir else DirTree(args.source)
        sites = extract(tree, args.file, args.all)
        if args.binary:
            mark_in_binary(sites, binary_strings(args.binary))
        doc = read_doc(args.check_doc) if args.check_doc else None
    except SourceError as error:
        print(f"criu_refusal_sites: {error}", file=sys.stderr)
        return 2
    if doc is not None:
        return report_drift(*doc_drift(sites, doc))
    if args.json:
        json.dump({"commit": tree.sha, "sites": [asdict(s) for s in sites]}, sys.stdout, indent=1)
        print()
        return 0
    try:
        print_tsv(tree.sha, sites, args.all, bool(args.binary))
    except BrokenPipeError:
        sys.stderr.close()      # the reader (head, less) stopped early: no traceback
    return 0


def read_doc(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise SourceError(f"cannot read {path}: {error}") from error


def report_drift(missing: list[tuple], stale: list[tuple]) -> int:
    for file, line, message in missing:
        print(f"new\t{file}\t{line}\t{message}")
    for file, line, message in stale:
        print(f"gone\t{file}\t{line}\t{message}")
    print(f"# {len(missing)} sites not in the doc, {len(stale)} rows no longer in the source",
          file=sys.stderr)
    return 1 if missing or stale else 0


def print_tsv(commit: str, sites: list[Site], with_reachable: bool, with_binary: bool) -> None:
    print(f"# commit {commit}: {len(sites)} sites")
    columns = ["file", "line", "function", "call", "exit", "prefix", "message"]
    columns += ["reachable"] if with_reachable else []
    columns += ["in_binary"] if with_binary else []
    print("\t".join(columns))
    for site in sites:
        row = asdict(site)
        print("\t".join(str(row[c]).replace("\t", " ") for c in columns))


if __name__ == "__main__":
    sys.exit(main())

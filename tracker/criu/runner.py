"""CRIU integration: find a usable `criu` and run trial dumps with it.

CRIU has no dry-run mode (`--check-only` never landed), so the closest answer
to "could this process be checkpointed?" is a real `criu dump --leave-running`
into a scratch directory that is thrown away afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from tracker.criu.facts_cache import FactsCache
from tracker.criu.log import NOISE

# Older CRIU misreads this kernel: 3.17 fails `criu check` (vDSO bounds) and
# 4.1 cannot dump any inet/packet/raw socket (SO_PASSCRED now refused).
MIN_VERSION = (4, 2, 0)

_REPO_ROOT = Path(__file__).resolve().parents[2]
# The CRIU scripts/setup.sh provides: find_criu()'s choice after $CRWATCH_CRIU.
PRIVATE_CRIU = _REPO_ROOT / ".deps" / "bin" / "criu"
_VERSION_RE = re.compile(r"^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)


class DumpResult:
    """How one CRIU dump ended."""

    def __init__(self, ok: bool, returncode: int, errors: list[str], log: str,
                 command: list[str] | None = None, seconds: float = 0.0,
                 log_path: str | None = None):
        self.ok, self.returncode, self.errors, self.log = ok, returncode, errors, log
        self.command: list[str] = [] if command is None else command
        self.seconds = seconds
        self.log_path = log_path    # kept when the images went to a directory of the caller's

    def __repr__(self) -> str:
        return (f"DumpResult(ok={self.ok!r}, returncode={self.returncode!r}, "
                f"errors={self.errors!r}, seconds={self.seconds!r}, log_path={self.log_path!r})")


class Criu(NamedTuple):
    path: str
    version: tuple[int, int, int]

    @property
    def supported(self) -> bool:
        return self.version >= MIN_VERSION

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def dump(self, pid: int, options: Sequence[str] = (), *, images_dir: Path | None = None,
             leave_running: bool = True, extra: Sequence[str] = (), timeout: float = 60,
             on_start: Callable[[int], None] | None = None) -> DumpResult:
        """Dump the tree of `pid` and report CRIU's errors.

        Without `images_dir` it is a trial: the images go to a scratch directory
        that is thrown away. `on_start` is told CRIU's pid as soon as it runs.
        CRIU gets exactly `options` (and `extra`): nothing is added on the way.
        """
        with contextlib.ExitStack() as scratch:
            images = images_dir if images_dir is not None else Path(scratch.enter_context(
                tempfile.TemporaryDirectory(prefix="crwatch-dump-")))
            running = self.start_dump(pid, options, images_dir=images,
                                      leave_running=leave_running, extra=extra)
            if on_start is not None:
                on_start(running.pid)
            result = running.finish(timeout)
        if images_dir is None:
            result.log_path = None  # thrown away with the scratch images
        return result

    def start_dump(self, pid: int, options: Sequence[str] = (), *, images_dir: Path,
                   leave_running: bool = True, extra: Sequence[str] = (),
                   log_dir: Path | None = None) -> StartedDump:
        """Start `criu dump` of the tree of `pid` into `images_dir` (which must exist) and
        return at once. Its log goes to `log_dir` until it ends (default: the images
        directory), then to the images directory as dump.log."""
        log_path = Path(log_dir or images_dir, "dump.log")
        command = [self.path, "dump", "-t", str(pid), "-D", str(images_dir), "-v4",
                   "-o", str(log_path) if log_dir else "dump.log",  # -o is relative to -D
                   *(["--leave-running"] if leave_running else []), *options, *extra]
        return StartedDump(command, log_path, Path(images_dir, "dump.log"))


class StartedDump:
    """A running `criu dump`: `finish()` waits for it and reads what it said."""

    def __init__(self, command: list[str], log_path: Path, kept_log: Path):
        self.command = command
        self._log_path, self._kept_log = log_path, kept_log
        self._started = time.monotonic()
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True, errors="replace")

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait(self, timeout: float = 60) -> int:
        """Wait for it to end, and keep nothing of what it said (its exit status)."""
        return _wait(self._process, timeout)[0]

    def finish(self, timeout: float = 60) -> DumpResult:
        returncode, output = _wait(self._process, timeout)
        seconds = time.monotonic() - self._started
        log = self._log_path.read_text(errors="replace") if self._log_path.exists() else ""
        kept = self._keep_log()
        if output.strip():  # e.g. option errors printed before the log opens
            log = f"{log}{output}" if not log or log.endswith("\n") else f"{log}\n{output}"
        errors = [
            line for line in log.splitlines()
            if "Error (" in line and not any(n in line for n in NOISE)
        ]
        if returncode != 0 and not errors:
            # Failed before logging (bad option, exec error): its first words say why.
            errors = [line for line in output.splitlines() if line.strip()][:1]
        return DumpResult(returncode == 0, returncode, errors, log, self.command, seconds,
                          kept and str(kept))

    def _keep_log(self) -> Path | None:
        """The log, where the images are (None: it could not be written there)."""
        if self._log_path == self._kept_log:
            return self._kept_log
        try:
            shutil.move(self._log_path, self._kept_log)
        except OSError:
            return None  # e.g. a read-only images directory: its text is in the result
        return self._kept_log


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        # Give CRIU a chance to unwind (release the seized tree) before SIGKILL.
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return -1, f"{out}\ncrwatch: criu dump timed out after {timeout:g} s\n"


def parse_version(text: str) -> tuple[int, int, int] | None:
    """`criu --version` prints "Version: 4.2.1" (or "Version: 4.2")."""
    m = _VERSION_RE.search(text)
    if not m:
        return None
    return int(m[1]), int(m[2]), int(m[3] or 0)


def probe_criu(path: str) -> Criu | None:
    """The CRIU at this path, with its version; None if it does not run."""
    try:
        proc = subprocess.run([path, "--version"], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = parse_version(proc.stdout)
    return Criu(path, version) if proc.returncode == 0 and version else None


@functools.cache
def find_criu() -> Criu | None:
    """The CRIU to use: $CRWATCH_CRIU if set (and only it), else the private
    one from scripts/setup.sh (.deps/bin/criu), else `criu` on PATH.

    Cached; call `find_criu.cache_clear()` after changing the environment.
    Callers should check `.supported` before trusting a verdict.
    """
    if env := os.environ.get("CRWATCH_CRIU"):
        return known_criu(env)
    if os.access(PRIVATE_CRIU, os.X_OK) and (found := known_criu(str(PRIVATE_CRIU))):
        return found
    system = shutil.which("criu", path=_search_path())
    return known_criu(system) if system else None


def first_choice(criu_variable: str | None, path: str | None) -> str | None:
    """Where find_criu() looks first in an environment whose $CRWATCH_CRIU and $PATH are
    these (None: unset), without running it: a CRIU that another environment would
    choose is another dumper."""
    if criu_variable:
        return criu_variable
    if os.access(PRIVATE_CRIU, os.X_OK):
        return str(PRIVATE_CRIU)
    return shutil.which("criu", path=_search_path(path))


def criu_at(path: str | None) -> Criu | None:
    """The CRIU a setting names (a path, or a name on PATH), else the one find_criu() finds."""
    if not path:
        return find_criu()
    found = shutil.which(path, path=_search_path()) if os.sep not in path else path
    return known_criu(found) if found else None


def known_criu(path: str) -> Criu | None:
    """The CRIU at this path, with the version it gave an earlier run when nothing that
    decides it has changed since (facts_cache), else as it says now."""
    kept = FactsCache.default().load(path)
    return Criu(path, kept.version) if kept is not None else probe_criu(path)


def _search_path(path: str | None = None) -> str:
    # The sbin dirs may be missing from PATH, yet that is where these live.
    search = os.environ.get("PATH", "") if path is None else path
    return os.pathsep.join([search, "/usr/local/sbin", "/usr/sbin", "/sbin"])

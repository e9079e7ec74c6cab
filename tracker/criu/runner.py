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
from dataclasses import dataclass, field
from pathlib import Path

from tracker.criu.facts_cache import FactsCache
from tracker.criu.log import NOISE

# Older CRIU misreads this kernel: 3.17 fails `criu check` (vDSO bounds) and
# 4.1 cannot dump any inet/packet/raw socket (SO_PASSCRED now refused).
MIN_VERSION = (4, 2, 0)

_REPO_ROOT = Path(__file__).resolve().parents[2]
_VERSION_RE = re.compile(r"^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)


@dataclass
class DumpResult:
    ok: bool
    returncode: int
    errors: list[str]
    log: str
    command: list[str] = field(default_factory=list)
    seconds: float = 0.0
    log_path: str | None = None     # kept when the images went to a directory of the caller's


@dataclass(frozen=True)
class Criu:
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
        opts = list(options)
        with contextlib.ExitStack() as scratch:
            images = str(images_dir) if images_dir is not None else scratch.enter_context(
                tempfile.TemporaryDirectory(prefix="crwatch-dump-"))
            cmd = [self.path, "dump", "-t", str(pid), "-D", images, "-v4", "-o", "dump.log",
                   *(["--leave-running"] if leave_running else []), *opts, *extra]
            started = time.monotonic()
            returncode, output = _run(cmd, timeout, on_start)
            seconds = time.monotonic() - started
            log_path = Path(images, "dump.log")  # -o is relative to -D
            log = log_path.read_text(errors="replace") if log_path.exists() else ""
        if output.strip():  # e.g. option errors printed before the log opens
            log = f"{log}{output}" if not log or log.endswith("\n") else f"{log}\n{output}"
        errors = [
            line for line in log.splitlines()
            if "Error (" in line and not any(n in line for n in NOISE)
        ]
        if returncode != 0 and not errors:
            # Failed before logging (bad option, exec error): its first words say why.
            errors = [line for line in output.splitlines() if line.strip()][:1]
        return DumpResult(returncode == 0, returncode, errors, log, cmd, seconds,
                          str(log_path) if images_dir is not None else None)


def _run(cmd: list[str], timeout: float,
         on_start: Callable[[int], None] | None = None) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    if on_start is not None:
        on_start(proc.pid)
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
    private = _REPO_ROOT / ".deps" / "bin" / "criu"
    if os.access(private, os.X_OK) and (found := known_criu(str(private))):
        return found
    system = shutil.which("criu", path=_search_path())
    return known_criu(system) if system else None


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


def _search_path() -> str:
    # The sbin dirs may be missing from PATH, yet that is where these live.
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])

"""What CRIU's own runs said about it (version, features, libraries), kept across crwatch runs.

Detecting the dumper's environment runs CRIU five times (`--version`, three
`check --feature`, `--version` under the loader's debug output), 20-30 ms each:
more than the whole audit of a small process. The answers change only when what
decides them changes, so they are kept in a file and believed while all of this
is the same as when CRIU answered:

- every file the CRIU run loaded, as the dynamic loader named them (a wrapper
  script, its shell, the binary and each library) and the path asked for, each by
  device, inode, size, mtime and ctime;
- the kernel: its release and boot id (features are the running kernel's);
- the caller's euid and effective capabilities, which CRIU inherits (`--unprivileged`,
  what its checks may try);
- the variables the loader and a wrapper search with (PATH, LD_LIBRARY_PATH, LD_PRELOAD).

Root's file lives in /run/crwatch, another user's in $XDG_RUNTIME_DIR/crwatch, and
without either nowhere (detected each run). Only a regular file in a directory that
the caller owns and nobody else may write is believed; a file unreadable, corrupt,
foreign-owned or of another schema is ignored and CRIU is asked again. Files are
written whole and renamed into place. $CRWATCH_REFRESH_CRIU=1 (or `crwatch env
--refresh`) asks CRIU again and rewrites the file.
"""
from __future__ import annotations

import json
import os
import stat
import time
import zlib
from pathlib import Path
from typing import NamedTuple

SCHEMA = "crwatch.criu-facts/1"
REFRESH_VARIABLE = "CRWATCH_REFRESH_CRIU"
ROOT_DIRECTORY = Path("/run/crwatch")
KEY_VARIABLES = ("PATH", "LD_LIBRARY_PATH", "LD_PRELOAD")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# A file changed this close before CRIU was asked may have changed under its answers
# (ctime follows a clock that lags by up to a tick): such answers are not kept.
CHANGE_MARGIN_NS = 100_000_000


class CriuFacts(NamedTuple):
    """What one CRIU said about itself here."""

    version: tuple[int, int, int]
    features: dict[str, bool]
    libraries: dict[str, bool]
    loaded: tuple[str, ...]     # absolute paths of the files its run loaded

    def to_json(self) -> dict:
        return {"version": list(self.version), "features": self.features,
                "libraries": self.libraries, "loaded": list(self.loaded)}

    @classmethod
    def from_json(cls, document: object) -> CriuFacts:
        """The facts a file holds; ValueError for anything not of their exact shape."""
        if not isinstance(document, dict):
            raise ValueError("facts are not an object")
        version, loaded = document.get("version"), document.get("loaded")
        if not (isinstance(version, list) and len(version) == 3
                and all(type(part) is int for part in version)):
            raise ValueError(f"not a version: {version!r}")
        if not (isinstance(loaded, list) and all(isinstance(path, str) for path in loaded)):
            raise ValueError(f"not a list of files: {loaded!r}")
        return cls(version=(version[0], version[1], version[2]),
                   features=_flags(document.get("features")),
                   libraries=_flags(document.get("libraries")), loaded=tuple(loaded))


def _flags(value: object) -> dict[str, bool]:
    if not (isinstance(value, dict) and all(type(flag) is bool for flag in value.values())):
        raise ValueError(f"not a table of yes/no answers: {value!r}")
    return dict(value)


class FactsCache:
    """CRIU's answers kept in `directory`, one file per CRIU path (None: kept nowhere)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @classmethod
    def default(cls) -> FactsCache:
        """Root's in /run/crwatch, another user's in $XDG_RUNTIME_DIR/crwatch, else none."""
        if os.geteuid() == 0:
            return cls(ROOT_DIRECTORY)
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        return cls(Path(runtime, "crwatch") if runtime and os.path.isabs(runtime) else None)

    def entry(self, criu_path: str) -> Path | None:
        if self.directory is None:
            return None
        # Two paths of one name only take turns at it: the file names the path it is for.
        return self.directory / f"criu-{zlib.crc32(os.fsencode(criu_path)):08x}.json"

    def load(self, criu_path: str) -> CriuFacts | None:
        """The facts kept for this CRIU while everything that decided them is unchanged;
        None when there are none to believe."""
        entry = self.entry(criu_path)
        if entry is None or refresh_asked() or not _owned_directory(entry.parent):
            return None
        try:
            descriptor = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            with os.fdopen(descriptor, "rb") as file:
                if not _owned_file(os.fstat(file.fileno())):
                    return None
                document = json.loads(file.read())
            if document.get("schema") != SCHEMA:
                return None
            facts = CriuFacts.from_json(document.get("facts"))
        except (OSError, ValueError, AttributeError):   # unreadable, corrupt, misshapen
            return None
        return facts if document.get("key") == key(criu_path, facts.loaded) else None

    def store(self, criu_path: str, facts: CriuFacts, asked_at_ns: int) -> Path | None:
        """Keep the facts CRIU gave when asked at `asked_at_ns` (time.time_ns()); not kept
        when a file they depend on changed since about then, or when there is no place of
        the caller's own to keep them. Returns the file written."""
        entry = self.entry(criu_path)
        if entry is None:
            return None
        current = key(criu_path, facts.loaded)
        if any(identity is None or identity[4] >= asked_at_ns - CHANGE_MARGIN_NS
               for identity in current["files"].values()):
            return None
        try:
            os.makedirs(entry.parent, mode=0o700, exist_ok=True)
            if not _owned_directory(entry.parent):
                return None
            temporary = entry.with_name(f".{entry.name}.{os.getpid()}.{time.monotonic_ns()}")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(descriptor, "w") as file:
                    json.dump({"schema": SCHEMA, "key": current, "facts": facts.to_json()}, file)
                os.replace(temporary, entry)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError:
            return None
        return entry


def refresh_asked() -> bool:
    return os.environ.get(REFRESH_VARIABLE, "") not in ("", "0")


def key(criu_path: str, loaded: tuple[str, ...]) -> dict:
    """Everything CRIU's answers depend on, as it is now (a JSON value)."""
    return {"criu": criu_path, "kernel": os.uname().release, "boot_id": _boot_id(),
            "euid": os.geteuid(), "capabilities": _effective_capabilities(),
            "variables": {name: os.environ.get(name) for name in KEY_VARIABLES},
            "files": {path: _identity(path) for path in (criu_path, *loaded)}}


def _identity(path: str) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:     # no boot id to tell boots apart: the time the host booted at
        return str(round(time.time() - time.monotonic()))


def _effective_capabilities() -> str:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return line.split(":", 1)[1].strip()
    return ""


def _owned_directory(directory: Path) -> bool:
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and _owned(info)


def _owned_file(info: os.stat_result) -> bool:
    return stat.S_ISREG(info.st_mode) and _owned(info)


def _owned(info: os.stat_result) -> bool:
    """The caller's own, and writable by nobody else."""
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)

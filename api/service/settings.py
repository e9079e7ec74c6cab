"""What the service is told at start: where to listen, who may call it, how to judge."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8642
DEFAULT_DB = Path("/var/lib/crwatch/history.sqlite3")
DEFAULT_DUMP_ROOT = Path("/var/lib/crwatch/dumps")


class SettingsError(ValueError):
    """Settings the service refuses to start with (the message says why)."""


@dataclass(frozen=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    profile: str = "criu"
    criu_version: tuple[int, int, int] | None = None  # None: the CRIU set-up found
    token: str | None = None         # `Authorization: Bearer TOKEN`, required off loopback
    probes: bool = True              # attach the eBPF probes (off: audits only, degraded)
    db: Path = DEFAULT_DB            # the history (SQLite, WAL)
    retention_days: float = 30.0
    criu: str | None = None          # the CRIU for gates' dumps (default: the one set-up found)
    dump_root: Path = DEFAULT_DUMP_ROOT  # a gate's images directory must be inside it
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted besides the bound address
    socket: Path | None = None       # also listen on this unix socket (None: TCP only)

    @property
    def everyone_needs_token(self) -> bool:
        """Off loopback, every request must bring the token."""
        return not _loopback(self.host)

    def check(self) -> Settings:
        if not self.token and not _loopback(self.host):
            raise SettingsError(f"listening on {self.host} needs a token (--token or "
                                f"CRWATCH_TOKEN): every caller must then send it")
        if not self.dump_root.is_absolute():
            raise SettingsError(f"the dump root must be an absolute path: {self.dump_root}")
        if self.socket is not None and not self.socket.is_absolute():
            raise SettingsError(f"the socket must be an absolute path: {self.socket}")
        return self


def host_name(name: str) -> str:
    """An --allow-host name, as Host headers are compared (lower case, no port)."""
    bare = name.strip().lower()
    if bare.startswith("[") and bare.endswith("]") and _address(bare[1:-1]):
        return bare[1:-1]  # an IPv6 address as a Host header brackets it
    if (not bare or any(c in bare for c in "/@[] \t")
            or (":" in bare and not _address(bare))):
        raise SettingsError(f"--allow-host {name!r}: give a host name or address, without a port")
    return bare


def _address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def service_url(named: str | None = None) -> str:
    """The service a client talks to: the one named, else $CRWATCH_URL, else the default
    address on this host."""
    return named or os.environ.get("CRWATCH_URL") or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"

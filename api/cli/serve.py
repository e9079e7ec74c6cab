"""`crwatch serve`: the service (probes, API) under uvicorn, on TCP and a unix socket.

Both sockets are bound before the tracker starts, so that an address in use is said
at once, and listen only once it is ready: until then a client is refused, and
`crwatch check` audits by itself. The unix socket (--socket, by default
/run/crwatch.sock for root) is where `crwatch check` asks first; anyone may
connect (0666), and sees what its uid may see (api.service.auth). A socket file left
by a service that no longer runs is replaced; one a live service answers on is not:
an error for a --socket given, a warning for the default, which is then not served.
The file is removed at exit.
"""
from __future__ import annotations

import errno
import os
import socket
import stat
import sys
from pathlib import Path

import uvicorn

from api import exit_codes
from api.service.app import create_app
from api.service.connections import IDLE_SECONDS, ConnectionGuard, guarded_protocol
from api.service.history import History, HistoryError
from api.service.settings import Settings, SettingsError, host_name
from api.service_socket import DEFAULT_SOCKET

# Open /events streams are ended by the lifespan; anything else gets this long.
GRACEFUL_SHUTDOWN_SECONDS = 5
ANSWER_TIMEOUT = 1.0   # how long a socket file's owner has to accept, to count as live


def say(line: str) -> None:
    """A line of the tracker's start, on stderr: the service listens once it is ready."""
    print(f"crwatch: {line}", file=sys.stderr, flush=True)


def run(args) -> int:
    root = os.geteuid() == 0
    try:
        settings = Settings(host=args.host, port=args.port, profile=args.profile,
                            criu_version=args.criu_version,
                            token=args.token or os.environ.get("CRWATCH_TOKEN") or None,
                            probes=not args.no_probes, db=args.db,
                            retention_days=args.retention_days, criu=args.criu,
                            dump_root=args.dump_root,
                            allowed_hosts=tuple(host_name(name) for name in args.allow_host),
                            socket=args.socket if root or args.socket != DEFAULT_SOCKET
                            else None)
        settings.check()
    except SettingsError as error:
        print(f"crwatch: {error}", file=sys.stderr)
        return exit_codes.USAGE
    if not root and settings.probes:
        print("crwatch: not running as root: the probes cannot be attached and other users' "
              "processes cannot be read; serving degraded (audits only)", file=sys.stderr)
        settings = Settings(**{**settings.__dict__, "probes": False})

    try:  # a database that cannot be opened is said in one line, before anything starts
        History(settings.db, settings.retention_days).close()
    except HistoryError as error:
        print(f"crwatch: {error}", file=sys.stderr)
        return exit_codes.USAGE

    try:
        listeners = [tcp_listener(settings.host, settings.port)]
    except OSError as error:
        print(f"crwatch: cannot listen on {settings.host}:{settings.port}: {error.strerror}",
              file=sys.stderr)
        return exit_codes.USAGE
    unix = None
    if settings.socket is not None:
        try:
            unix = UnixListener(settings.socket)
            listeners.append(unix.socket)
        except (OSError, SocketTaken) as error:
            problem = f"cannot listen on {settings.socket}: {_said(error)}"
            if settings.socket != DEFAULT_SOCKET:
                print(f"crwatch: {problem}", file=sys.stderr)
                return exit_codes.USAGE
            print(f"crwatch: {problem}; serving on TCP only", file=sys.stderr)

    connections = ConnectionGuard()
    connections.raise_fd_limit()
    # proxy_headers off: a caller is who its socket says (api.service.peer), never what an
    # X-Forwarded-For header claims. asyncio's loop, never uvloop's: uvloop stops listening
    # for good after an accept() error (out of fds), which asyncio retries.
    config = uvicorn.Config(create_app(settings, connections, progress=say),
                            host=settings.host, port=settings.port, loop="asyncio",
                            http=guarded_protocol(connections),
                            timeout_keep_alive=IDLE_SECONDS, log_level="warning",
                            access_log=False, proxy_headers=False,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    Server(config, unix).run(sockets=listeners)
    return exit_codes.OK


class Server(uvicorn.Server):
    """uvicorn's server, which removes the unix socket's file once it stops listening:
    before uvicorn raises again the signal that stopped it, which ends the process."""

    def __init__(self, config: uvicorn.Config, unix: UnixListener | None):
        super().__init__(config)
        self.unix = unix

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            if self.unix is not None:
                self.unix.remove()


def tcp_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to the address (its first, for a name), not listening yet
    (uvicorn's server listens)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise OSError(error.errno, error.strerror) from None
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError:
        listener.close()
        raise
    return listener


class SocketTaken(Exception):
    """A live service answers on the socket's path."""


class UnixListener:
    """A unix socket bound at `path`, not listening yet, that anyone may connect to; its
    directory is made (0755) if missing."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._bind()
            os.chmod(path, 0o666)  # who may see what is decided per caller's uid
            self._inode = os.stat(path).st_ino
        except BaseException:
            self.socket.close()
            raise

    def _bind(self) -> None:
        try:
            self.socket.bind(str(self.path))
            return
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
        if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
            raise SocketTaken("the path is not a socket")
        if _answers(self.path):
            raise SocketTaken("another crwatch service answers there")
        self.path.unlink()  # left by a service that no longer runs
        self.socket.bind(str(self.path))

    def remove(self) -> None:
        """Removes the socket's file, if it is still this one."""
        try:
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except OSError:
            pass


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(ANSWER_TIMEOUT)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _said(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)

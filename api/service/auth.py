"""Who may call the service, from where, and who the caller is.

With a token configured, a caller is authorized by `Authorization: Bearer
TOKEN`. Off loopback every request needs it (401 without, 403 with a wrong
one). On loopback and on the unix socket anyone may read, and sees what its own uid may
see (api.service.privacy): the kernel says which uid made the caller's socket, or
connected to the unix socket (api.service.peer); a unix caller is never trusted more
than that uid.
State-changing requests always need the token: without one configured they
are refused. Whatever the token, a Host header naming another host is refused
(421): a browser page whose name was made to resolve to 127.0.0.1 (DNS
rebinding) must not read the service.
"""
from __future__ import annotations

import hmac
import ipaddress

from fastapi import Request

from api.service.connections import UNIX_PEER
from api.service.peer import UnixPeer, tcp_peer_uid
from api.service.privacy import Viewer
from api.service.settings import Settings

LOCAL_NAMES = frozenset({"127.0.0.1", "::1", "localhost"})


def presented(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def authorized(settings: Settings, request: Request) -> bool:
    token = presented(request)
    return (settings.token is not None and token is not None
            and hmac.compare_digest(token.encode(), settings.token.encode()))


def refusal(settings: Settings, request: Request, *, changing: bool = False) -> int | None:
    """The status to refuse this request with (401/403), or None to serve it. A request
    that changes state is refused outright when no token is configured."""
    if settings.token is None:
        return 403 if changing else None
    if not (changing or (settings.everyone_needs_token and unix_caller(request) is None)):
        return None
    if presented(request) is None:
        return 401
    return None if authorized(settings, request) else 403


def viewer(settings: Settings, request: Request) -> Viewer:
    """Who is asking: the token's holder, else the uid owning the caller's socket when it
    is on this host, else nobody known."""
    if authorized(settings, request):
        return Viewer(None, everything=True)
    caller = unix_caller(request)
    if caller is not None:
        return Viewer.of(caller.uid)
    return Viewer.of(tcp_peer_uid(request.client, request.scope.get("server")))


def unix_caller(request: Request) -> UnixPeer | None:
    """Who connected, when the request came on the unix socket (None: it came over TCP)."""
    return request.scope.get("state", {}).get(UNIX_PEER)


def misdirected(settings: Settings, request: Request) -> str | None:
    """Why the Host header is refused, or None. Accepted: the bound address, the address
    the caller reached, 127.0.0.1, ::1, localhost and --allow-host names, with no port or
    the service's. A request without Host (HTTP/1.0) comes from no browser: served."""
    header = request.headers.get("host")
    if header is None:
        return None
    server = request.scope.get("server") or (settings.host, settings.port)
    name, port = _split(header)
    accepted = LOCAL_NAMES | {settings.host.lower(), str(server[0]).lower(),
                              *settings.allowed_hosts}
    if name in accepted and port in (None, server[1]):
        return None
    return (f"Host {header!r} is not this service's address: requests must name "
            f"{settings.host}, localhost or a name given with --allow-host "
            f"(a name resolving to this host is not enough: DNS rebinding)")


def _split(header: str) -> tuple[str | None, int | None]:
    """(name in lower case without IPv6 brackets, port) of a Host header; a name of None
    when it is malformed."""
    text = header.strip().lower()
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        if not bracket or not _ipv6(name):
            return None, None
    else:
        name, colon, port = text.partition(":")
        rest = colon + port
    if not rest:
        return name, None
    digits = rest[1:]
    if not rest.startswith(":") or not digits.isascii() or not digits.isdigit() or len(digits) > 5:
        return None, None
    return name, int(digits)


def _ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False

"""Who may call the service, and what an unauthorized caller may see.

With a token configured, a caller is authorized by `Authorization: Bearer
TOKEN`. Off loopback every request needs it (401 without, 403 with a wrong
one); on loopback anyone may read, but command lines and file paths are shown
only to authorized callers (redact()). State-changing requests always need it:
without a token configured they are refused.
"""
from __future__ import annotations

import hmac
import re
from typing import Any

from fastapi import Request

from api.settings import Settings

HIDDEN = "(hidden: send the token to see paths)"
# A path in a message: "/" then anything up to a blank, a quote or closing punctuation.
_PATH = re.compile(r"(?<![\w:/.])/[^\s'\",;()\[\]]+")


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
    if not (changing or settings.everyone_needs_token):
        return None
    if presented(request) is None:
        return 401
    return None if authorized(settings, request) else 403


def must_redact(settings: Settings, request: Request) -> bool:
    return settings.token is not None and not authorized(settings, request)


def redact(document: Any) -> Any:
    """The document without command lines and file paths."""
    if isinstance(document, dict):
        hidden = {}
        for key, value in document.items():
            if key == "cmdline":
                hidden[key] = []
            elif key == "target" and isinstance(value, str) and value.startswith("/"):
                hidden[key] = HIDDEN
            elif key in ("message", "detail") and isinstance(value, str):
                hidden[key] = _PATH.sub("…", value)
            else:
                hidden[key] = redact(value)
        return hidden
    if isinstance(document, list):
        return [redact(item) for item in document]
    return document

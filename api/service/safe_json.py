"""The service's JSON responses: every route's and every error's, through tracker.safe_text.

Starlette's JSONResponse encodes strict UTF-8, so one process whose name is
not UTF-8 turned a whole listing into a plain-text 500. This class is the
application's default_response_class, and the error handlers use it too.
"""
from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from tracker.safe_text import json_bytes


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json_bytes(content)

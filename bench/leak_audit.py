"""Which endpoints show an unprivileged caller what only root may read, endpoint by
endpoint: a real `crwatch serve` run from the checkout given (default: this one), a root
process holding files and sockets with hostile names in a directory only root may list
(tests/service/test_privilege.py's subject), every endpoint asked by uid 65534 and `/events` read
by it, each raw body searched for those names. Run as root:

    python -m bench.leak_audit [CHECKOUT [SERVE-ARGUMENT...]]

e.g. `python -m bench.leak_audit . --token T`: with a token set, asked without it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from tests.service import test_privilege as case  # noqa: E402
from tests.support.callers import NOBODY, StreamAs, get_as  # noqa: E402
from tests.support.subjects import subject  # noqa: E402

START_TIMEOUT = 600.0
SERVE = "import sys; from api.cli.main import main; sys.exit(main())"


def _serve(checkout: Path, port: int, database: str, extra: list[str]) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-c", SERVE, "serve", "--port", str(port),
                               "--db", database, *extra], cwd=checkout,
                              env=dict(os.environ, PYTHONPATH=str(checkout)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise SystemExit("crwatch serve did not start") from None
            time.sleep(0.5)


def _audit(port: int) -> list[tuple[str, int, list[str]]]:
    stream = StreamAs(NOBODY, port)
    lines = stream.lines()
    next(lines)  # ready
    with subject(case.ROOT_SUBJECT) as running:
        for path in case._endpoints(running.pid):  # root first: its verdicts are recorded
            case._get(port, path)
        time.sleep(1.0)  # the history writer batches every 50 ms
        rows = []
        for path in case._endpoints(running.pid) + ["/environment"]:
            status, body = get_as(NOBODY, port, path)
            leaked = case._leaks(body)
            if path == "/environment" and b"/root" in body:
                leaked.append("/root (the service's PATH)")
            rows.append((path.replace(str(running.pid), "{pid}"), status, leaked))
        try:
            case._await(lines, running.pid, "nocr")
        finally:
            stream.close()
    leaked = sorted({name for raw in stream.raw for name in case._leaks(raw)})
    return rows + [("/events (read by uid 65534)", 200, leaked)]


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    checkout = Path(arguments[0] if arguments else HERE).resolve()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scratch = tempfile.mkdtemp(prefix="crwatch-leaks-")
    server = _serve(checkout, port, f"{scratch}/history.sqlite3", arguments[1:])
    case.SECRET_DIR.mkdir(mode=0o700)
    try:
        for path, status, leaked in _audit(port):
            shown = "LEAKS " + ", ".join(map(repr, leaked)) if leaked else "nothing"
            print(f"{path:50} {status}  {shown}")
    finally:
        shutil.rmtree(case.SECRET_DIR)
        shutil.rmtree(scratch)
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()

"""The dashboard in a real headless Chromium (Debian's, driven by Playwright)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.support.namespaces import NESTED_PID_NS
from tests.support.requirements import CHROMIUM
from tests.support.servers import Server
from tests.support.subjects import subject

pytestmark = [pytest.mark.bpf, pytest.mark.browser]

SCREENSHOT = Path(__file__).resolve().parents[2] / "build" / "dashboard.png"
WAIT_MS = 20_000          # the list refreshes every second, the page every two


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    running = Server("--db", str(tmp_path_factory.mktemp("dashboard") / "history.sqlite3"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium is missing: scripts/setup.sh installs it"
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to run its sandbox as root
        launched = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


def test_the_dashboard_shows_who_is_not_checkpointable_why_and_what_happened(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.wait_for_selector("#health.ok", timeout=WAIT_MS)
    with subject("fd = os.open('/dev/kvm', os.O_RDONLY)\nready(str(fd))\nhold()") as s:
        # live: the transition arrives over /events, the row with the next refresh
        page.wait_for_selector(f'#timeline li.nocr[data-pid="{s.pid}"]', timeout=WAIT_MS)
        # A locator, not an element handle: the list is redrawn as rows change.
        row = page.locator(f'#not-checkpointable tr[data-pid="{s.pid}"]')
        row.wait_for(timeout=WAIT_MS)
        text = row.inner_text(timeout=WAIT_MS)
        assert "blocked" in text and "device.chr.unsupported" in text
        assert int(page.inner_text('#verdict-counts [data-verdict="blocked"]').split(": ")[1]) >= 1
        page.wait_for_selector('#reason-counts tr[data-code="device.chr.unsupported"]',
                               timeout=WAIT_MS)
        row.click(timeout=WAIT_MS)  # drill down: verdict, fds and history
        page.wait_for_selector(f'#detail[data-pid="{s.pid}"]', timeout=WAIT_MS)
        device = page.inner_text(f'#detail-fds tr[data-fd="{s.note}"]')
        assert "/dev/kvm" in device and "device.chr.unsupported" in device
        assert "blocked" in page.inner_text("#detail-verdict")
        assert "transition nocr" in page.inner_text("#detail-history")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    # it leaves: cr arrives live, and the row goes with the next refresh
    page.wait_for_selector(f'#timeline li.cr[data-pid="{s.pid}"]', timeout=WAIT_MS)
    page.wait_for_selector(f'#not-checkpointable tr[data-pid="{s.pid}"]', state="detached",
                           timeout=WAIT_MS)
    assert SCREENSHOT.stat().st_size > 10_000
    assert errors == []
    print(f"\ndashboard screenshot: {SCREENSHOT}")


def test_the_dashboard_judges_the_tree_rooted_at_each_process_when_asked(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.wait_for_selector("#health.ok", timeout=WAIT_MS)
    with subject(NESTED_PID_NS) as root:
        # Its own findings are fine; its tree (a grandchild in a nested pid namespace) is not.
        page.select_option("#scope", "tree")
        # A locator, not an element handle: the list is redrawn as rows change.
        row = page.locator(f'#not-checkpointable tr[data-pid="{root.pid}"]')
        row.wait_for(timeout=WAIT_MS)
        page.wait_for_function(
            f'document.querySelector(\'#not-checkpointable tr[data-pid="{root.pid}"] td.tree\')'
            f'?.textContent === "blocked (3 processes)"', timeout=WAIT_MS)
        assert row.locator("td.verdict-ok").inner_text(timeout=WAIT_MS) == "ok"
        row.click(timeout=WAIT_MS)
        page.wait_for_selector(f'#detail[data-pid="{root.pid}"]', timeout=WAIT_MS)
        verdict = page.inner_text("#detail-verdict")
        assert "tree of 3 processes: blocked" in verdict and "namespace.nested" in verdict
        page.select_option("#scope", "process")  # judged by its own findings: not listed
        page.wait_for_selector(f'#not-checkpointable tr[data-pid="{root.pid}"]',
                               state="detached", timeout=WAIT_MS)
    assert errors == []


# Opens /dev/kvm (so it is listed: blocked), then becomes uid 65534 and names itself with
# markup, a colour escape and a byte that is not UTF-8; its command line holds markup too.
HOSTILE = """
kvm = os.open("/dev/kvm", os.O_RDONLY)
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b"<script>\\x1b[31m\\xff"), 0, 0, 0)
ready(); hold()
# <img src=x onerror="window.pwned = 1"> \x1b[2J
"""


def test_a_hostile_name_is_shown_as_text_with_its_escapes_never_run(server, browser):
    from tracker.safe_text import visible

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.wait_for_selector("#health.ok", timeout=WAIT_MS)
    with subject(HOSTILE) as s:
        row = page.locator(f'#not-checkpointable tr[data-pid="{s.pid}"]')
        row.wait_for(timeout=WAIT_MS)
        assert row.locator("td").nth(1).inner_text(timeout=WAIT_MS) == "<script>\\x1b[31m\\xff"
        row.click(timeout=WAIT_MS)
        page.wait_for_selector(f'#detail[data-pid="{s.pid}"]', timeout=WAIT_MS)
        title = page.inner_text("#detail-title")
        assert title.startswith(f"<script>\\x1b[31m\\xff (pid {s.pid})")
        assert '<img src=x onerror="window.pwned = 1"> \\x1b[2J' in title
        assert page.locator("#detail-title img, #not-checkpointable script").count() == 0
    assert page.evaluate("window.pwned") is None and errors == []
    # The page's `shown` mirrors tracker.safe_text.visible for what JSON can carry.
    samples = ["plain", "a\tb\nc\rd", "".join(map(chr, range(0x20))) + "\x7f\x80\x9b\x9f\xa0",
               "\u061c\u200d\u200e\u200f\u2028\u2029\u202a\u202e\u2066\u2069\ufffd\ufffe\uffff",
               "\\xff is text", "日本 💀"]
    assert page.evaluate("(samples) => samples.map(shown)", samples) == list(map(visible, samples))

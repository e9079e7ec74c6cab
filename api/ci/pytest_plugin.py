"""pytest plugin (opt-in: `pytest --crwatch`): a test fails when a process it started
became non-checkpointable during the test, with the reasons in the failure message.

The processes of a test are the descendants of the pytest process that go
`nocr` while the test runs (pytest is made their child subreaper, so that a
daemonized grandchild still counts). `@pytest.mark.crwatch_allow("--tcp-established")`
allows CRIU options for one test; `--crwatch-allow` for all of them. The
transitions come from a running crwatch service, else from a `crwatch watch`
of the plugin's own (root).
"""
from __future__ import annotations

import os

import pytest

MARKER = "crwatch_allow"


def pytest_addoption(parser) -> None:
    group = parser.getgroup("crwatch", "checkpointability of the processes tests start")
    group.addoption("--crwatch", action="store_true",
                    help="fail a test whose processes became non-checkpointable during it")
    group.addoption("--crwatch-allow", action="append", default=[], metavar="OPTION",
                    help="a CRIU option every test's processes may need (repeatable)")
    group.addoption("--crwatch-profile", default="criu", choices=("criu", "strict"),
                    help="dumper profile to judge by (default: criu)")
    group.addoption("--crwatch-service", metavar="URL",
                    help="the crwatch service whose events to use (default: $CRWATCH_URL, "
                         "else a local one when it answers, else the plugin's own probes)")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(*options): CRIU options this test's "
                                       "processes may need, e.g. '--tcp-established'")
    if config.getoption("crwatch"):
        config.pluginmanager.register(CheckpointWatch(config), "crwatch-watch")


class CheckpointWatch:
    def __init__(self, config):
        # The tracker is imported only once --crwatch is given: every pytest run where
        # crwatch is installed loads this plugin (an entry point) and would pay for it.
        from api.ci.feed import FeedError, choose_feed
        from api.ci.recorder import Members, Recorder, become_subreaper
        from tracker.profiles import profile

        self.allow = list(config.getoption("crwatch_allow"))
        self.members = Members(root=os.getpid(), excluded=set())
        self.recorder = Recorder(self.members, profile(config.getoption("crwatch_profile")),
                                 self.allow)
        feed, base = choose_feed(self.recorder.on_line, config.getoption("crwatch_service"),
                                 config.getoption("crwatch_profile"))
        if feed is None:
            raise pytest.UsageError("--crwatch needs root (for its probes) or a crwatch "
                                    f"service (none answers at {base})")
        try:
            self.feed = feed.start()
        except FeedError as error:
            raise pytest.UsageError(f"--crwatch: {error}") from None
        self.recorder.follow(self.feed)
        become_subreaper()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        self.feed.barrier()  # what came before the test is not the test's
        before = {key: len(member.episodes) for key, member in self.members.known.items()}
        result = yield
        self.feed.barrier()
        allowed = self.allow + [option for mark in item.iter_markers(MARKER)
                                for option in mark.args]
        failures = self._failures(before, allowed)
        if failures:
            pytest.fail("processes of this test became non-checkpointable:\n"
                        + "\n".join(failures), pytrace=False)
        return result

    def _failures(self, before: dict, allowed: list[str]) -> list[str]:
        from tracker import verdict  # as in __init__: only with --crwatch
        from tracker.criu import options
        from tracker.safe_text import visible

        parsed = options.parse_allow(allowed)
        lines = []
        for key, member in list(self.members.known.items()):
            if member.pid in self.members.excluded:
                continue  # the feed's own helper
            for episode in member.episodes[before.get(key, 0):]:
                blocking = verdict.blocking_reasons(episode.reasons, parsed)
                if not blocking:
                    continue
                span = (f"for {episode.duration_ms:.0f} ms" if episode.until
                        else "until the end of the test")
                lines.append(f"  pid {member.pid} ({member.comm}) "
                             f"`{' '.join(member.cmdline)[:80]}`, from {episode.since} {span}:")
                lines += [f"    {r['severity']}: {r['message']} [{r['code']}]; fix: {r['remedy']}"
                          for r in blocking]
        return [visible(line) for line in lines]  # names and paths never move the terminal

    def pytest_unconfigure(self, config) -> None:
        self.feed.close()

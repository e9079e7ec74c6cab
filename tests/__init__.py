"""crwatch's tests, grouped by what they prove.

- unit/: each part on fixtures and small real processes: /proc parsing, the checks'
  judgements, the wire format, the live table fed synthetic events, the history, the
  event hub, the catalogue's documents. Most need no root; test_layout.py holds the
  architecture (no import loops, the layering, package docstrings).
- agreement/: crwatch's verdict on a real process in a real state agrees with what the
  real CRIU does when it dumps it (every test_agree_*.py; the table of their results is
  written to docs/criu-agreement.md by a whole run), the dumper's environment, and the
  differential fuzzer.
- live/: the eBPF probes and the tracker: each state's `nocr` transition arrives, and
  the tracked state agrees with a fresh audit.
- gate/: the checkpoint-time gate freezes, rechecks and hands real trees to the real
  CRIU, and nothing it passes does CRIU refuse.
- service/: `crwatch serve` over real HTTP: documents, events, history, privacy, load,
  and the dashboard in Chromium.
- ci/: `crwatch run` and the pytest plugin on real workloads.
- cli/: `crwatch check` and `crwatch rules` as a user runs them.
- support/: helpers only, never tests: subjects (processes set up in a state), servers,
  trackers, the agreement harness, the import graph, the requirements plugin.

Markers (pyproject.toml) say what a test needs of the machine: `root`, `bpf` (the probes
load), `criu` (CRIU >= 4.2 runs), `browser` (Chromium for Playwright). A test whose need
is unmet here skips with the reason, summed up at the end of the run
(support/requirements.py); every other test runs for anyone.

Running them:
- `make unit`: the unit tests, without root and without scripts/setup.sh (a .venv with
  `pip install -e .[dev]` is enough); the tests marked root, bpf or criu skip.
- `make test`: the whole suite, as root, as CI runs it. With CI set nothing may skip:
  a run that is not root stops at once (status 3), and a skipped test fails the run
  (status 1), listed in the summary.
- one group: `.venv/bin/python -m pytest -q -p no:cacheprovider tests/gate` (after
  `set -a; . ./.deps/env; set +a`); `-m "not (root or bpf or criu or browser)"` selects
  what needs nothing, `-m criu` what runs CRIU.
"""

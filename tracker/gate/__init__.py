"""The checkpoint-time gate: freeze a tree, recheck it under the freeze, judge, thaw, and
hand it to CRIU.

- recheck.py: the gate itself (one call: freeze, audit, judge, thaw, dump).
- freeze.py, freeze_helper.py, freeze_guard.py: the freezer helper process and the
  owner's watch over it.
- own_processes.py: crwatch's own processes, which the gate refuses to freeze.

May import: tracker.audit, tracker.verdict, tracker.criu, tracker.live.probe_found,
tracker.procfs. Nothing in tracker/ imports this package."""

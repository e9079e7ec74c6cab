"""The checkpoint-time gate: freeze a tree, recheck it under the freeze, judge, thaw, and
hand it to CRIU.

- recheck.py: the gate itself (one call: freeze, audit, judge, thaw, dump).
- freeze.py, freeze_helper.py, freeze_guard.py: the freezer helper process and the
  owner's watch over it; ready_helper.py starts helpers, and keeps one ready ahead of
  the next gate for a process that runs many (the service).
- standalone.py: how the helper and dump_answer.py are started (from their cached
  bytecode).
- own_processes.py: crwatch's own processes, which the gate refuses to freeze.
- held_dump.py, dump_answer.py: a dump's CRIU started with the freeze and held at its
  pre-dump action script until the verdict answers it.

May import: everything of tracker below it -- procfs, context, environment, checks (the
gate's own rules), audit, profiles, verdict, criu -- and tracker.live.probe_found (what
only the probes know joins the recheck's verdict). Never api. Nothing else in tracker/
imports this package; freeze_helper.py and dump_answer.py import nothing of crwatch at
all (they run as `python -I -S`, standard library only)."""

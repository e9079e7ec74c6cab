"""The tracker: what crwatch knows about whether a process tree can be checkpointed, and
how it follows that as the tree changes. The HTTP service, the CLI and CI gating are api/,
which builds on this package; nothing here imports api.

Layers, bottom up; a module imports its own layer and the layers below, never above
(tests/unit/test_layout.py holds it to this, and to no import loops):

- `procfs` (reading /proc: the one place OS errors become ProcessGone / AccessDenied),
  `proc_locks` (/proc/locks, which a command may begin reading ahead of its imports),
  `rules` (the Rule and Finding types), `safe_text` (text safe to print), `clock`
  (times for people and for ordering events), `supervised` (background work that
  survives its failures), and `criu.options` (CRIU's option syntax);
- `criu/`: finding and running CRIU, and reading its log back;
- `environment` (the facts about the CRIU that would dump: credentials, network-lock
  tools, features), which asks the CRIU found; `holders` (who holds each pipe and
  socket on the host);
- `context`: what every check may consult besides the process it looks at;
- `checks/`: one module per resource family, the catalogue of their rules, the
  routing of each fd to the check that owns its kind;
- `audit` (walk a tree, run the checks, collect findings) and `profiles` (how severe
  each rule is for a given dumper);
- `verdict`: findings judged under a profile, as the crwatch.verdict/1 document;
- on top: `gate/` (freeze, recheck, judge and dump at checkpoint time) and `live/` (the
  probes' events applied to a live table of what is checkpointable now).
"""

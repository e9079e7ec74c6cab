"""CI gating: follow a process tree's transitions (from a running service's /events, else
a `crwatch watch` of its own) and report what went non-checkpointable.

feed.py reads the transitions and keeps a barrier; recorder.py turns those of the
followed tree into episodes and audits; report.py makes the report (crwatch.run/1,
its text, JUnit XML); run.py runs a command and follows its tree, the engine of
`crwatch run`; pytest_plugin.py fails a test whose processes went non-checkpointable.

May import: tracker, api.render, api.service.settings (where a service listens).
Never api.cli: the pytest plugin uses this package without the command line, so exit
statuses are decided there, from what run.py returns.
"""

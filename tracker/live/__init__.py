"""Live tracking: the probes' events applied to a table of which processes are `nocr`
now, why, and since when.

- applier.py: the Tracker: attaches the probes, seeds the table, applies events on a
  supervised thread, and tells subscribers; startup.py: the phases of its start, with a
  progress line at each step.
- table.py: the table core (LiveTable): the lock, the apply of each event dispatched by
  its kind, the transitions an apply makes, and what the table answers.
- entries.py: the entries and marks, and the only code that changes them (Entries), with
  the Batch that records each change of an apply.
- handlers/: one module per resource family (fds, PI futexes, memory, ptrace, locks, pid
  namespaces, process life, losses), each registering the event kinds it applies.
- reconcile.py: the table against /proc audits: seeding, re-audits after a loss, drift
  against a frozen recheck.
- model.py: the records (marks, entries, transitions, counters); reads.py: what /proc
  says about the one resource an event names; probe_found.py: what only probes know,
  joined to a verdict; probe_choice.py: which optional probes the served profiles need,
  and what a verdict misses without them.

Inside, imports go one way: model, reads, probe_choice, startup < entries < reconcile < handlers < table <
applier. May import: probes, tracker.audit, tracker.checks, tracker.procfs,
tracker.verdict and what they stand on (rules, context, profiles, holders, environment,
supervised, clock). Never api. Nothing below it (audit, checks, verdict) imports this package."""

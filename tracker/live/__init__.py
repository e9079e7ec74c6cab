"""Live tracking: the probes' events applied to a table of which processes are `nocr`
now, why, and since when.

- applier.py: the Tracker: attaches the probes, seeds the table, applies events on a
  supervised thread, and tells subscribers.
- table.py: the live table itself; model.py its records; reads.py what /proc says
  about the one resource an event names; probe_found.py what only probes know,
  joined to a verdict.

May import: probes, tracker.audit and tracker.checks (to judge what /proc shows),
tracker.verdict. Nothing below it (audit, checks, verdict) imports this package."""

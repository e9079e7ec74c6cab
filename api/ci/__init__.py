"""CI gating: `crwatch run -- CMD` and the pytest plugin, which follow a process tree's
transitions (from a running service's /events, else a `crwatch watch` of their own) and
report what went non-checkpointable.

May import: tracker, api.render, api.service.settings (where a service listens)."""

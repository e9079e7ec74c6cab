"""The HTTP service (`crwatch serve`): a FastAPI application over the tracker.

- app.py: create_app(settings), its lifespan (which makes and starts the Service),
  the guard middleware and the errors answered as problems.
- deps.py: what a route depends on (ServiceDep, ViewerDep), the one reader of the
  application's state; routes/: one router per resource; static/: the dashboard page.
- state.py: the Service, which owns the parts below and hands each the collaborators it
  uses, and ProcessRows, the process list kept current; errors.py: the errors they raise.
- audit_cache.py (audits kept for reuse), process_list.py and tree_rows.py (the list's
  page and its trees' verdicts), gates.py (POST /processes/{pid}/gate), metrics.py
  (/metrics), history.py (the SQLite history), event_hub.py (/events fan-out).
- settings.py, auth.py, peer.py (who calls), privacy.py (what they may see),
  caller_dumper.py (whose dumper judges a `crwatch check` asked on the unix socket),
  connections.py (the server's connection limits), models.py (the documents' schemas),
  safe_json.py (JSON for names that are not UTF-8).

May import: tracker, probes, api.render, api.rules_document, api.check_output,
api.exit_codes. Never api.cli or api.ci (they
import this package, for `crwatch serve` and to find a service). Within the package only
app.py (which builds the Service) and deps.py (which hands it to the routes) import
state.py: the parts the Service owns never see it."""

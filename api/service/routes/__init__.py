"""One router per resource, included by app.py: processes (the list, a process's verdict,
fds, history and gate), check (/check: `crwatch check`'s output, for its front end),
events (/events), rules, environment, health (/healthz), metrics and dashboard (/).

A handler takes what it needs as dependencies (api.service.deps: ServiceDep, ViewerDep),
returns the Service's documents as the caller may see them (api.service.privacy), and
declares their schemas (api.service.models). May import: api.service (never app.py),
api.rules_document, api.check_output and api.exit_codes, tracker. Never api.cli or api.ci."""

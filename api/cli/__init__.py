"""The `crwatch` command line: the parser (main.py) and one module per command.

May import: tracker, probes, api.render, api.rules_document, api.service (serve and
settings), api.ci (run)."""

"""The `crwatch` command line.

main.py holds the parser and the dispatch; arguments.py the argument types and
groups several commands share; exit_codes.py the one table of exit statuses,
which every command returns from. One module per command, each with
`add_arguments(parser)` and `run(args)` returning its exit status: check.py,
rules.py, env.py, watch.py, gate.py, criu_hook.py (also the `crwatch-criu-hook`
command; no arguments), run.py (the command-line side of CI gating: arguments,
report files, exit status) and serve.py, whose arguments are in serve_arguments.py
(serve.py loads the service as it is imported).

May import: tracker, probes (watch), api.render, api.rules_document, api.ci (run),
api.service.settings (defaults, where a service listens), and for serve only
api.service.app, .connections and .history. No other package imports api.cli: it is
an entry point, not a library.
"""

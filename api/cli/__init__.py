"""The `crwatch` command line.

main.py holds the parser and the dispatch; arguments.py the argument types and
groups several commands share; every command returns from the one table of exit
statuses, api/exit_codes.py. One module per command, each with
`add_arguments(parser)` and `run(args)` returning its exit status: check.py,
rules.py, env.py, watch.py, gate.py, criu_hook.py (also the `crwatch-criu-hook`
command; no arguments), run.py (the command-line side of CI gating: arguments,
report files, exit status) and serve.py, whose arguments are in serve_arguments.py
(serve.py loads the service as it is imported).
launcher.c is the compiled front end installed as `crwatch`: it has a running
service answer `crwatch check` on its unix socket, and runs this command line for
everything else.

May import: tracker, probes (watch), api.render, api.rules_document, api.check_output,
api.exit_codes, api.service_socket, api.ci (run), api.service.settings (defaults, where
a service listens), and for serve only api.service.app, .connections and .history. No
other package imports api.cli: it is an entry point, not a library.
"""

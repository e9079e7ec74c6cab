"""What crwatch offers its users, three products over the tracker:

- service/: the HTTP service (`crwatch serve`) and its dashboard;
- cli/: the `crwatch` command line, one module per command;
- ci/: CI gating (`crwatch run -- CMD` and the pytest plugin);
- render.py and rules_document.py: verdicts and the rule catalogue as text and as JSON,
  shared by all three; check_output.py: what `crwatch check` prints and exits with,
  whether the CLI or the service judged; service_socket.py: where the command finds a
  running service; exit_codes.py: every command's exit statuses.

May import: tracker, probes. Nothing in tracker/ or probes/ imports this package; the
service imports neither cli nor ci, and ci does not import cli."""

"""Where `crwatch check` finds a running service on this host: the unix socket root's
service also listens on, and the variables that name another socket or ask for the
audit here. Read by the service's settings, the check command's help and the compiled
front end's build (scripts/build-launcher.sh), so that the three never disagree; a
module of its own so that `crwatch check` reads it without the service's settings."""
from __future__ import annotations

from pathlib import Path

# $CRWATCH_SOCKET names another socket, and $CRWATCH_LOCAL=1 (or `check --local`) audits
# here. Not in /run/crwatch, which CRIU's facts keep private (0700): every user must
# reach it.
DEFAULT_SOCKET = Path("/run/crwatch.sock")
SOCKET_VARIABLE, LOCAL_VARIABLE = "CRWATCH_SOCKET", "CRWATCH_LOCAL"

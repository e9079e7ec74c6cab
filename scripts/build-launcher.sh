#!/usr/bin/env bash
# Builds api/cli/launcher.c, the `crwatch` command (set-up installs it as .venv/bin/crwatch;
# the tests build their own): OUT is the program to write, PYTHON the interpreter it runs
# the Python command line with. The socket and variable names come from the code that
# serves and reads them, so that the two never disagree.
#
#   scripts/build-launcher.sh OUT PYTHON
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 OUT PYTHON" >&2; exit 2; }
OUT=$1
PYTHON=$2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
read -r SOCKET SOCKET_VARIABLE LOCAL_VARIABLE REFRESH_VARIABLE < <(PYTHONPATH=$ROOT "$PYTHON" -P -c '
from api.service_socket import DEFAULT_SOCKET, LOCAL_VARIABLE, SOCKET_VARIABLE
from tracker.criu.facts_cache import REFRESH_VARIABLE
print(DEFAULT_SOCKET, SOCKET_VARIABLE, LOCAL_VARIABLE, REFRESH_VARIABLE)')
gcc -O2 -Wall -Wextra -Werror \
    -DCRWATCH_PYTHON="\"$PYTHON\"" -DCRWATCH_SOCKET="\"$SOCKET\"" \
    -DCRWATCH_SOCKET_VARIABLE="\"$SOCKET_VARIABLE\"" -DCRWATCH_LOCAL_VARIABLE="\"$LOCAL_VARIABLE\"" \
    -DCRWATCH_REFRESH_VARIABLE="\"$REFRESH_VARIABLE\"" \
    "$ROOT/api/cli/launcher.c" -o "$OUT.tmp"
mv "$OUT.tmp" "$OUT"

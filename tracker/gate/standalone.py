"""How the gate starts its standard-library-only programs: freeze_helper.py, dump_answer.py.

Both start on the gate's critical path, the helper before the freeze and the answer
script while CRIU waits for the verdict. Run as `python -I -S PATH`, a program's source is
compiled at every start (Python caches no script's bytecode: 2 ms for the helper). Run
as `python -I -S -c LOADER PATH ARGS...` it is imported from its directory instead, from
__pycache__ once written, and its `main(ARGS)` runs. The path stays in the command line,
where own_processes.py and the tests know the program by. Once main has returned, the
program exits at once, without the interpreter's teardown (1 ms that CRIU waits for after
the answer, and the gate after the thaw): each flushes what it writes when it writes it.
"""
from __future__ import annotations

import sys
from pathlib import Path

# The directory goes last on sys.path: the standard library is never shadowed by it.
LOADER = ("import posix, sys\n"
          "directory, _, name = sys.argv.pop(1).rpartition('/')\n"
          "sys.path.append(directory)\n"
          "posix._exit(__import__(name.removesuffix('.py')).main(sys.argv[1:]))\n")


def command(program: Path, *arguments: str) -> list[str]:
    """The command line that runs `program` (a module of this directory) with `arguments`."""
    return [sys.executable, "-I", "-S", "-c", LOADER, str(program), *arguments]

"""Subject code for paths longer than a single system call takes."""
from __future__ import annotations

# Descends from `base` through directories of 250-byte names until the path is `length`
# bytes long with `leaf` as its last component (a shorter last directory absorbs the
# rest), creating each, and leaves the process there.
DESCEND = """
def descend(base, length, leaf):
    os.chdir(base)
    path = base
    while len(path) + 1 + len(leaf) < length:
        left = length - len(path) - 1 - len(leaf) - 1   # what is left for this directory
        name = "d" * min(250, left) if left != 1 and left - 250 != 1 else "d" * (left - 2)
        os.mkdir(name)
        os.chdir(name)
        path += "/" + name
    assert len(path) + 1 + len(leaf) == length, (len(path), length)
    return path + "/" + leaf
"""

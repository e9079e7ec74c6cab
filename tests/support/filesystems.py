"""Real file systems for the tests: for the history's, a small tmpfs to fill and an ext4
image whose files can be made immutable (ext4 refuses writes to an immutable file even
through a descriptor opened before, as a real read-only failure does); for the mount
tree's, a btrfs image with a subvolume."""
from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHUNK = 1 << 16


@contextmanager
def small_tmpfs(directory: Path, size: str = "4m") -> Iterator[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "crwatch-history",
                    str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


@contextmanager
def ext4_image(directory: Path, size: str = "16m") -> Iterator[Path]:
    """An ext4 file system in a file, mounted over a loop device (freed at unmount)."""
    image = directory.with_name(directory.name + ".img")
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)  # -m 0: root too
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)
        image.unlink()


def btrfs_image(image: Path, subvolume: str = "volume", size: str = "128m") -> Path:
    """A btrfs file system in a file, with one subvolume; mount it with `-o loop` (the loop
    device goes with its last mount)."""
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, stdout=subprocess.DEVNULL)
    top = image.with_name(image.name + ".top")
    top.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(top)], check=True)
    try:
        subprocess.run(["btrfs", "subvolume", "create", str(top / subvolume)], check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        subprocess.run(["umount", str(top)], check=True)
        top.rmdir()
    return image


@contextmanager
def full(directory: Path) -> Iterator[Path]:
    """A file that takes every free byte of the file system, removed at the end."""
    filler = directory / "filler"
    chunk = bytes(CHUNK)
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                os.write(descriptor, chunk)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[:len(chunk) // 2]  # the last blocks, to the byte
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        yield filler
    finally:
        filler.unlink()


@contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """chattr +i on these files for the duration (undone for those it was set on, should
    one fail: a file left immutable would fail every later test of the directory)."""
    done: list[Path] = []
    try:
        for path in paths:
            subprocess.run(["chattr", "+i", str(path)], check=True)
            done.append(path)
        yield
    finally:
        if done:
            subprocess.run(["chattr", "-i", *map(str, done)], check=True)

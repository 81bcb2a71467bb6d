"""Durable file operations: fsync of files and directories, atomic replacement.

A rename is atomic with respect to crashes only once the directory holding it has
been fsynced; a new file's content is durable only once the file itself has been.
Every helper here takes a ``checkpoint`` callback that is called with a name
*before* each step that changes the disk, so a crash test can kill the process
between any two of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from device.checkpoint import Checkpoint, no_checkpoint

__all__ = ["Checkpoint", "atomic_write", "fsync_dir", "fsync_file", "no_checkpoint", "remove_tree",
           "scrub_file"]


def fsync_dir(path: Path) -> None:
    """Make the entries of ``path`` (creations, renames, unlinks) durable.

    Raises:
        OSError: The directory cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make the content of the regular file ``path`` durable.

    Raises:
        OSError: The file cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600,
                 checkpoint: Checkpoint = no_checkpoint, name: str = "write") -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory.

    After a crash the file holds either its old content or ``data``, never a mix.

    Raises:
        OSError: The file cannot be written.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    checkpoint(f"{name}.temp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        checkpoint(f"{name}.fsync")
        os.fsync(fd)
    finally:
        os.close(fd)
    checkpoint(f"{name}.rename")
    os.replace(tmp, path)
    checkpoint(f"{name}.fsync_dir")
    fsync_dir(path.parent)


def scrub_file(path: Path) -> None:
    """Overwrite a file with zeros and sync it (best effort against later recovery).

    On flash storage with wear levelling the old blocks may survive; this is the
    same best effort as the gallery store's ``secure_delete``.

    Raises:
        OSError: The file cannot be written.
    """
    size = path.stat().st_size
    block = b"\0" * min(size, 1 << 20)
    with path.open("r+b") as fh:
        left = size
        while left > 0:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n
        fh.flush()
        os.fsync(fh.fileno())


def remove_tree(path: Path, *, scrub: bool = False) -> None:
    """Delete a directory tree (scrubbing its regular files first when asked).

    Missing paths are ignored. The parent directory is not fsynced here.

    Raises:
        OSError: Something cannot be deleted.
    """
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        if scrub and path.is_file() and not path.is_symlink():
            scrub_file(path)
        path.unlink()
        return
    if scrub:
        for file in sorted(path.rglob("*")):
            if file.is_file() and not file.is_symlink():
                scrub_file(file)
    shutil.rmtree(path)

"""Ways a gallery file gets damaged in the field, each seeded and repeatable.

``DAMAGE`` maps a name to a function that damages a file in place: one 4 KiB page
overwritten with seeded random bytes (page 1, page 4 or the last page), the file
truncated to half its pages, or emptied to zero bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

PAGE = 4096


def overwrite_page(seek: int | None) -> Callable[[Path], None]:
    """Overwrite page ``seek`` (None: the last page) with seeded random bytes, like
    ``dd if=/dev/urandom of=g.db bs=4096 seek=N count=1 conv=notrunc``."""
    def damage(path: Path) -> None:
        pages = path.stat().st_size // PAGE
        at = pages - 1 if seek is None else seek
        assert at < pages, f"{path} has {pages} pages; page {at} is not inside it"
        noise = np.random.default_rng(1600 + at).bytes(PAGE)
        with path.open("r+b") as fh:
            fh.seek(at * PAGE)
            fh.write(noise)
    return damage


def truncate_half(path: Path) -> None:
    os.truncate(path, (path.stat().st_size // PAGE // 2) * PAGE)


def zero_bytes(path: Path) -> None:
    os.truncate(path, 0)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "page-1": overwrite_page(1), "page-4": overwrite_page(4),
    "last-page": overwrite_page(None), "truncated": truncate_half, "zero-bytes": zero_bytes,
}


def fingerprint(path: Path) -> tuple[int, str]:
    """``(size, sha256)`` of a file's bytes."""
    data = path.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()

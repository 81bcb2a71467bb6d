"""The gallery the service searches: a :class:`~device.gallery.sync.live.LiveGallery`.

The frame loop takes ``LiveGallery.current()`` once per frame (one attribute read, no
lock) and uses it for the search *and* for the version in the event, so an answer
never mixes two versions. A gallery sync calls ``LiveGallery.on_switched(new_path,
version)``: the new index is built while the old one keeps answering, then swapped
with one assignment — the pipeline keeps matching during a swap.

What this module adds for the service:

* a unit with no gallery file yet (fresh from provisioning, before its first sync or
  enrolment) runs with an empty gallery: every face is unknown, nothing is published;
* the search kernel is compiled before the frame loop starts (numba compiles on the
  first search: a second-long stall the first face would otherwise pay).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import MappingProxyType

import numpy as np

from device.gallery.index import GalleryIndex, Precision
from device.gallery.sync.live import ActiveGallery, LiveGallery

logger = logging.getLogger(__name__)


def warm_up(dim: int, precision: Precision) -> None:
    """Run one search on a throw-away one-row index (compiles the kernel once per process)."""
    vector = np.zeros((1, dim), dtype=np.float32)
    vector[0, 0] = 1.0
    with GalleryIndex.build(np.array([1]), "warm-up", vector, precision=precision) as index:
        index.search_identities(vector[0], k=1)


def open_gallery(path: Path | None, *, model_id: str, dim: int,
                 precision: Precision = "float32") -> LiveGallery:
    """The live gallery of ``path``; an empty one (version 0) while the file is missing
    (``None``: no gallery file at all, as in a benchmark).

    Raises:
        GalleryError: The file exists but is of another model or dimension, or unreadable.
    """
    warm_up(dim, precision)
    if path is not None and path.exists():
        live = LiveGallery.open(path, model_id=model_id, dim=dim, precision=precision)
        active = live.current()
        logger.info("gallery %s: version %d, %d identities, %d faces", path, active.version,
                    len(active.labels), len(active.index))
        return live
    if path is not None:
        logger.warning("no gallery at %s yet: every face is unknown until one is enrolled "
                       "or synced", path)
    empty = ActiveGallery(0, "", model_id, GalleryIndex(dim, precision=precision),
                          MappingProxyType({}), path or Path(""))
    return LiveGallery(empty, model_id=model_id, dim=dim, precision=precision)


def gallery_version(live: LiveGallery) -> int | None:
    """The version being searched; ``None`` while no gallery file has been loaded."""
    active = live.current()
    return active.version if active.gallery_id else None

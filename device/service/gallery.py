"""The gallery the service searches: a :class:`~device.gallery.live.LiveGallery`.

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
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import numpy as np

from device.gallery.live import ActiveGallery, LiveGallery
from device.gallery.search.index import GalleryIndex, Precision
from device.gallery.store import GalleryStore

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
                          MappingProxyType({}), Path(""))
    return LiveGallery(empty, model_id=model_id, dim=dim, precision=precision)


def gallery_version(live: LiveGallery) -> int | None:
    """The version being searched; ``None`` while no gallery file has been loaded."""
    active = live.current()
    return active.version if active.gallery_id else None


class GalleryWatcher:
    """Reloads the live gallery when its file changes under the running service.

    A sync run by this service calls ``on_switched`` itself; this catches the rest:
    ``facegate gallery enroll``/``delete`` writing the same file (its ``revision``
    moves), and ``facegate sync apply`` in another process switching the file the
    gallery path resolves to. :meth:`check` costs one small SQLite read.

    Args:
        live: The live gallery to reload.
        path: The configured gallery path (a file, or the sync's symlink).
        model_id: Refuse files of another model.
        dim: Refuse files of another dimension.
        on_loaded: Called after each reload.
    """

    def __init__(self, live: LiveGallery, path: Path, *, model_id: str, dim: int,
                 on_loaded: Callable[[], None] | None = None) -> None:
        self._live = live
        self._on_loaded = on_loaded
        self._path = path
        self._model_id = model_id
        self._dim = dim
        self._seen = self._stamp()

    def _stamp(self) -> tuple[Path, int, int] | None:
        target = self._path.resolve()
        if not target.is_file():
            return None
        with GalleryStore(target, model_id=self._model_id, dim=self._dim) as store:
            meta = store.metadata()
        return target, meta.version, meta.revision

    def check(self) -> bool:
        """Reload if the file, its version or its revision changed; True when reloaded.

        Raises:
            GalleryError: The changed file cannot be loaded (the old gallery stays).
        """
        stamp = self._stamp()  # read before loading: a later write is caught next time
        if stamp is None or stamp == self._seen:
            return False
        target, version, revision = stamp
        self._live.on_switched(target, version)
        self._seen = stamp
        if self._on_loaded is not None:
            self._on_loaded()
        logger.info("gallery %s changed (version %d, revision %d): reloaded", target,
                    version, revision)
        return True

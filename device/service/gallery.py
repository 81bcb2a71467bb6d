"""The gallery the service searches: a :class:`~device.gallery.live.LiveGallery`.

The frame loop takes ``LiveGallery.current()`` once per frame (one attribute read, no
lock) and uses it for the search *and* for the version in the event, so an answer
never mixes two versions. A gallery sync calls ``LiveGallery.on_switched(new_path,
version)``: the new index is built while the old one keeps answering, then swapped
with one assignment — the pipeline keeps matching during a swap.

What this module adds for the service:

* a unit with no gallery file yet (fresh from provisioning, before its first sync or
  enrolment) runs with an empty gallery: every face is unknown, nothing is published;
* a gallery file that exists but is damaged, truncated or empty is refused: the
  service runs without matching (so a sync or a restored file can replace it) and
  :class:`GalleryStatus` says why, for health;
* :class:`GalleryWatcher` logs one WARNING when a check starts failing and one INFO
  when it works again, not an error per poll;
* the search kernel is compiled before the frame loop starts (numba compiles on the
  first search: a second-long stall the first face would otherwise pay).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np

from device.errors import GalleryError
from device.gallery.integrity import GalleryDamagedError, damaged, open_problems
from device.gallery.live import ActiveGallery, LiveGallery
from device.gallery.schema import connect, read_metadata
from device.gallery.search.index import GalleryIndex, Precision

logger = logging.getLogger(__name__)


def warm_up(dim: int, precision: Precision) -> None:
    """Run one search on a throw-away one-row index (compiles the kernel once per process)."""
    vector = np.zeros((1, dim), dtype=np.float32)
    vector[0, 0] = 1.0
    with GalleryIndex.build(np.array([1]), "warm-up", vector, precision=precision) as index:
        index.search_identities(vector[0], k=1)


GalleryState = Literal["loaded", "missing", "refused", "none"]
_TEXT_MAX = 500  # the health schema's limit for a message


class GalleryStatus:
    """What the service knows about its gallery file, for health (thread-safe).

    ``state`` is ``loaded`` (matching on it), ``missing`` (no file yet: every face is
    unknown), ``refused`` (the file is damaged or unusable: not matching; ``error``
    says why and how to recover) or ``none`` (no gallery path configured).
    ``warning`` is the latest failed check of a changed file while the loaded
    gallery stays in use.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._state: GalleryState = "none" if path is None else "missing"
        self._error: str | None = None
        self._warning: str | None = None

    def set(self, state: GalleryState, error: str | None = None) -> None:
        with self._lock:
            self._state, self._error, self._warning = state, error, None

    def warn(self, warning: str | None) -> None:
        with self._lock:
            self._warning = warning

    @property
    def state(self) -> GalleryState:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def matching(self) -> bool:
        """False when a gallery file exists but was refused."""
        return self._state != "refused"

    def to_json(self) -> dict[str, object]:
        with self._lock:
            return {"state": self._state, "path": _short(self.path),
                    "error": _short(self._error), "warning": _short(self._warning)}


def _short(value: object, limit: int = _TEXT_MAX) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _empty(model_id: str, dim: int, precision: Precision) -> LiveGallery:
    empty = ActiveGallery(0, "", model_id, GalleryIndex(dim, precision=precision),
                          MappingProxyType({}), Path(""))
    return LiveGallery(empty, model_id=model_id, dim=dim, precision=precision)


def open_gallery(path: Path | None, *, model_id: str, dim: int,
                 precision: Precision = "float32",
                 status: GalleryStatus | None = None) -> LiveGallery:
    """The live gallery of ``path``; an empty one (version 0) while the file is missing
    (``None``: no gallery file at all, as in a benchmark).

    A file that exists is checked as it is opened (see
    :class:`~device.gallery.store.GalleryStore`): a zero-byte, truncated or damaged
    file is refused, never used. With ``status``, a refused file leaves the service
    with an empty gallery (no matching) and ``status`` in state ``refused`` with the
    reason; without it the error is raised.

    Raises:
        GalleryError: The file exists but is of another model or dimension, or
            unreadable; :class:`GalleryDamagedError` when damaged (without ``status``).
    """
    warm_up(dim, precision)
    if path is not None and (path.exists() or path.is_symlink()):
        try:
            live = LiveGallery.open(path, model_id=model_id, dim=dim, precision=precision)
        except GalleryDamagedError as exc:
            if status is None:
                raise
            logger.error("%s; the service runs without matching until the gallery is "
                         "replaced", exc)
            status.set("refused", str(exc))
            return _empty(model_id, dim, precision)
        active = live.current()
        logger.info("gallery %s: version %d, %d identities, %d faces", path, active.version,
                    len(active.labels), len(active.index))
        if status is not None:
            status.set("loaded")
        return live
    if path is not None:
        logger.warning("no gallery at %s yet: every face is unknown until one is enrolled "
                       "or synced", path)
    if status is not None:
        status.set("missing" if path is not None else "none")
    return _empty(model_id, dim, precision)


def gallery_version(live: LiveGallery) -> int | None:
    """The version being searched; ``None`` while no gallery file has been loaded."""
    active = live.current()
    return active.version if active.gallery_id else None


class GalleryWatcher:
    """Reloads the live gallery when its file changes under the running service.

    A sync run by this service calls ``on_switched`` itself; this catches the rest:
    ``facegate gallery enroll``/``delete`` writing the same file (its ``revision``
    moves), ``facegate sync apply`` in another process switching the file the
    gallery path resolves to, and a refused gallery being replaced. :meth:`check`
    costs one small read-only SQLite read; the full check runs only on a change.

    A check that fails (a full disk, a damaged new file) is logged once as a
    WARNING per distinct condition and once as INFO when checks work again; the
    gallery in use stays.

    Args:
        live: The live gallery to reload.
        path: The configured gallery path (a file, or the sync's symlink).
        model_id: Refuse files of another model.
        dim: Refuse files of another dimension.
        on_loaded: Called after each reload.
        status: Updated on every reload and failed check (for health).
    """

    def __init__(self, live: LiveGallery, path: Path, *, model_id: str, dim: int,
                 on_loaded: Callable[[], None] | None = None,
                 status: GalleryStatus | None = None) -> None:
        self._live = live
        self._on_loaded = on_loaded
        self._path = path
        self._model_id = model_id
        self._dim = dim
        self._status = status
        self._condition: str | None = None
        refused = status is not None and not status.matching
        try:
            self._seen = None if refused else self._stamp()
        except (GalleryError, sqlite3.Error, OSError) as exc:
            self._seen = None
            self._failed(str(exc))

    def _stamp(self) -> tuple[Path, int, int] | None:
        target = self._path.resolve()
        if not target.is_file():
            return None
        conn = connect(target, "ro", 5.0)
        try:
            if not conn.execute("PRAGMA page_count").fetchone()[0]:  # emptied under us
                raise damaged(target, open_problems(conn, target))
            meta = read_metadata(conn)
        finally:
            conn.close()
        if meta is None:
            raise GalleryError(f"gallery {target} has no metadata row")
        return target, meta.version, meta.revision

    def _failed(self, condition: str) -> None:
        if condition != self._condition:
            if self._status is not None and not self._status.matching:
                logger.warning("gallery still refused (not matching): %s", condition)
            else:
                logger.warning("gallery check failed (the gallery in use stays): %s", condition)
            self._condition = condition
        else:
            logger.debug("gallery check still failing: %s", condition)
        if self._status is not None and self._status.matching:
            self._status.warn(condition)

    def _recovered(self) -> None:
        if self._condition is not None:
            logger.info("gallery check works again (was: %s)", self._condition)
            self._condition = None
            if self._status is not None and self._status.matching:
                self._status.warn(None)

    def check(self, *, strict: bool = False) -> bool:
        """Reload if the file, its version or its revision changed; True when reloaded.

        A failed check or reload is logged (see the class) and the old gallery stays.
        Periodic checks never raise for the gallery's sake; a sync's switch hook asks
        for ``strict`` so that a file it cannot load makes the sync undo the switch.

        Raises:
            GalleryError, sqlite3.Error, OSError: Only with ``strict``.
        """
        try:
            stamp = self._stamp()  # read before loading: a later write is caught next time
        except (GalleryError, sqlite3.Error, OSError) as exc:
            self._failed(str(exc))
            if strict:
                raise
            return False
        if stamp is None or stamp == self._seen:
            self._recovered()
            return False
        target, version, revision = stamp
        try:
            self._live.on_switched(target, version)
        except (GalleryError, OSError) as exc:
            self._failed(f"changed gallery not loaded: {exc}")
            if strict:
                raise
            return False
        self._seen = stamp
        self._recovered()
        if self._status is not None:
            self._status.set("loaded")
        if self._on_loaded is not None:
            self._on_loaded()
        logger.info("gallery %s changed (version %d, revision %d): reloaded", target,
                    version, revision)
        return True

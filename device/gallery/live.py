"""The gallery the pipeline searches, swapped whole when a sync switches files.

The pipeline never stops for an update. It takes :meth:`LiveGallery.current` once
per decision (one attribute read) and uses that :class:`ActiveGallery` for the
search *and* for the ``gallery_version`` of the event it publishes, so every answer
comes from exactly one version, and the first decision taken after
:meth:`LiveGallery.on_switched` returns carries the new version.

:meth:`LiveGallery.on_switched` is the ``on_switched`` callback of
:class:`~device.sync.apply.GallerySync`: it loads the new file into a new
:class:`~device.gallery.search.index.GalleryIndex` while the old one keeps answering, then
publishes it with one assignment. If loading fails it raises and the old gallery
stays (the sync then switches the files back).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Self

from device.errors import GalleryError
from device.gallery.search.index import GalleryIndex, Precision
from device.gallery.store import GalleryStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveGallery:
    """One loaded gallery version: what a decision searches and reports.

    Attributes:
        version: The gallery's version (goes into every match event).
        gallery_id: Its lineage id.
        model_id: Its embedder.
        index: The search index over its faces.
        labels: Identity id -> display label.
        path: The file it was loaded from (symlinks resolved).
    """

    version: int
    gallery_id: str
    model_id: str
    index: GalleryIndex
    labels: MappingProxyType[str, str]
    path: Path


def load_gallery(path: Path, *, model_id: str | None = None, dim: int | None = None,
                 precision: Precision = "float32") -> ActiveGallery:
    """Read a gallery file into a new index.

    Raises:
        GalleryError: The file is missing, of another model/dimension, or unreadable.
    """
    with GalleryStore(path, model_id=model_id, dim=dim) as store:
        meta = store.metadata()
        matrix = store.load_matrix()
        labels = {i.id: i.label for i in store.list_identities()}
    index = GalleryIndex(meta.dim, precision=precision) if not len(matrix.face_ids) else (
        GalleryIndex.build(matrix.face_ids, matrix.identity_ids, matrix.matrix,
                           precision=precision))
    return ActiveGallery(meta.version, meta.gallery_id, meta.model_id, index,
                         MappingProxyType(labels), path.resolve())


class LiveGallery:
    """Holds the active gallery; readers take it lock-free, a sync replaces it.

    Args:
        initial: The gallery loaded at start-up.
        model_id: Refuse to load galleries of another model.
        dim: Refuse to load galleries of another dimension.
        precision: Index precision.
    """

    def __init__(self, initial: ActiveGallery, *, model_id: str | None = None,
                 dim: int | None = None, precision: Precision = "float32") -> None:
        self._active = initial
        self._retired: GalleryIndex | None = None
        self._model_id = model_id
        self._dim = dim
        self._precision: Precision = precision
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, model_id: str | None = None, dim: int | None = None,
             precision: Precision = "float32") -> LiveGallery:
        """Load ``path`` (the live gallery symlink or file).

        Raises:
            GalleryError: As :func:`load_gallery`.
        """
        return cls(load_gallery(path, model_id=model_id, dim=dim, precision=precision),
                   model_id=model_id, dim=dim, precision=precision)

    def current(self) -> ActiveGallery:
        """The gallery to use for one decision (search and event together)."""
        return self._active

    def on_switched(self, path: Path, version: int) -> None:
        """Load the gallery a sync just switched to and make it current.

        The old index keeps answering while the new one is built. The index retired
        by the *previous* switch is closed now: a reader that held it has had a
        whole update to finish.

        Raises:
            GalleryError: The new file cannot be loaded or is not ``version``; the
                old gallery stays current.
        """
        with self._lock:
            loaded = load_gallery(path, model_id=self._model_id, dim=self._dim,
                                  precision=self._precision)
            if loaded.version != version:
                loaded.index.close()
                raise GalleryError(f"{path} holds version {loaded.version}, not {version}")
            old, self._active = self._active, loaded
            retired, self._retired = self._retired, old.index
        if retired is not None:
            retired.close()
        logger.info("search index now on gallery version %d (%d faces)", version,
                    len(loaded.index))

    def refresh(self, live: Path) -> bool:
        """Reload when ``live`` now resolves to another file than the active gallery's.

        For switches made by another process (``facegate sync apply`` from a USB stick
        while the service runs): call it now and then (it costs one ``readlink``).

        Returns:
            True when a new gallery was loaded.

        Raises:
            GalleryError: The new file cannot be loaded; the old gallery stays current.
        """
        target = live.resolve()
        if target == self._active.path or not target.is_file():
            return False
        with GalleryStore(target, model_id=self._model_id, dim=self._dim) as store:
            version = store.metadata().version
        self.on_switched(target, version)
        return True

    def close(self) -> None:
        """Close the indexes (idempotent)."""
        with self._lock:
            retired, self._retired = self._retired, None
            active = self._active
        if retired is not None:
            retired.close()
        active.index.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

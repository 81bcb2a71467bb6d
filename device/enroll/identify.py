"""1:N identification against a gallery store: candidates, their FMR, the decision.

:class:`GallerySearcher` loads a :class:`~device.gallery.store.GalleryStore` into a
:class:`~device.gallery.search.index.GalleryIndex` and answers searches from it. After a
commit (an enrollment, a delete) :meth:`GallerySearcher.refresh` reads the store
again, builds a new index while the old one keeps answering and publishes it with
one attribute write (a snapshot swap). A search takes the published
:class:`LoadedGallery` once, so it sees one committed state of the gallery: every
face of an identity, or none of them — never half an enrollment, because the store
writes an identity and its faces in one transaction and :meth:`load_matrix` reads one
snapshot.

Every load logs the threshold in force and the expected false-positive
identification rate for the gallery's size
(:func:`~device.service.thresholds.log_expected_fpir`). The threshold and the match
rule are the service's (:class:`~device.service.thresholds.Threshold`).

Privacy: a probe's embedding lives only in memory for the search; nothing here
writes it anywhere, and results hold similarities, never vectors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Literal, Self

import numpy as np
import numpy.typing as npt

from device.errors import GalleryError
from device.gallery.search.index import GalleryIndex, Precision
from device.gallery.store import GalleryStore
from device.service.thresholds import Threshold, log_expected_fpir
from device.types import Image
from device.vision.detect import Detector
from device.vision.embed import Embedder
from device.vision.quality import QualityConfig, assess
from device.vision.stills import embed_faces

logger = logging.getLogger(__name__)

Decision = Literal["match", "unknown"]

@dataclass(frozen=True)
class Candidate:
    """One gallery identity close to a probe.

    Attributes:
        identity_id: The identity.
        label: Its display name.
        face_id: Its most similar face.
        similarity: Cosine similarity to that face.
        fmr_at_similarity: The FMR at this similarity: the false-match rate a threshold
            placed here would have (calibrated; None when the model has no table). Not
            the threshold FMR.
        fmr_upper_bound: True when ``fmr_at_similarity`` is only an upper bound (the
            similarity is above every impostor comparison the table measured).
    """

    identity_id: str
    label: str
    face_id: int
    similarity: float
    fmr_at_similarity: float | None
    fmr_upper_bound: bool

    def to_json(self) -> dict[str, object]:
        fmr = self.fmr_at_similarity
        return {"identity_id": self.identity_id, "label": self.label, "face_id": self.face_id,
                "similarity": round(self.similarity, 6),
                "fmr_at_similarity": None if fmr is None else float(f"{fmr:.3g}"),
                "fmr_at_similarity_upper_bound": self.fmr_upper_bound}


@dataclass(frozen=True)
class SearchResult:
    """The answer for one probe.

    Attributes:
        candidates: Best identities first.
        decision: ``match`` when the best candidate reaches the threshold.
        threshold: The threshold applied.
        revision: The gallery revision searched.
    """

    candidates: tuple[Candidate, ...]
    decision: Decision
    threshold: float
    revision: int

    @property
    def match(self) -> Candidate | None:
        """The matched candidate, if any."""
        return self.candidates[0] if self.decision == "match" else None


@dataclass(frozen=True)
class LoadedGallery:
    """One loaded state of the gallery: what a search uses, all from one commit.

    Attributes:
        revision: Store revision it was read at.
        version: Published gallery version.
        index: Search index over its faces.
        labels: Identity id → label.
        identities: Number of identities with faces.
        faces: Number of faces.
        expected_fpir: ``1 - (1 - FMR)^faces`` at the threshold.
    """

    revision: int
    version: int
    index: GalleryIndex
    labels: Mapping[str, str]
    identities: int
    faces: int
    expected_fpir: float


class GallerySearcher:
    """Search a gallery store with a calibrated threshold; reload after commits.

    A context manager; :meth:`close` is idempotent. Searches may run from any number
    of threads while one thread calls :meth:`refresh`.

    Args:
        store: The gallery (kept open by the caller).
        threshold: The threshold in force (from
            :func:`~device.service.thresholds.resolve_threshold`), with the table that
            gives each candidate's FMR at its similarity.
        precision: Index precision.
        threads: Threads per search (default: the index's).

    Raises:
        GalleryError: The threshold is for another model than the gallery's, or the
            gallery cannot be read.
    """

    def __init__(self, store: GalleryStore, threshold: Threshold, *,
                 precision: Precision = "float32", threads: int | None = None) -> None:
        if threshold.model_id != store.model_id:
            raise GalleryError(f"the threshold is for model {threshold.model_id!r}, the "
                               f"gallery {store.path} holds {store.model_id!r} embeddings")
        self.store = store
        self.threshold = threshold
        self._precision: Precision = precision
        self._threads = threads
        self._lock = threading.Lock()
        self._retired: GalleryIndex | None = None
        self._loaded = self._load()

    def _load(self) -> LoadedGallery:
        meta = self.store.metadata()  # before the matrix: never claim a newer revision
        matrix = self.store.load_matrix()
        labels = {i.id: i.label for i in self.store.list_identities()}
        n = len(matrix.face_ids)
        if n:
            index = GalleryIndex.build(matrix.face_ids, matrix.identity_ids, matrix.matrix,
                                       precision=self._precision, threads=self._threads)
        else:
            index = GalleryIndex(meta.dim, precision=self._precision, threads=self._threads)
        identities = len(set(matrix.identity_ids))
        fpir = log_expected_fpir(self.threshold, identities, n, f"gallery {self.store.path}")
        return LoadedGallery(meta.revision, meta.version, index, MappingProxyType(labels),
                             identities, n, fpir)

    def current(self) -> LoadedGallery:
        """The published gallery state (one attribute read)."""
        return self._loaded

    def refresh(self, *, force: bool = False) -> bool:
        """Reload when the store changed since the last load; swap the index in.

        Returns:
            True when a new state was published.

        Raises:
            GalleryError: The store cannot be read; the old state stays published.
        """
        with self._lock:
            if not force and self.store.metadata().revision == self._loaded.revision:
                return False
            loaded = self._load()
            old, self._loaded = self._loaded, loaded
            # The index retired by the previous swap has had a whole reload to finish
            # its searches; closing only stops its worker threads anyway.
            if self._retired is not None:
                self._retired.close()
            self._retired = old.index
            logger.debug("gallery revision %d -> %d", old.revision, loaded.revision)
            return True

    def search(self, vector: npt.ArrayLike, k: int = 5) -> SearchResult:
        """The ``k`` best identities for one probe embedding and the decision.

        Raises:
            GalleryError: Bad vector (shape, not finite, zero) or ``k``.
        """
        loaded = self._loaded
        hits = loaded.index.search_identities(np.asarray(vector, dtype=np.float32), k)
        candidates = []
        for h in hits:
            at = self.threshold.fmr_at(h.similarity)
            candidates.append(Candidate(
                h.identity_id, loaded.labels.get(h.identity_id, h.identity_id), h.face_id,
                h.similarity, None if at is None else at[0], at is not None and at[1]))
        decision: Decision = ("match" if candidates
                              and self.threshold.matches(candidates[0].similarity) else "unknown")
        return SearchResult(tuple(candidates), decision, self.threshold.value, loaded.revision)

    def close(self) -> None:
        """Stop the indexes' worker threads. Idempotent."""
        with self._lock:
            self._loaded.index.close()
            if self._retired is not None:
                self._retired.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class FaceIdentification:
    """One face of a photo and who it is.

    Attributes:
        box: ``(x, y, w, h)`` in the photo's pixels.
        detector_score: The detection's score.
        quality_reasons: Live quality gate reasons (informative; the face is still
            searched).
        result: Candidates and decision.
    """

    box: tuple[float, float, float, float]
    detector_score: float | None
    quality_reasons: tuple[str, ...]
    result: SearchResult

    def to_json(self) -> dict[str, object]:
        match = self.result.match
        return {
            "box": [round(v, 1) for v in self.box],
            "detector_score": None if self.detector_score is None
            else round(self.detector_score, 4),
            "quality_reasons": list(self.quality_reasons),
            "decision": self.result.decision,
            "identity_id": None if match is None else match.identity_id,
            "label": None if match is None else match.label,
            "candidates": [c.to_json() for c in self.result.candidates],
        }


def identify_image(
    image: Image,
    detector: Detector,
    embedder: Embedder,
    searcher: GallerySearcher,
    *,
    k: int = 5,
    all_faces: bool = True,
    quality: QualityConfig | None = None,
) -> list[FaceIdentification]:
    """Detect, embed and search every face of a photo (or only the largest).

    Faces failing the live quality gate are still searched; their reasons are
    reported alongside. A photo where nothing is found is padded and searched again
    (tight crops).

    Raises:
        ModelError: The detector or embedder failed.
        GalleryError: The embedder is not the gallery's model.
    """
    if embedder.model_id != searcher.store.model_id:
        raise GalleryError(f"the embedder runs {embedder.model_id!r}, the gallery holds "
                           f"{searcher.store.model_id!r} embeddings")
    cfg = quality or QualityConfig.live()
    faces = embed_faces(image, detector, embedder, all_faces=all_faces)
    out = []
    for face in faces:
        reasons: Sequence[str] = ()
        if face.detection is not None:
            reasons = tuple(str(r) for r in assess(image, face.detection, cfg).reasons)
        out.append(FaceIdentification(
            face.box, None if face.detection is None else float(face.detection.score),
            tuple(reasons), searcher.search(face.embedding.vector, k)))
    return out

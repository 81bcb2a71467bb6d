"""Track templates on photo sequences: mean of ``k`` faces against the single best face.

A *sequence* stands in for a track: ``k`` photos of one person in a row. From a
labelled set (one sub-folder per identity, photos in file-name order):

* **gallery**: the first photo of every identity (one face each);
* **sequences**: for every identity with at least ``k + 1`` photos, its other photos
  cut into consecutive, disjoint groups of ``k`` (a remainder is dropped);
* **genuine** comparisons: each sequence against its own identity's gallery face;
  **impostor** comparisons: each sequence against every other identity's gallery face;
* **template** mode scores the sequence's quality-weighted mean embedding
  (:func:`device.service.template.mean_template`); **best** mode scores its
  highest-quality face alone (the face a single-face decision trusts most).

Each mode gets its own threshold at the target FMR, from its own impostor scores
over the *same* sequence–gallery pairs; FNIR is the share of genuine comparisons
below it. The template's impostor scores are what its calibration table is built
from (:func:`device.lab.calibration.build_table`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from device.errors import ImageError
from device.imageio import read_image
from device.lab import metrics
from device.service.template import mean_template
from device.types import FloatArray
from device.vision.align import align
from device.vision.embed import Embedder
from device.vision.quality import QualityConfig, assess
from device.vision.stills import StillFaceFinder

logger = logging.getLogger(__name__)

#: FMRs the comparison reports.
TEMPLATE_FMRS: tuple[float, ...] = (1e-3, 1e-4)

Progress = Callable[[int], object]


@dataclass(frozen=True)
class Faces:
    """One embedding and quality score per photo with a face (in memory only).

    Attributes:
        labels: Identity per row.
        paths: Photo per row (relative to the set's root).
        vectors: ``(n, d)`` unit embeddings.
        quality: ``(n,)`` live quality scores (0-1).
        missed: Photos without a detected face (left out).
    """

    labels: tuple[str, ...]
    paths: tuple[str, ...]
    vectors: FloatArray = field(repr=False)
    quality: npt.NDArray[np.float64] = field(repr=False)
    missed: tuple[str, ...] = ()


def embed_with_quality(root: Path, relative: Sequence[str], labels: Sequence[str],
                       finder: StillFaceFinder, embedder: Embedder,
                       progress: Progress | None = None) -> Faces:
    """Embed each photo's largest face and score its quality (live preset).

    Raises:
        ImageError: No face in any photo.
        ModelError: A model failed.
    """
    quality = QualityConfig.live()
    vectors: list[FloatArray] = []
    scores: list[float] = []
    kept: list[str] = []
    kept_labels: list[str] = []
    missed: list[str] = []
    for rel, label in zip(relative, labels, strict=True):
        try:
            image = read_image(root / rel)
        except ImageError as exc:
            logger.warning("left out: %s", exc)
            missed.append(rel)
        else:
            found = finder.find(image, largest_only=True)
            if not found:
                missed.append(rel)
            else:
                face = found[0]
                vectors.append(embedder.embed([align(image, face, embedder.template)])[0].vector)
                scores.append(assess(image, face, quality).score)
                kept.append(rel)
                kept_labels.append(label)
        if progress is not None:
            progress(1)
    if not vectors:
        raise ImageError(f"{root}: no face found in any of {len(relative)} photos")
    return Faces(tuple(kept_labels), tuple(kept), np.vstack(vectors).astype(np.float32),
                 np.asarray(scores, dtype=np.float64), tuple(missed))


def needed_photos(relative: Sequence[str], labels: Sequence[str], k: int
                  ) -> tuple[list[str], list[str]]:
    """The photos the protocol uses: every photo of identities with ``k + 1`` or more,
    only the first (a gallery face) of the others."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    seen: set[str] = set()
    out_rel, out_labels = [], []
    for rel, label in zip(relative, labels, strict=True):
        if counts[label] >= k + 1 or label not in seen:
            out_rel.append(rel)
            out_labels.append(label)
        seen.add(label)
    return out_rel, out_labels


@dataclass(frozen=True)
class Sequences:
    """Gallery rows and the sequences cut from a labelled set.

    Attributes:
        gallery: Row of each identity's gallery face.
        gallery_labels: Identity of each gallery row.
        sequences: ``(s, k)`` rows of each sequence's faces.
        sequence_labels: Identity of each sequence.
    """

    gallery: npt.NDArray[np.int64]
    gallery_labels: tuple[str, ...]
    sequences: npt.NDArray[np.int64]
    sequence_labels: tuple[str, ...]


def make_sequences(labels: Sequence[str], k: int) -> Sequences:
    """The protocol of the module doc, rows in the order of ``labels``.

    Raises:
        ValueError: ``k < 1``, or no identity has ``k + 1`` photos.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        rows.setdefault(label, []).append(i)
    gallery, gallery_labels, seqs, seq_labels = [], [], [], []
    for label, idx in rows.items():
        gallery.append(idx[0])
        gallery_labels.append(label)
        rest = idx[1:]
        for start in range(0, len(rest) - k + 1, k):
            seqs.append(rest[start:start + k])
            seq_labels.append(label)
    if not seqs:
        raise ValueError(f"no identity has {k + 1} or more photos with a face: no sequences")
    return Sequences(np.asarray(gallery, np.int64), tuple(gallery_labels),
                     np.asarray(seqs, np.int64).reshape(len(seqs), k), tuple(seq_labels))


def probe_vectors(faces: Faces, seqs: Sequences, mode: str) -> FloatArray:
    """One probe per sequence: the ``mean`` template or the ``best`` (top-quality) face.

    Raises:
        ValueError: Unknown mode.
    """
    if mode == "mean":
        return np.vstack([mean_template(faces.vectors[r], faces.quality[r])
                          for r in seqs.sequences]).astype(np.float32)
    if mode == "best":
        best = [r[int(np.argmax(faces.quality[r]))] for r in seqs.sequences]
        out: FloatArray = faces.vectors[np.asarray(best, np.int64)]
        return out
    raise ValueError(f"unknown template mode {mode!r} (mean or best)")


def scores(faces: Faces, seqs: Sequences, mode: str
           ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Genuine and impostor similarities of every sequence against the gallery."""
    probes = probe_vectors(faces, seqs, mode).astype(np.float64)
    sim = probes @ faces.vectors[seqs.gallery].astype(np.float64).T
    same = np.asarray(seqs.sequence_labels)[:, None] == np.asarray(seqs.gallery_labels)[None, :]
    return sim[same], sim[~same]


@dataclass(frozen=True)
class ModeResult:
    """One mode's figures at each target FMR.

    Attributes:
        mode: ``mean`` or ``best``.
        genuine: Genuine comparisons.
        impostors: Impostor comparisons.
        points: ``(target FMR, threshold, measured FMR, FNIR)``; threshold and FNIR
            None when the impostors cannot resolve the target.
    """

    mode: str
    genuine: int
    impostors: int
    points: tuple[tuple[float, float | None, float | None, float | None], ...]

    def fnir_at(self, fmr: float) -> float | None:
        return next(p[3] for p in self.points if p[0] == fmr)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "genuine": self.genuine, "impostors": self.impostors,
                "at_fmr": [{"target_fmr": f, "threshold": t, "fmr": m, "fnir": n,
                            "resolvable": t is not None} for f, t, m, n in self.points]}


def evaluate_mode(genuine: npt.NDArray[np.float64], impostor: npt.NDArray[np.float64],
                  mode: str, fmrs: Sequence[float] = TEMPLATE_FMRS) -> ModeResult:
    """FNIR at each target FMR, with the threshold from these impostor scores.

    A comparison matches when its similarity is at or above the threshold (the
    service's rule): the threshold is the lowest impostor-derived value whose
    measured FMR (share of impostors ``>=`` it) is at most the target.
    """
    imp = np.sort(impostor)[::-1]
    n = imp.size
    points: list[tuple[float, float | None, float | None, float | None]] = []
    for fmr in fmrs:
        allowed = math.floor(fmr * n + 1e-9)
        if allowed < 1:
            points.append((fmr, None, None, None))
            continue
        t = float(np.nextafter(imp[allowed], np.inf)) if allowed < n else float(imp[-1])
        measured = float((impostor >= t).mean())
        fnir = float((genuine < t).mean())
        points.append((fmr, t, measured, fnir))
    return ModeResult(mode, int(genuine.size), int(n), tuple(points))


def operating_tar(genuine: npt.NDArray[np.float64], impostor: npt.NDArray[np.float64],
                  fmr: float) -> metrics.OperatingPoint:
    """The metrics module's operating point (strict ``>``), for cross-checks."""
    return metrics.operating_point(np.sort(genuine), np.sort(impostor), fmr)

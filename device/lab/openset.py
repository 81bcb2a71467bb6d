"""Labelled face sets and open-set 1:N evaluation (FNIR at fixed FPIR).

:func:`embed_tree` turns a folder tree (one sub-folder per identity) into one
embedding per image, in memory only; :func:`open_set_split` and
:func:`evaluate_open_set` measure open-set 1:N identification:

* **gallery**: the first image (sorted by file name) of each identity with at least
  two images, except the identities held out (below);
* **mated searches**: the other images of the enrolled identities;
* **non-mated searches**: every image of the identities that are never enrolled —
  the identities with exactly one image, plus a seeded, held-out share
  (``unenrolled_fraction``) of the identities with two or more;
* each search returns the best gallery identity and its similarity; at threshold
  ``t`` a search *alarms* when that similarity is ``>= t``;
* **FPIR(t)**: share of non-mated searches that alarm;
* **FNIR(t)**: share of mated searches that do not return their own identity at
  rank 1 with similarity ``>= t``;
* **FNIR at FPIR = f**: FNIR at the lowest threshold whose measured FPIR is
  ``<= f``. With ``N`` non-mated searches an FPIR below ``1 / N`` cannot be told from
  zero, so such a target is reported as not resolvable (no FNIR is claimed).

Embeddings are never written anywhere; results hold only rates and counts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from device.errors import ImageError
from device.gallery.search.index import GalleryIndex
from device.imageio import iter_image_files, read_image
from device.lab.evaluation import Pair
from device.types import FloatArray
from device.vision.detect import Detector
from device.vision.embed import Embedder
from device.vision.stills import embed_faces

logger = logging.getLogger(__name__)

#: FPIR targets reported by default.
DEFAULT_FPIRS = (1e-2, 1e-3)

Progress = Callable[[Path], object]


@dataclass(frozen=True)
class LabelledEmbeddings:
    """One embedding per image of a labelled set (in memory only).

    Attributes:
        root: The folder the paths are relative to.
        paths: Image paths relative to ``root``.
        labels: Identity of each image (its folder name).
        matrix: ``(n, dim)`` unit embeddings, row ``i`` for ``paths[i]``.
        fallback: ``(n,)`` True where no face was found and the whole image was used.
        unreadable: Paths that could not be read (left out).
    """

    root: Path
    paths: tuple[str, ...]
    labels: tuple[str, ...]
    matrix: FloatArray = field(repr=False)
    fallback: npt.NDArray[np.bool_] = field(repr=False)
    unreadable: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)


def embed_image(image: npt.NDArray[np.uint8], detector: Detector, embedder: Embedder
                ) -> tuple[FloatArray, bool]:
    """The embedding of an image's largest face, or of the whole image when none is found.

    The same path as ``facegate eval pairs`` and ``identify``: give a
    :class:`~device.vision.stills.StillFaceFinder` (zoom-out retry for tight crops,
    keypoint refinement) as ``detector``.

    Returns:
        The unit vector and whether the whole-image fallback was used.

    Raises:
        ModelError: The detector or embedder failed.
    """
    face = embed_faces(image, detector, embedder, fallback_whole=True)[0]
    return face.embedding.vector, face.fallback


def embed_files(root: Path, relative: Sequence[str], labels: Sequence[str], detector: Detector,
                embedder: Embedder, *, progress: Progress | None = None) -> LabelledEmbeddings:
    """Embed the given images of ``root`` (unreadable ones are logged and left out).

    Raises:
        ModelError: The detector or embedder failed.
        ImageError: No image could be read.
    """
    vectors: list[FloatArray] = []
    kept: list[str] = []
    kept_labels: list[str] = []
    fallbacks: list[bool] = []
    bad: list[str] = []
    for rel, label in zip(relative, labels, strict=True):
        path = root / rel
        try:
            image = read_image(path)
        except ImageError as exc:
            logger.warning("left out: %s", exc)
            bad.append(rel)
        else:
            vector, fell_back = embed_image(image, detector, embedder)
            vectors.append(vector)
            kept.append(rel)
            kept_labels.append(label)
            fallbacks.append(fell_back)
        if progress is not None:
            progress(path)
    if not vectors:
        raise ImageError(f"{root}: none of {len(relative)} images could be read")
    if any(fallbacks):
        logger.info("%d of %d images had no detected face; the whole image was embedded",
                    sum(fallbacks), len(fallbacks))
    return LabelledEmbeddings(root, tuple(kept), tuple(kept_labels),
                              np.vstack(vectors).astype(np.float32),
                              np.asarray(fallbacks, dtype=bool), tuple(bad))


def list_tree(root: Path, identities: int | None = None) -> tuple[list[str], list[str]]:
    """Image paths (relative to ``root``) and their identity (sub-folder), sorted.

    Args:
        root: One sub-folder per identity.
        identities: Keep only the first this many identities (sorted), for quick runs.

    Raises:
        ImageError: ``root`` is not a folder or holds no images.
    """
    if not root.is_dir():
        raise ImageError(f"{root}: not a folder (expected one sub-folder per identity)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if identities is not None:
        folders = folders[:identities]
    rel: list[str] = []
    labels: list[str] = []
    for folder in folders:
        for path in iter_image_files(folder):
            rel.append(str(path.relative_to(root)))
            labels.append(folder.name)
    if not rel:
        raise ImageError(f"{root}: no images in identity sub-folders")
    return rel, labels


def embed_tree(root: Path, detector: Detector, embedder: Embedder, *,
               identities: int | None = None, progress: Progress | None = None
               ) -> LabelledEmbeddings:
    """Embed every image of a folder tree (one sub-folder per identity).

    Raises:
        ImageError: ``root`` holds no readable images.
        ModelError: The detector or embedder failed.
    """
    rel, labels = list_tree(root, identities)
    return embed_files(root, rel, labels, detector, embedder, progress=progress)


def pair_scores(pairs: Sequence[Pair], embedded: LabelledEmbeddings
                ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]:
    """Genuine and impostor similarities of listed pairs whose images were both embedded.

    Args:
        pairs: From :func:`device.lab.evaluation.read_pairs`.
        embedded: The embedded images (paths relative to the same root).

    Returns:
        ``(genuine, impostor, skipped)``.
    """
    row = {p: i for i, p in enumerate(embedded.paths)}
    gen: list[float] = []
    imp: list[float] = []
    skipped = 0
    for pair in pairs:
        if pair.a not in row or pair.b not in row:
            skipped += 1
            continue
        score = float(np.dot(embedded.matrix[row[pair.a]].astype(np.float64),
                             embedded.matrix[row[pair.b]].astype(np.float64)))
        (gen if pair.same else imp).append(score)
    return np.asarray(gen), np.asarray(imp), skipped


def impostor_scores(embedded: LabelledEmbeddings, block: int = 1024
                    ) -> tuple[npt.NDArray[np.float32], int]:
    """Every cross-identity similarity (each unordered pair once), and the genuine count.

    Computed in row blocks, so memory is the scores themselves (float32) plus one
    ``block × n`` slab.

    Returns:
        ``(impostor scores, number of genuine pairs)``.
    """
    x = embedded.matrix.astype(np.float32)
    _, codes = np.unique(np.asarray(embedded.labels), return_inverse=True)
    n = x.shape[0]
    parts: list[npt.NDArray[np.float32]] = []
    genuine = 0
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        sims = x[lo:hi] @ x.T
        for i in range(lo, hi):
            row = sims[i - lo, i + 1:]
            other = codes[i + 1:] != codes[i]
            parts.append(row[other])
            genuine += int((~other).sum())
    scores = np.concatenate(parts) if parts else np.empty(0, np.float32)
    return scores.astype(np.float32, copy=False), genuine


# ------------------------------------------------------------------ open set


@dataclass(frozen=True)
class OpenSetSplit:
    """Which images enroll and which search.

    Attributes:
        gallery: Row of each gallery image (one per enrolled identity).
        mated: Rows of searches whose identity is enrolled.
        non_mated: Rows of searches whose identity is not.
        held_out: Identities with two or more images kept out of the gallery.
        singletons: Identities with exactly one image (never enrolled).
    """

    gallery: tuple[int, ...]
    mated: tuple[int, ...]
    non_mated: tuple[int, ...]
    held_out: tuple[str, ...]
    singletons: tuple[str, ...]


def open_set_split(labels: Sequence[str], unenrolled_fraction: float = 0.0, seed: int = 0
                   ) -> OpenSetSplit:
    """The split of the module doc's protocol; rows in the order of ``labels``.

    Args:
        labels: Identity of each image, images of one identity in file-name order.
        unenrolled_fraction: Share of identities with two or more images held out as
            never enrolled (their images become non-mated searches).
        seed: For choosing the held-out identities.

    Raises:
        ValueError: ``unenrolled_fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= unenrolled_fraction < 1.0:
        raise ValueError(f"unenrolled_fraction must be in [0, 1), got {unenrolled_fraction}")
    rows: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        rows.setdefault(label, []).append(i)
    multi = sorted(k for k, v in rows.items() if len(v) >= 2)
    singles = sorted(k for k, v in rows.items() if len(v) == 1)
    rng = np.random.default_rng(seed)
    n_out = math.floor(unenrolled_fraction * len(multi) + 0.5)
    if unenrolled_fraction > 0 and len(multi) >= 2:
        n_out = max(1, min(n_out, len(multi) - 1))
    held = sorted(rng.choice(multi, size=n_out, replace=False).tolist()) if n_out else []
    held_set = set(held)
    gallery, mated, non_mated = [], [], []
    for label, idx in rows.items():
        if label in held_set or len(idx) == 1:
            non_mated.extend(idx)
        else:
            gallery.append(idx[0])
            mated.extend(idx[1:])
    return OpenSetSplit(tuple(sorted(gallery)), tuple(sorted(mated)), tuple(sorted(non_mated)),
                        tuple(held), tuple(singles))


@dataclass(frozen=True)
class FnirPoint:
    """FNIR at one FPIR target.

    Attributes:
        target_fpir: The FPIR asked for.
        resolvable: False when there are fewer than ``1 / target`` non-mated searches.
        threshold: Lowest threshold whose FPIR is ``<= target`` (``None`` if not
            resolvable).
        fpir: FPIR measured at it.
        fnir: FNIR at it.
    """

    target_fpir: float
    resolvable: bool
    threshold: float | None
    fpir: float | None
    fnir: float | None

    def to_json(self) -> dict[str, object]:
        return {"target_fpir": self.target_fpir, "resolvable": self.resolvable,
                "threshold": self.threshold, "fpir": self.fpir, "fnir": self.fnir,
                "reason": None if self.resolvable else "not resolvable: needs >= "
                f"{1 / self.target_fpir:.0f} non-mated searches"}


@dataclass(frozen=True)
class OpenSetResult:
    """Open-set 1:N identification figures.

    Attributes:
        gallery: Enrolled identities (one image each).
        mated: Mated searches.
        non_mated: Non-mated searches.
        held_out: Identities held out of the gallery (with two or more images).
        singletons: Identities with a single image (non-mated).
        rank1: Share of mated searches whose best candidate is their own identity.
        points: FNIR at each FPIR target.
        at_threshold: ``(threshold, fpir, fnir)`` at extra thresholds asked for
            (e.g. the calibrated one).
        fallbacks: Images embedded whole because no face was found.
    """

    gallery: int
    mated: int
    non_mated: int
    held_out: int
    singletons: int
    rank1: float
    points: tuple[FnirPoint, ...]
    at_threshold: tuple[tuple[float, float, float], ...] = ()
    fallbacks: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "gallery": self.gallery, "mated": self.mated, "non_mated": self.non_mated,
            "held_out_identities": self.held_out, "singleton_identities": self.singletons,
            "rank1": self.rank1, "fallbacks": self.fallbacks,
            "fnir_at_fpir": [p.to_json() for p in self.points],
            "at_threshold": [{"threshold": t, "fpir": fp, "fnir": fn}
                             for t, fp, fn in self.at_threshold],
        }


def _fnir(mated_scores: npt.NDArray[np.float64], mated_correct: npt.NDArray[np.bool_],
          t: float) -> float:
    hit = mated_correct & (mated_scores >= t)
    return float(1.0 - hit.mean()) if hit.size else math.nan


def fnir_at_fpir(mated_scores: npt.ArrayLike, mated_correct: npt.ArrayLike,
                 non_mated_scores: npt.ArrayLike, target: float) -> FnirPoint:
    """FNIR at the lowest threshold whose FPIR is ``<= target``.

    Args:
        mated_scores: Best similarity of each mated search.
        mated_correct: Whether that best candidate was the searched identity.
        non_mated_scores: Best similarity of each non-mated search.
        target: FPIR target in ``(0, 1]``.

    Raises:
        ValueError: No non-mated searches, or a bad target.
    """
    nm = np.sort(np.asarray(non_mated_scores, dtype=np.float64))[::-1]
    ms = np.asarray(mated_scores, dtype=np.float64)
    mc = np.asarray(mated_correct, dtype=bool)
    n = nm.size
    if n == 0:
        raise ValueError("no non-mated searches")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target FPIR must be in (0, 1], got {target}")
    allowed = math.floor(target * n + 1e-9)
    if allowed < 1:
        return FnirPoint(target, False, None, None, None)
    if allowed >= n:
        t = float(min(nm[-1], ms.min() if ms.size else nm[-1]))
    else:
        # Alarm iff score >= t: just above the (allowed+1)-th highest non-mated score.
        t = float(np.nextafter(nm[allowed], np.inf))
    fpir = float((nm >= t).mean())
    return FnirPoint(target, True, t, fpir, _fnir(ms, mc, t))


def evaluate_open_set(
    embedded: LabelledEmbeddings,
    *,
    unenrolled_fraction: float = 0.0,
    seed: int = 0,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    thresholds: Sequence[float] = (),
) -> OpenSetResult:
    """Enroll, search and score as the module doc describes (through the real index).

    Raises:
        ValueError: No gallery, no mated or no non-mated searches.
    """
    split = open_set_split(embedded.labels, unenrolled_fraction, seed)
    if not split.gallery or not split.mated:
        raise ValueError("open-set evaluation needs identities with two or more images")
    if not split.non_mated:
        raise ValueError("no non-mated searches: every identity has two or more images; "
                         "hold some out with unenrolled_fraction > 0")
    labels = np.asarray(embedded.labels)
    gallery_rows = np.asarray(split.gallery)
    index = GalleryIndex.build(np.arange(gallery_rows.size), labels[gallery_rows].tolist(),
                               embedded.matrix[gallery_rows])
    try:
        def best(rows: Sequence[int]) -> tuple[npt.NDArray[np.float64], list[str]]:
            hits = index.search_identities_batch(embedded.matrix[np.asarray(rows)], 1)
            return (np.array([h[0].similarity for h in hits], dtype=np.float64),
                    [h[0].identity_id for h in hits])

        m_scores, m_ids = best(split.mated)
        nm_scores, _ = best(split.non_mated)
    finally:
        index.close()
    correct = np.asarray([i == labels[r] for i, r in zip(m_ids, split.mated, strict=True)])
    points = tuple(fnir_at_fpir(m_scores, correct, nm_scores, f) for f in fpirs)
    extra = tuple((float(t), float((nm_scores >= t).mean()), _fnir(m_scores, correct, t))
                  for t in thresholds)
    return OpenSetResult(
        gallery=len(split.gallery), mated=len(split.mated), non_mated=len(split.non_mated),
        held_out=len(split.held_out), singletons=len(split.singletons),
        rank1=float(correct.mean()), points=points, at_threshold=extra,
        fallbacks=int(embedded.fallback.sum()))

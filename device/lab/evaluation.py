"""Face verification experiments on labelled photos: facegate, and face_recognition beside it.

Two kinds of experiment, both from embeddings computed once per image:

* **listed pairs** — a CSV of ``fold,image_a,image_b,same`` (LFW's View 2 format;
  a header line is allowed), paths relative to a root folder;
* **all pairs** — every image under a root, the identity being the image's folder:
  every same-folder pair is genuine, every cross-folder pair an impostor (a few
  thousand images give millions of impostor pairs, so low FMRs are measurable).

Every image gets one embedding per system. When no face is found, the whole image
stands in for the face box and the image is counted in ``no_face`` (an honest
count, not a silent drop). The reference system is the ``face_recognition`` library
(dlib's HOG detector, dlib's 5-point shape predictor, the same dlib ResNet encoder),
run on the same images in the same process, interleaved image by image so that the
timings share the machine's load; it is a test/bench-only dependency, imported here
only when asked for. Its descriptors are scored two ways (negated Euclidean distance,
as the library does, and cosine) and facegate is compared with the better.
"""

from __future__ import annotations

import csv
import logging
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from device.errors import DeviceError, ImageError
from device.imageio import iter_image_files, read_image
from device.lab import metrics
from device.types import Image
from device.vision.embed import Embedder
from device.vision.stills import StillFaceFinder, embed_faces

logger = logging.getLogger(__name__)

#: Target FMRs reported for listed pairs (a few thousand impostors: 1e-3 is the floor).
PAIRS_FMRS = (1e-2, 1e-3)
#: Target FMRs reported for all pairs (millions of impostors).
ALL_PAIRS_FMRS = (1e-2, 1e-3, 1e-4)


class EvaluationError(DeviceError):
    """A pairs file or image folder cannot be used for an evaluation."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One listed pair.

    Attributes:
        fold: Fold label from the CSV.
        a: First image, relative to the root.
        b: Second image, relative to the root.
        same: Whether both show the same person.
    """

    fold: str
    a: str
    b: str
    same: bool


def read_pairs(path: Path, root: Path) -> list[Pair]:
    """Read ``fold,image_a,image_b,same`` rows; the images must exist under ``root``.

    Raises:
        EvaluationError: The file is missing or unreadable, a row is malformed (the
            message gives the line), or images are missing (the first few are named).
    """
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read pairs file: {exc}") from exc
    pairs: list[Pair] = []
    for line, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if line == 1 and [c.strip().lower() for c in row] == ["fold", "image_a", "image_b", "same"]:
            continue
        if len(row) != 4 or row[3].strip() not in ("0", "1"):
            raise EvaluationError(
                f"{path}:{line}: expected fold,image_a,image_b,same (same = 0 or 1), got {row}"
            )
        pairs.append(Pair(row[0].strip(), row[1].strip(), row[2].strip(), row[3].strip() == "1"))
    if not pairs:
        raise EvaluationError(f"{path}: no pairs")
    if all(p.same for p in pairs) or not any(p.same for p in pairs):
        raise EvaluationError(f"{path}: needs both genuine (same = 1) and impostor (0) pairs")
    missing = sorted({n for p in pairs for n in (p.a, p.b) if not (root / n).is_file()})
    if missing:
        raise EvaluationError(
            f"{path}: {len(missing)} image(s) not found under {root}, e.g. "
            + ", ".join(missing[:3])
        )
    return pairs


def subsample_pairs(pairs: Sequence[Pair], count: int) -> list[Pair]:
    """``count`` pairs spread evenly over the list (files list genuine pairs first).

    Raises:
        EvaluationError: The subset lacks genuine or impostor pairs.
    """
    if count >= len(pairs):
        return list(pairs)
    picked = [pairs[i] for i in np.linspace(0, len(pairs) - 1, count).round().astype(int)]
    if all(p.same for p in picked) or not any(p.same for p in picked):
        raise EvaluationError(f"{count} pairs are too few to hold genuine and impostor pairs")
    return picked


def identity_images(root: Path) -> list[tuple[str, str]]:
    """``(relative path, identity)`` of every image under ``root``; identity = its folder.

    Raises:
        EvaluationError: ``root`` holds no images, or fewer than two identities.
    """
    try:
        files = iter_image_files(root)
    except ImageError as exc:
        raise EvaluationError(str(exc)) from exc
    items = [(p.relative_to(root).as_posix(), p.parent.relative_to(root).as_posix()) for p in files]
    if len({label for _, label in items}) < 2:
        raise EvaluationError(f"{root}: all-pairs needs images in at least two identity folders")
    return items


@dataclass
class Embedded:
    """One system's embeddings of a list of images.

    Attributes:
        system: Name shown in reports.
        vectors: ``(N, D)`` descriptors, one row per image (as the system returns them).
        no_face: ``(N,)`` whether the whole image stood in for an undetected face.
        total_ms: Per image, detection + alignment + embedding, milliseconds.
        embed_ms: Per image, embedding alone (the chip or landmarks given), milliseconds.
    """

    system: str
    vectors: npt.NDArray[np.float32]
    no_face: npt.NDArray[np.bool_]
    total_ms: list[float] = field(default_factory=list)
    embed_ms: list[float] = field(default_factory=list)


class System(Protocol):
    """A face verification system under test: one embedding per image."""

    name: str

    def embed_image(self, image: Image) -> tuple[npt.NDArray[np.float32], bool, float, float]:
        """``(descriptor, no_face, total_ms, embed_ms)`` for the largest face."""
        ...


class FacegateSystem:
    """facegate: still-photo face finder, template alignment, the configured embedder.

    Args:
        finder: Face finder (BlazeFace with a close-range pass and refinement).
        embedder: The embedder (default backend: dlib ResNet as TFLite).
    """

    def __init__(self, finder: StillFaceFinder, embedder: Embedder) -> None:
        self.finder = finder
        self.embedder = embedder
        self.name = f"facegate ({embedder.model_id})"

    def embed_image(self, image: Image) -> tuple[npt.NDArray[np.float32], bool, float, float]:
        """Embed the largest face (the whole image when none is found).

        Raises:
            ModelError: Detection or embedding failed.
        """
        started = time.perf_counter()
        timed = _TimedEmbedder(self.embedder)
        faces = embed_faces(image, self.finder, timed, fallback_whole=True)
        total = (time.perf_counter() - started) * 1000
        face = faces[0]
        return face.embedding.vector, face.fallback, total, timed.elapsed_ms


class _TimedEmbedder:
    """Wraps an embedder and records the time spent in ``embed``."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.elapsed_ms = 0.0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def input_size(self) -> tuple[int, int]:
        return self.inner.input_size

    @property
    def template(self) -> Any:
        return self.inner.template

    def embed(self, chips: Sequence[Any]) -> list[Any]:
        started = time.perf_counter()
        out = self.inner.embed(chips)
        self.elapsed_ms += (time.perf_counter() - started) * 1000
        return out

    def close(self) -> None:
        self.inner.close()


class FaceRecognitionSystem:
    """The ``face_recognition`` library: HOG detector, 5-point landmarks, dlib's encoder.

    ``face_locations(img, model="hog")`` (upsampled once, the library's default);
    when it finds nothing, the whole image is the face box; the largest box goes to
    ``face_encodings(img, known_face_locations=[box])`` (5-point landmarks, one
    jitter: the library's defaults). Descriptors are returned raw, as the library does.

    Raises:
        EvaluationError: ``face_recognition`` is not installed.
    """

    name = "face_recognition (dlib HOG + ResNet)"

    def __init__(self) -> None:
        try:
            import face_recognition
        except ImportError as exc:
            raise EvaluationError(
                "face_recognition is not installed (a bench/test-only dependency: "
                "pip install face_recognition dlib-bin)"
            ) from exc
        self._fr: Any = face_recognition

    def embed_image(self, image: Image) -> tuple[npt.NDArray[np.float32], bool, float, float]:
        """Embed the largest HOG face (the whole image when none is found)."""
        started = time.perf_counter()
        boxes = self._fr.face_locations(image, model="hog")
        no_face = not boxes
        if no_face:
            boxes = [(0, image.shape[1], image.shape[0], 0)]  # top, right, bottom, left
        box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        embed_start = time.perf_counter()
        vector = self._fr.face_encodings(image, known_face_locations=[box])[0]
        done = time.perf_counter()
        return (
            np.asarray(vector, dtype=np.float32),
            no_face,
            (done - started) * 1000,
            (done - embed_start) * 1000,
        )


def embed_images(
    root: Path,
    names: Sequence[str],
    systems: Sequence[System],
    progress: Callable[[Iterable[str]], Iterable[str]] | None = None,
) -> list[Embedded]:
    """Embed every image with every system, image by image (interleaved).

    Raises:
        ImageError: An image cannot be read (the message names it).
        ModelError: A model failed.
    """
    vectors: list[list[npt.NDArray[np.float32]]] = [[] for _ in systems]
    no_face: list[list[bool]] = [[] for _ in systems]
    results = [
        Embedded(s.name, np.empty((0, 0), np.float32), np.empty(0, bool)) for s in systems
    ]
    for name in progress(names) if progress else names:
        image = read_image(root / name)
        for k, system in enumerate(systems):
            vector, missed, total, embed = system.embed_image(image)
            vectors[k].append(vector)
            no_face[k].append(missed)
            results[k].total_ms.append(total)
            results[k].embed_ms.append(embed)
    for k, result in enumerate(results):
        result.vectors = np.stack(vectors[k]).astype(np.float32)
        result.no_face = np.asarray(no_face[k], dtype=bool)
    return results


def similarity_matrix(vectors: npt.NDArray[np.float32], score: str) -> npt.NDArray[np.float32]:
    """All-against-all similarity: ``cosine`` or ``euclidean`` (negated distance).

    Raises:
        ValueError: Unknown score.
    """
    if score == "cosine":
        return metrics.cosine_matrix(vectors)
    if score == "euclidean":
        x = vectors.astype(np.float64)
        sq = (x**2).sum(axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
        out: npt.NDArray[np.float32] = (-np.sqrt(d2)).astype(np.float32)
        return out
    raise ValueError(f"unknown score {score!r} (cosine or euclidean)")


def pair_scores(
    vectors: npt.NDArray[np.float32], index: dict[str, int], pairs: Sequence[Pair], score: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Genuine and impostor scores of listed pairs."""
    a = vectors[[index[p.a] for p in pairs]].astype(np.float64)
    b = vectors[[index[p.b] for p in pairs]].astype(np.float64)
    if score == "cosine":
        s = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    elif score == "euclidean":
        s = -np.linalg.norm(a - b, axis=1)
    else:
        raise ValueError(f"unknown score {score!r} (cosine or euclidean)")
    same = np.array([p.same for p in pairs])
    return s[same], s[~same]


@dataclass(frozen=True)
class Row:
    """One line of a report: one system, one score, one experiment.

    Attributes:
        experiment: ``pairs`` (listed pairs) or ``all-pairs``.
        system: System name.
        score: ``cosine`` or ``euclidean``.
        result: The metrics.
        no_face: Images of the experiment where no face was found.
        images: Images in the experiment.
        genuine_scores: Kept for plotting.
        impostor_scores: Kept for plotting.
    """

    experiment: str
    system: str
    score: str
    result: metrics.Verification
    no_face: int
    images: int
    genuine_scores: npt.NDArray[np.float64] = field(repr=False)
    impostor_scores: npt.NDArray[np.float64] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "experiment": self.experiment,
            "system": self.system,
            "score": self.score,
            "pairs": r.genuine + r.impostors,
            "genuine": r.genuine,
            "impostors": r.impostors,
            # null where the impostors cannot measure the target; tar_at_fmr_points says why
            "tar_at_fmr": {metrics.fmr_label(f): round(p.tar, 6) if p.resolvable else None
                           for f, p in r.at_fmr.items()},
            "threshold_at_fmr": {
                metrics.fmr_label(f): round(p.threshold, 6) if p.resolvable else None
                for f, p in r.at_fmr.items()
            },
            "tar_at_fmr_points": [{
                "target_fmr": f, "resolvable": p.resolvable,
                "threshold": round(p.threshold, 6) if p.resolvable else None,
                "fmr": p.fmr if p.resolvable else None,
                "tar": round(p.tar, 6) if p.resolvable else None,
                "reason": p.reason,
            } for f, p in r.at_fmr.items()],
            "eer": round(r.eer, 6),
            "best_accuracy": round(r.best_accuracy, 6),
            "no_face": self.no_face,
            "images": self.images,
        }


def listed_pairs_rows(
    embedded: Embedded, names: Sequence[str], pairs: Sequence[Pair], scores: Sequence[str]
) -> list[Row]:
    """Rows for the listed pairs, one per score."""
    index = {n: i for i, n in enumerate(names)}
    used = sorted({index[n] for p in pairs for n in (p.a, p.b)})
    rows = []
    for score in scores:
        gen, imp = pair_scores(embedded.vectors, index, pairs, score)
        rows.append(
            Row("pairs", embedded.system, score, metrics.verification(gen, imp, PAIRS_FMRS),
                int(embedded.no_face[used].sum()), len(used), gen, imp)
        )
    return rows


def all_pairs_rows(
    embedded: Embedded, names: Sequence[str], items: Sequence[tuple[str, str]],
    scores: Sequence[str],
) -> list[Row]:
    """Rows for every pair of ``items`` (genuine = same identity), one per score."""
    index = {n: i for i, n in enumerate(names)}
    rows_idx = [index[n] for n, _ in items]
    labels = [label for _, label in items]
    vectors = embedded.vectors[rows_idx]
    rows = []
    for score in scores:
        sim = similarity_matrix(vectors, score)
        gen, imp = metrics.pair_scores_by_label(sim, labels)
        del sim
        rows.append(
            Row("all-pairs", embedded.system, score,
                metrics.verification(gen, imp, ALL_PAIRS_FMRS),
                int(embedded.no_face[rows_idx].sum()), len(items), gen, imp)
        )
    return rows


@dataclass(frozen=True)
class Timing:
    """Time per face of one system, over the images of a run.

    Attributes:
        system: System name.
        faces: Images timed (one face each).
        total_ms: Median detection + alignment + embedding per face.
        embed_ms: Median embedding alone per face.
    """

    system: str
    faces: int
    total_ms: float
    embed_ms: float

    @staticmethod
    def of(embedded: Embedded) -> Timing:
        return Timing(
            embedded.system, len(embedded.total_ms),
            statistics.median(embedded.total_ms) if embedded.total_ms else float("nan"),
            statistics.median(embedded.embed_ms) if embedded.embed_ms else float("nan"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "faces": self.faces,
            "ms_per_face_detect_embed": round(self.total_ms, 2),
            "ms_per_face_embed": round(self.embed_ms, 2),
        }


def best_reference(rows: Sequence[Row], experiment: str, reference: str) -> dict[float, float]:
    """Per target FMR, the best TAR of the reference system's rows (over its scores)."""
    best: dict[float, float] = {}
    for row in rows:
        if row.experiment != experiment or row.system != reference:
            continue
        for fmr, point in row.result.at_fmr.items():
            if point.resolvable:
                best[fmr] = max(best.get(fmr, 0.0), point.tar)
    return best


@dataclass(frozen=True)
class RocSeries:
    """What the ROC plot draws for one row: the curve and the table's operating points.

    Attributes:
        label: Legend text.
        fmr: Curve FMRs, ascending, from ``1 / impostors`` (the finest measured) to 1.
        tar: TAR at each of them.
        points: ``(target FMR, measured FMR, TAR)`` of every resolvable operating point
            of the row's table (:attr:`metrics.Verification.at_fmr`); each lies on the
            curve.
        min_fmr: ``1 / impostors``: where the measured range starts.
    """

    label: str
    fmr: npt.NDArray[np.float64] = field(repr=False)
    tar: npt.NDArray[np.float64] = field(repr=False)
    points: tuple[tuple[float, float, float], ...]
    min_fmr: float


def roc_series(row: Row) -> RocSeries:
    """The plotted data of one row: the whole measured range and its operating points.

    An operating point's measured FMR can be 0 (no impostor accepted at its
    threshold), which a log axis cannot show; it is drawn at ``1 / impostors``, the
    finest rate the sample resolves.
    """
    fmr, tar = metrics.roc_points(row.genuine_scores, row.impostor_scores)
    n = row.result.impostors
    floor = 1.0 / n
    points = tuple((f, max(p.fmr, floor), p.tar)
                   for f, p in row.result.at_fmr.items() if p.resolvable)
    # The curve is a step function sampled on a log grid: add the operating points (and
    # the finest step) so that each lies on the drawn line.
    extra_f = np.array([floor, *(p[1] for p in points)], dtype=np.float64)
    finest = metrics.operating_point(np.sort(row.genuine_scores), np.sort(row.impostor_scores),
                                     floor)
    extra_t = np.array([finest.tar, *(p[2] for p in points)], dtype=np.float64)
    keep = fmr > 0
    all_f = np.concatenate([fmr[keep], extra_f])
    all_t = np.concatenate([tar[keep], extra_t])
    order = np.lexsort((all_t, all_f))
    label = f"{row.system}, {row.score} (EER {row.result.eer:.2%}, no face {row.no_face})"
    return RocSeries(label, all_f[order], all_t[order], points, floor)


def plot_roc(rows: Sequence[Row], path: Path, title: str = "") -> list[RocSeries]:
    """Write the ROC curves (TAR against FMR on a log axis) of the rows as a PNG.

    One panel per experiment; the FMR axis spans the whole measured range, down to
    ``1 / impostors``, and each operating point of the table is marked and labelled.
    Needs matplotlib (a dev/bench dependency).

    Returns:
        The plotted series, row by row.

    Raises:
        EvaluationError: matplotlib is missing or the file cannot be written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise EvaluationError("--plot needs matplotlib (pip install matplotlib)") from exc
    experiments = list(dict.fromkeys(r.experiment for r in rows))
    fig, axes = plt.subplots(1, len(experiments), figsize=(6.5 * len(experiments), 5),
                             squeeze=False)
    plotted: list[RocSeries] = []
    for ax, experiment in zip(axes[0], experiments, strict=True):
        lowest = 1.0
        for row in (r for r in rows if r.experiment == experiment):
            series = roc_series(row)
            plotted.append(series)
            (line,) = ax.plot(series.fmr, series.tar, label=series.label)
            for target, fmr, tar in series.points:
                ax.plot([fmr], [tar], "o", color=line.get_color(), markersize=5)
                ax.annotate(f"FMR {metrics.fmr_label(target)}: TAR {tar:.3f}", (fmr, tar),
                            textcoords="offset points", xytext=(6, -10), fontsize=7)
            lowest = min(lowest, series.min_fmr)
        first = next(r for r in rows if r.experiment == experiment).result
        ax.set_xscale("log")
        ax.set_xlim(lowest / 1.5, 1.0)
        ax.set_xlabel("false match rate")
        ax.set_ylabel("true accept rate")
        ax.set_title(f"{experiment}: {first.genuine:,} genuine, {first.impostors:,} impostor")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: cannot write the ROC plot: {exc}") from exc
    finally:
        plt.close(fig)
    return plotted

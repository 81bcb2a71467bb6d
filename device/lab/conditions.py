"""Recognition per condition: face size, head pose and demographic group.

Three experiments over labelled photo sets (one sub-folder per identity), for any
embedder (the caller opens it by model id, so a second encoder plugs in unchanged):

* **face size** — every photo is re-rendered so that its face box (found on the
  original photo by the still-photo finder) is ``w`` pixels wide: the whole photo is
  scaled by ``w / box width`` (``cv2.INTER_AREA``, area averaging, when it shrinks;
  ``cv2.INTER_CUBIC`` when the face was already smaller than ``w``, counted as
  *upscaled*), then pasted centred on a black camera-sized canvas (default 640×360;
  when the scaled photo is larger than the canvas, the canvas-sized window around the
  face is kept). The canvas goes to the service's detector as a camera frame would
  (no zoom-out, no refinement); the largest face whose box overlaps the rendered one
  is aligned and embedded. A photo whose face is not found there is a *failure to
  detect*: every pair it is in counts as rejected (its score is below any
  threshold), so TAR includes the failures. All-pairs TAR at FMR 1e-3 per size.
* **head pose** — yaw is estimated from the detector's keypoints on the original
  photo (:func:`device.vision.quality.head_pose`: the nose's offset from the eye
  midpoint over the inter-ocular distance, and from the ear-tragion midpoint over
  their span, each mapped to degrees through an average head under an orthographic
  view, ``yaw = atan(offset * 2 * half_span / depth)``, the two averaged). Pairs are
  binned by the larger ``|yaw|`` of their two photos; TAR at FMR 1e-3 per bin with
  its pair counts (a bin with fewer than 1,000 impostor pairs cannot measure 1e-3
  and says so).
* **demographic** — open-set 1:N on each set (:mod:`device.lab.openset`): FNIR at FPIR
  1e-2, and the FPIR (and FNIR) each set gives at the shipped thresholds (the model's
  calibration table at FMR 1e-3 and 1e-4): a set whose FPIR at the same threshold is
  higher errs more for its people.

Embeddings live in memory only; results hold rates and counts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from device.errors import ImageError
from device.imageio import read_image
from device.lab import metrics
from device.lab.openset import LabelledEmbeddings, OpenSetResult, evaluate_open_set
from device.types import Detection, FloatArray, Image
from device.vision.align import align
from device.vision.detect import Detector
from device.vision.embed import Embedder
from device.vision.quality import head_pose
from device.vision.stills import StillFaceFinder

logger = logging.getLogger(__name__)

#: Face widths (pixels) the size experiment renders.
FACE_SIZES: tuple[int, ...] = (24, 32, 48, 64, 96)
#: Yaw bins (degrees of the larger |yaw| of a pair): [lo, hi).
YAW_BINS: tuple[tuple[float, float], ...] = ((0.0, 15.0), (15.0, 30.0), (30.0, 45.0),
                                             (45.0, math.inf))
#: The camera-like canvas the re-rendered photos are shown on: (width, height).
CANVAS: tuple[int, int] = (640, 360)
#: Target FMR of the size and pose tables.
TARGET_FMR = 1e-3
#: Shipped-threshold FMRs at which each set's FPIR is reported.
SHIPPED_FMRS: tuple[float, ...] = (1e-3, 1e-4)
#: Score given to a pair with an undetected photo: below every cosine.
MISSED = -2.0
#: A detection on the canvas is the rendered face when their boxes overlap this much.
MIN_IOU = 0.3

Box = tuple[float, float, float, float]
Progress = Callable[[int], object]


# ------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class Rendered:
    """A photo re-rendered with its face at a chosen width, on a canvas.

    Attributes:
        image: The canvas, RGB ``uint8`` ``(height, width, 3)``.
        box: The original face box mapped onto the canvas ``(x, y, w, h)``.
        scale: Horizontal scale applied to the photo (after rounding its size).
        upscaled: The face was narrower than asked, so the photo was enlarged.
    """

    image: Image = field(repr=False)
    box: Box
    scale: float
    upscaled: bool


def render_face_width(image: Image, box: Box, width: int,
                      canvas: tuple[int, int] = CANVAS) -> Rendered:
    """Scale ``image`` so ``box`` is ``width`` px wide and paste it centred on a canvas.

    The scale is ``width / box width``; the photo's new size is rounded to whole
    pixels and the actual scale follows from it, so the mapped box is within a pixel
    of ``width``. Shrinking averages areas (``INTER_AREA``); enlarging is cubic. When
    the scaled photo is larger than the canvas, the canvas-sized window centred on the
    face is kept (black where it leaves the photo).

    Raises:
        ValueError: Non-positive ``width``, an empty box or a bad canvas.
    """
    bx, by, bw, bh = box
    cw, ch = canvas
    if width <= 0 or bw <= 0 or bh <= 0 or cw <= 0 or ch <= 0:
        raise ValueError(f"cannot render a {bw}x{bh} face box at {width} px on {canvas}")
    height_px, width_px = image.shape[:2]
    factor = width / bw
    new_w = max(1, round(width_px * factor))
    new_h = max(1, round(height_px * factor))
    upscaled = factor > 1.0
    interp = cv2.INTER_CUBIC if upscaled else cv2.INTER_AREA
    scaled = np.asarray(cv2.resize(image, (new_w, new_h), interpolation=interp), dtype=np.uint8)
    sx, sy = new_w / width_px, new_h / height_px
    face = (bx * sx, by * sy, bw * sx, bh * sy)
    # Where the scaled photo's origin lands on the canvas: centred, or the face centred
    # when the photo is larger than the canvas.
    ox = (cw - new_w) // 2 if new_w <= cw else round(cw / 2 - (face[0] + face[2] / 2))
    oy = (ch - new_h) // 2 if new_h <= ch else round(ch / 2 - (face[1] + face[3] / 2))
    out = np.zeros((ch, cw, 3), np.uint8)
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + new_w, cw), min(oy + new_h, ch)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = scaled[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    mapped = (face[0] + ox, face[1] + oy, face[2], face[3])
    return Rendered(out, mapped, sx, upscaled)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def detect_rendered(rendered: Rendered, detector: Detector) -> Detection | None:
    """The rendered face as the camera path finds it (the largest overlapping box); None
    if the detector missed it."""
    found = [d for d in detector.detect(rendered.image) if iou(d.box, rendered.box) >= MIN_IOU]
    return max(found, key=lambda d: d.area) if found else None


def embed_face(image: Image, face: Detection, embedder: Embedder) -> FloatArray | None:
    """``face`` aligned to the embedder's template and embedded; None if it cannot align."""
    try:
        chip = align(image, face, embedder.template)
    except ValueError:
        return None
    vector: FloatArray = embedder.embed([chip])[0].vector
    return vector


# ------------------------------------------------------------------ embedding


@dataclass(frozen=True)
class ConditionEmbeddings:
    """Everything the three experiments need from one set and one embedder.

    Attributes:
        root: The set's folder.
        model_id: The embedder.
        paths: Photos (relative to ``root``) whose face was found on the original.
        labels: Identity of each.
        native: ``(n, d)`` embeddings of the original photos.
        yaw: ``(n,)`` estimated yaw in degrees (NaN without keypoints).
        sized: Face width -> ``(n, d)`` embeddings of the re-rendered photos (rows of
            missed faces are zero) and the ``(n,)`` mask of detected ones.
        upscaled: Face width -> photos that had to be enlarged.
        no_native_face: Photos where the still-photo finder found no face (left out).
        unreadable: Photos that could not be read (left out).
    """

    root: Path
    model_id: str
    paths: tuple[str, ...]
    labels: tuple[str, ...]
    native: FloatArray = field(repr=False)
    yaw: npt.NDArray[np.float64] = field(repr=False)
    sized: dict[int, tuple[FloatArray, npt.NDArray[np.bool_]]] = field(repr=False)
    upscaled: dict[int, int]
    no_native_face: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()


def native_face(image: Image, finder: StillFaceFinder) -> Detection | None:
    """The largest face of a photo, keypoints refined (None when none is found)."""
    found = finder.find(image, largest_only=True)
    return found[0] if found else None


def embed_conditions(
    root: Path, relative: Sequence[str], labels: Sequence[str], *, finder: StillFaceFinder,
    camera_detector: Detector, embedders: Sequence[Embedder],
    sizes: Sequence[int] = FACE_SIZES, canvas: tuple[int, int] = CANVAS,
    progress: Progress | None = None,
) -> list[ConditionEmbeddings]:
    """Embed each photo natively and at every face size with every embedder; estimate
    its yaw. Reading, finding and re-rendering each photo and detecting each rendering
    happen once, whatever the number of embedders (each then aligns to its own
    template), so the encoders are compared on exactly the same faces.

    Returns:
        One :class:`ConditionEmbeddings` per embedder, in order.

    Raises:
        ImageError: No photo could be read, or none had a face.
        ModelError: A model failed.
    """
    if not embedders:
        raise ValueError("embed_conditions needs at least one embedder")
    kept: list[str] = []
    kept_labels: list[str] = []
    native: list[list[FloatArray]] = [[] for _ in embedders]
    yaws: list[float] = []
    sized: list[dict[int, list[FloatArray | None]]] = [
        {s: [] for s in sizes} for _ in embedders]
    upscaled = dict.fromkeys(sizes, 0)
    missing: list[str] = []
    bad: list[str] = []
    for rel, label in zip(relative, labels, strict=True):
        try:
            image = read_image(root / rel)
        except ImageError as exc:
            logger.warning("left out: %s", exc)
            bad.append(rel)
            if progress is not None:
                progress(1)
            continue
        face = native_face(image, finder)
        vectors = [embed_face(image, face, e) for e in embedders] if face is not None else []
        if face is None or any(v is None for v in vectors):
            missing.append(rel)
            if progress is not None:
                progress(1)
            continue
        for i, vector in enumerate(vectors):
            assert vector is not None
            native[i].append(vector)
        pose = head_pose(face)
        yaws.append(pose.yaw if pose is not None else math.nan)
        for size in sizes:
            rendered = render_face_width(image, face.box, size, canvas)
            upscaled[size] += int(rendered.upscaled)
            found = detect_rendered(rendered, camera_detector)
            for i, embedder in enumerate(embedders):
                sized[i][size].append(
                    None if found is None else embed_face(rendered.image, found, embedder))
        kept.append(rel)
        kept_labels.append(label)
        if progress is not None:
            progress(1)
    if not kept:
        raise ImageError(f"{root}: no face found in any of {len(relative)} photos")
    out = []
    for embedder, vectors_native, vectors_sized in zip(embedders, native, sized, strict=True):
        out.append(ConditionEmbeddings(
            root=root, model_id=embedder.model_id, paths=tuple(kept), labels=tuple(kept_labels),
            native=np.vstack(vectors_native).astype(np.float32),
            yaw=np.asarray(yaws, dtype=np.float64),
            sized=_stack(vectors_sized, vectors_native[0].shape[0]),
            upscaled=dict(upscaled), no_native_face=tuple(missing), unreadable=tuple(bad)))
    return out


def _stack(sized: dict[int, list[FloatArray | None]], dim: int
           ) -> dict[int, tuple[FloatArray, npt.NDArray[np.bool_]]]:
    """Per size: the ``(n, dim)`` matrix (zero rows for misses) and the found mask."""
    stacked: dict[int, tuple[FloatArray, npt.NDArray[np.bool_]]] = {}
    for size, vectors in sized.items():
        found = np.array([v is not None for v in vectors], dtype=bool)
        matrix = np.zeros((len(vectors), dim), np.float32)
        for i, v in enumerate(vectors):
            if v is not None:
                matrix[i] = v
        stacked[size] = (matrix, found)
    return stacked


# ------------------------------------------------------------------ experiments


@dataclass(frozen=True)
class TarRow:
    """TAR at one FMR for one slice (a face size or a yaw bin).

    Attributes:
        name: ``"24 px"``, ``"15-30°"``...
        images: Photos in the slice (size) or photos with a yaw (pose).
        genuine: Genuine pairs.
        impostors: Impostor pairs.
        tar: TAR at the target FMR (None when not resolvable or no genuine pairs).
        threshold: The threshold there.
        resolvable: Enough impostors for the target.
        missed: Photos whose face was not detected (size rows).
        upscaled: Photos enlarged to reach the size (size rows).
    """

    name: str
    images: int
    genuine: int
    impostors: int
    tar: float | None
    threshold: float | None
    resolvable: bool
    missed: int = 0
    upscaled: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "images": self.images, "genuine": self.genuine,
                "impostors": self.impostors, "tar": self.tar, "threshold": self.threshold,
                "resolvable": self.resolvable, "failures_to_detect": self.missed,
                "upscaled": self.upscaled,
                "reason": None if self.resolvable else
                f"not resolvable: {self.impostors} impostor pairs cannot measure FMR "
                f"{TARGET_FMR:g} (needs >= {1 / TARGET_FMR:.0f})"}


def _tar_row(name: str, genuine: npt.NDArray[np.float64], impostor: npt.NDArray[np.float64],
             fmr: float, **extra: int) -> TarRow:
    images = extra.pop("images")
    if genuine.size == 0 or impostor.size == 0:
        return TarRow(name, images, int(genuine.size), int(impostor.size), None, None,
                      impostor.size * fmr >= 1, **extra)
    point = metrics.operating_point(np.sort(genuine), np.sort(impostor), fmr)
    if not point.resolvable:
        return TarRow(name, images, int(genuine.size), int(impostor.size), None, None, False,
                      **extra)
    return TarRow(name, images, int(genuine.size), int(impostor.size), point.tar,
                  point.threshold, True, **extra)


def _pairs(sim: npt.NDArray[np.float32], labels: Sequence[str], key: npt.NDArray[np.float64]
           ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                      npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Every unordered pair's score and ``max(key)`` of its two items, split by label."""
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    n = len(labels)
    gs: list[npt.NDArray[np.float32]] = []
    gk: list[npt.NDArray[np.float64]] = []
    is_: list[npt.NDArray[np.float32]] = []
    ik: list[npt.NDArray[np.float64]] = []
    for i in range(n - 1):
        row = sim[i, i + 1:]
        k = np.maximum(key[i], key[i + 1:])
        same = codes[i + 1:] == codes[i]
        gs.append(row[same])
        gk.append(k[same])
        is_.append(row[~same])
        ik.append(k[~same])

    def cat(parts: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
        return np.concatenate(parts).astype(np.float64) if parts else np.empty(0)

    return cat(gs), cat(gk), cat(is_), cat(ik)


def size_table(embedded: ConditionEmbeddings, fmr: float = TARGET_FMR) -> list[TarRow]:
    """All-pairs TAR at ``fmr`` per face size (undetected photos reject every pair)."""
    rows = []
    for size, (matrix, found) in sorted(embedded.sized.items()):
        sim = (matrix @ matrix.T).astype(np.float32)
        sim[~found, :] = MISSED
        sim[:, ~found] = MISSED
        gen, _, imp, _ = _pairs(sim, embedded.labels, np.zeros(len(embedded.labels)))
        rows.append(_tar_row(f"{size} px", gen, imp, fmr, images=len(embedded.paths),
                             missed=int((~found).sum()), upscaled=embedded.upscaled[size]))
    return rows


def yaw_bin_name(lo: float, hi: float) -> str:
    """``0-15°``, ``> 45°``."""
    return f"> {lo:.0f}°" if math.isinf(hi) else f"{lo:.0f}-{hi:.0f}°"


def pose_table(embedded: ConditionEmbeddings, fmr: float = TARGET_FMR,
               bins: Sequence[tuple[float, float]] = YAW_BINS) -> list[TarRow]:
    """TAR at ``fmr`` per bin of the larger |yaw| of each pair (native photos)."""
    has = np.isfinite(embedded.yaw)
    labels = [lab for lab, h in zip(embedded.labels, has, strict=True) if h]
    matrix = embedded.native[has]
    key = np.abs(embedded.yaw[has])
    sim = (matrix @ matrix.T).astype(np.float32)
    gen, gk, imp, ik = _pairs(sim, labels, key)
    rows = []
    for lo, hi in bins:
        g = gen[(gk >= lo) & (gk < hi)]
        i = imp[(ik >= lo) & (ik < hi)]
        rows.append(_tar_row(yaw_bin_name(lo, hi), g, i, fmr,
                             images=int(((key >= lo) & (key < hi)).sum())))
    return rows


def yaw_histogram(yaws: npt.NDArray[np.float64],
                  bins: Sequence[tuple[float, float]] = YAW_BINS) -> dict[str, int]:
    """Photos per |yaw| bin (and ``unknown`` for those without keypoints)."""
    a = np.abs(yaws)
    out = {yaw_bin_name(lo, hi): int(((a >= lo) & (a < hi)).sum()) for lo, hi in bins}
    out["unknown"] = int((~np.isfinite(yaws)).sum())
    return out


@dataclass(frozen=True)
class Demographic:
    """Open-set figures of one set, and its own impostor FMR at the shipped thresholds.

    FPIR grows with the gallery (1 - (1 - FMR)^N for N enrolled faces), so two sets
    with galleries of different sizes are compared by FMR: the share of the set's
    cross-identity pairs that score at or above the same threshold.

    Attributes:
        root: The set.
        unenrolled_fraction: Share of multi-photo identities held out as never enrolled.
        result: FNIR at FPIR targets; ``at_threshold`` holds the shipped thresholds.
        shipped: ``(target FMR, threshold)`` of each shipped threshold, in
            ``result.at_threshold`` order.
        impostors: Cross-identity pairs of the set's photos.
        false_matches: Of those, how many score at or above each shipped threshold.
    """

    root: Path
    unenrolled_fraction: float
    result: OpenSetResult
    shipped: tuple[tuple[float, float], ...]
    impostors: int = 0
    false_matches: tuple[int, ...] = ()

    def fmr(self, k: int) -> float | None:
        """The set's FMR at the ``k``-th shipped threshold (None without impostors)."""
        if not self.impostors or k >= len(self.false_matches):
            return None
        return self.false_matches[k] / self.impostors

    def to_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root), "unenrolled_fraction": self.unenrolled_fraction,
            **self.result.to_json(),
            "impostor_pairs": self.impostors,
            "at_shipped_threshold": [
                {"target_fmr": f, "threshold": round(t, 6), "fpir": fp, "fnir": fn,
                 "false_matches": (self.false_matches[k] if k < len(self.false_matches)
                                   else None),
                 "fmr": self.fmr(k)}
                for k, ((f, t), (_, fp, fn)) in enumerate(
                    zip(self.shipped, self.result.at_threshold, strict=True))],
        }


def default_unenrolled_fraction(labels: Sequence[str]) -> float:
    """0 when some identity has one photo (those are the non-mated searches), else 0.4."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return 0.0 if any(c == 1 for c in counts.values()) else 0.4


def impostor_counts(embedded: ConditionEmbeddings, thresholds: Sequence[float]
                    ) -> tuple[int, tuple[int, ...]]:
    """Cross-identity pairs of the native photos, and how many score at or above each
    threshold."""
    sim = (embedded.native @ embedded.native.T).astype(np.float32)
    _, _, imp, _ = _pairs(sim, embedded.labels, np.zeros(len(embedded.labels)))
    return int(imp.size), tuple(int(np.count_nonzero(imp >= t)) for t in thresholds)


def demographic(embedded: ConditionEmbeddings, shipped: Sequence[tuple[float, float]],
                unenrolled_fraction: float | None = None, seed: int = 0) -> Demographic:
    """Open-set 1:N on the native embeddings, FPIR/FNIR at the shipped thresholds, and
    the set's own impostor FMR there.

    Raises:
        ValueError: The set cannot make a gallery and non-mated searches.
    """
    fraction = (default_unenrolled_fraction(embedded.labels) if unenrolled_fraction is None
                else unenrolled_fraction)
    labelled = LabelledEmbeddings(embedded.root, embedded.paths, embedded.labels,
                                  embedded.native, np.zeros(len(embedded.paths), dtype=bool))
    thresholds = [t for _, t in shipped]
    result = evaluate_open_set(labelled, unenrolled_fraction=fraction, seed=seed,
                               fpirs=(1e-2, 1e-3), thresholds=thresholds)
    impostors, false_matches = impostor_counts(embedded, thresholds)
    return Demographic(embedded.root, fraction, result, tuple(shipped), impostors,
                       false_matches)


def set_name(root: Path) -> str:
    """A set's short name: its folder, or ``lfw`` for ``lfw/people``."""
    if root.name == "people" and root.parent.name:
        return root.parent.name
    return root.name or str(root)


def higher_fmr_findings(sets: Sequence[Demographic]) -> list[str]:
    """Plain sentences naming each set whose impostor pairs match more often (higher
    FMR) than another set's at the same shipped threshold, with the FPIR beside it."""
    out = []
    for k, (target, t) in enumerate(sets[0].shipped if sets else ()):
        rates = [(d, rate) for d in sets if (rate := d.fmr(k)) is not None]
        if len(rates) < 2:
            continue
        low_set, low = min(rates, key=lambda r: r[1])
        for d, rate in rates:
            if rate <= low:
                continue
            ratio = f"{rate / low:.1f} times" if low > 0 else "above zero, unlike"
            out.append(
                f"at the shipped FMR {target:g} threshold {t:.4f}, {set_name(d.root)}'s impostor "
                f"pairs match at FMR {rate:.2g} ({d.false_matches[k]:,} of "
                f"{d.impostors:,}), {ratio} {set_name(low_set.root)}'s {low:.2g} "
                f"({low_set.false_matches[k]:,} of {low_set.impostors:,}); FPIR "
                f"{d.result.at_threshold[k][1]:.4f} with a gallery of {d.result.gallery} "
                f"against {low_set.result.at_threshold[k][1]:.4f} with "
                f"{low_set.result.gallery} (FPIR grows with the gallery)")
    return out


# ------------------------------------------------------------------ plotting


def _set_label(table: dict[str, Any]) -> str:
    return f"{table['model_id']} / {set_name(Path(table['root']))}"


def plot_conditions(tables: Sequence[dict[str, Any]], path: Path) -> None:
    """One panel per condition (size, pose, open-set FNIR, impostor FMR at the shipped
    thresholds), a line or bar per encoder and set.

    ``tables`` are the JSON dicts of the command (``model_id``, ``root``, ``size``,
    ``pose``, ``demographic``).

    Raises:
        ImageError: matplotlib is missing or the file cannot be written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError as exc:
        raise ImageError("--plot needs matplotlib (pip install matplotlib)") from exc
    fig, axes = plt.subplots(1, 4, figsize=(24, 5.5))
    size_ax, pose_ax, fnir_ax, fmr_ax = axes
    names: list[str] = []
    fnirs: list[float] = []
    fmrs: dict[float, list[float]] = {}
    for table in tables:
        label = _set_label(table)
        xs = [int(r["name"].split()[0]) for r in table["size"]]
        ys = [r["tar"] if r["tar"] is not None else math.nan for r in table["size"]]
        size_ax.plot(xs, ys, "o-", label=label)
        bins = [r["name"] for r in table["pose"]]
        tars = [r["tar"] if r["tar"] is not None else math.nan for r in table["pose"]]
        pose_ax.plot(bins, tars, "o-", label=label)
        point = next(p for p in table["demographic"]["fnir_at_fpir"] if p["target_fpir"] == 1e-2)
        names.append(label)
        fnirs.append(point["fnir"] if point["fnir"] is not None else math.nan)
        for s in table["demographic"]["at_shipped_threshold"]:
            fmr = s.get("fmr")
            fmrs.setdefault(s["target_fmr"], []).append(
                fmr if fmr is not None and fmr > 0 else math.nan)
    size_ax.set(xscale="log", xlabel="face width (px)", ylabel=f"TAR at FMR {TARGET_FMR:g}",
                title="face size (failures to detect count as rejects)")
    size_ax.set_xticks(list(FACE_SIZES), [str(s) for s in FACE_SIZES])
    size_ax.xaxis.set_minor_formatter(NullFormatter())
    pose_ax.set(xlabel="larger |yaw| of the pair", ylabel=f"TAR at FMR {TARGET_FMR:g}",
                title="head pose (missing point: not resolvable)")
    x = np.arange(len(names))
    fnir_ax.bar(x, fnirs, 0.6, label="FNIR at FPIR 1e-2")
    fnir_ax.set_xticks(x, names, rotation=20, ha="right", fontsize=7)
    fnir_ax.set(title="open set: FNIR at FPIR 1e-2", ylabel="FNIR", ylim=(0, 1))
    width = 0.8 / max(1, len(fmrs))
    for k, (target, values) in enumerate(sorted(fmrs.items(), reverse=True)):
        bars = fmr_ax.bar(x + (k - (len(fmrs) - 1) / 2) * width, values, width,
                          label=f"at the shipped FMR {target:g} threshold")
        fmr_ax.axhline(target, color=bars.patches[0].get_facecolor() if bars.patches
                       else None, linestyle="--", linewidth=1)
    fmr_ax.set_xticks(x, names, rotation=20, ha="right", fontsize=7)
    fmr_ax.set(yscale="log", ylabel="share of the set's impostor pairs matching",
               title="impostor FMR per set (dashed: the target; none: 0)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: cannot write the plot: {exc}") from exc
    finally:
        plt.close(fig)

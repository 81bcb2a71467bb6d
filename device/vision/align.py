"""Face alignment: a similarity transform from detector keypoints onto a template, and a warp.

Pure functions over arrays. The embedder was trained on chips cut by dlib's 5-point
shape predictor (``dlib.get_face_chip(img, shape, size=150, padding=0.25)``); our
detector gives different keypoints (BlazeFace's eye centres, nose tip, mouth centre,
ear tragions), so the template says where *BlazeFace's* keypoints land in a dlib
chip. It is derived from data by ``models/derive_template.py`` and stored in
``models/manifest.toml`` next to the model it serves (see :class:`AlignTemplate`).

Coordinates are continuous pixel coordinates throughout, the convention of
:class:`~device.types.Detection`: pixel ``i`` spans ``[i, i + 1)``, so its centre is
``i + 0.5``. Template points are in the same convention inside the chip. ``cv2``
samples at pixel centres ``(i, j)``; :func:`warp` converts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from device.errors import ModelError
from device.types import KEYPOINT_NAMES, Detection, FaceChip, FloatArray, Image

logger = logging.getLogger(__name__)

#: How :func:`warp` fills chip pixels that fall outside the image.
Border = Literal["constant", "replicate"]

_BORDERS: dict[str, int] = {
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
}


def similarity_transform(
    src: npt.ArrayLike, dst: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> npt.NDArray[np.float64]:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    Umeyama's closed form (IEEE PAMI 13(4), 1991), with the reflection excluded: the
    result is always a proper rotation, so a mirrored set of points is fitted as well
    as a rotation can, never flipped.

    Args:
        src: ``(N, 2)`` points, ``N >= 2``.
        dst: ``(N, 2)`` target points.
        weights: Optional ``(N,)`` non-negative weights (default all 1).

    Returns:
        ``(2, 3)`` matrix ``M`` with ``dst ≈ M[:, :2] @ src + M[:, 2]``.

    Raises:
        ValueError: Shapes differ, fewer than two points, non-finite values, negative
            weights, or all ``src`` points coincide (no scale can be found).
    """
    s = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != 2 or s.shape != d.shape:
        raise ValueError(f"expected two (N, 2) point arrays, got {s.shape} and {d.shape}")
    if s.shape[0] < 2:
        raise ValueError(f"a similarity transform needs at least 2 points, got {s.shape[0]}")
    if not (np.isfinite(s).all() and np.isfinite(d).all()):
        raise ValueError("keypoints must be finite")
    w = np.ones(s.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (s.shape[0],) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {s.shape[0]} non-negative values, not all zero")
    w = w / w.sum()
    mu_s = w @ s
    mu_d = w @ d
    sc = s - mu_s
    dc = d - mu_d
    var_s = float(w @ (sc**2).sum(axis=1))
    if var_s <= 1e-12:
        raise ValueError("the source points coincide; no scale can be fitted")
    cov = (dc * w[:, None]).T @ sc  # 2x2, sum_i w_i d_i s_i^T
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign)) / var_s
    out = np.empty((2, 3))
    out[:, :2] = scale * rot
    out[:, 2] = mu_d - scale * rot @ mu_s
    return out


def apply_transform(matrix: npt.ArrayLike, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Map ``(..., 2)`` points with a ``(2, 3)`` affine matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def invert_transform(matrix: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Inverse of a ``(2, 3)`` affine matrix.

    Raises:
        ValueError: The matrix is singular.
    """
    m = np.asarray(matrix, dtype=np.float64)
    lin = m[:, :2]
    if abs(np.linalg.det(lin)) < 1e-12:
        raise ValueError("the transform is singular")
    inv = np.linalg.inv(lin)
    return np.concatenate([inv, -(inv @ m[:, 2])[:, None]], axis=1)


def warp(
    image: Image,
    matrix: npt.ArrayLike,
    size: tuple[int, int],
    *,
    border: Border = "constant",
    detection: Detection | None = None,
) -> FaceChip:
    """Cut a chip out of ``image`` with bilinear sampling.

    Args:
        image: RGB ``uint8`` ``(H, W, 3)``.
        matrix: ``(2, 3)`` map from frame to chip, continuous pixel coordinates.
        size: Chip ``(width, height)``.
        border: ``constant`` fills outside pixels with black (what
            ``dlib.get_face_chip`` does, so what dlib's encoder saw in training for
            faces near an edge); ``replicate`` repeats the edge pixels.
        detection: Recorded in the chip (``None`` for a whole-image fallback).

    Raises:
        ValueError: Bad image or matrix shape, unknown border, or a non-positive size.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3) or not np.isfinite(m).all():
        raise ValueError(f"expected a finite (2, 3) transform, got shape {m.shape}")
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"chip size must be positive, got {size}")
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {sorted(_BORDERS)}, got {border!r}")
    # Continuous -> cv2's pixel-centre coordinates: x_cv = x - 0.5 on both sides.
    shift = m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    m_cv = m.copy()
    m_cv[:, 2] += shift
    chip = cv2.warpAffine(
        image, m_cv, (width, height), flags=cv2.INTER_LINEAR,
        borderMode=_BORDERS[border], borderValue=(0, 0, 0),
    )
    return FaceChip(
        image=np.ascontiguousarray(chip), detection=detection,
        transform=m.astype(np.float32),
    )


@dataclass(frozen=True)
class AlignTemplate:
    """Where chosen keypoints go in a chip of the embedder's input size.

    Attributes:
        size: Chip ``(width, height)`` in pixels.
        keypoints: Names of the keypoints used (from :data:`~device.types.KEYPOINT_NAMES`).
        points: ``(len(keypoints), 2)`` target positions, continuous chip pixels.
        border: How to fill chip pixels outside the frame (see :func:`warp`).
        box: ``(x, y, w, h)`` where the detector's face box lands in the chip, on
            average (for :func:`box_transform`); ``None`` if not known.
    """

    size: tuple[int, int]
    keypoints: tuple[str, ...]
    points: FloatArray
    border: Border = "constant"
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.shape != (len(self.keypoints), 2) or len(self.keypoints) < 2:
            raise ValueError(
                f"template needs >= 2 named keypoints and one (x, y) per name; got "
                f"{len(self.keypoints)} names and points of shape {pts.shape}"
            )
        unknown = [k for k in self.keypoints if k not in KEYPOINT_NAMES]
        if unknown:
            raise ValueError(f"unknown keypoint names {unknown}; known: {list(KEYPOINT_NAMES)}")
        if self.border not in _BORDERS:
            raise ValueError(f"border must be one of {sorted(_BORDERS)}, got {self.border!r}")
        if self.size[0] <= 0 or self.size[1] <= 0:
            raise ValueError(f"template size must be positive, got {self.size}")

    @property
    def indices(self) -> tuple[int, ...]:
        """Positions of :attr:`keypoints` in a detection's keypoint tuple."""
        return tuple(KEYPOINT_NAMES.index(k) for k in self.keypoints)

    @classmethod
    def from_manifest(cls, model_id: str, extra: Mapping[str, Any]) -> AlignTemplate:
        """Read ``template = {size, keypoints, points, border, box}`` of a manifest entry.

        Raises:
            ModelError: The entry has no template or it is malformed.
        """
        raw = extra.get("template")
        if not isinstance(raw, Mapping):
            raise ModelError(
                f"model {model_id}: models/manifest.toml has no [models.{model_id}.template] "
                "table (keypoints, points, size): the embedder cannot align faces without it"
            )
        try:
            size = tuple(int(v) for v in raw["size"])
            if len(size) != 2:
                raise ValueError(f"size must be [width, height], got {raw['size']}")
            return cls(
                size=(size[0], size[1]),
                keypoints=tuple(str(k) for k in raw["keypoints"]),
                points=np.asarray(raw["points"], dtype=np.float32),
                border=raw.get("border", "constant"),
                box=None if "box" not in raw else _four(raw["box"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model {model_id}: malformed alignment template: {exc}") from exc


def _four(values: Any) -> tuple[float, float, float, float]:
    a, b, c, d = (float(v) for v in values)
    return (a, b, c, d)


def keypoint_array(detection: Detection, indices: Sequence[int]) -> npt.NDArray[np.float64]:
    """The chosen keypoints of a detection as ``(len(indices), 2)``.

    Raises:
        ValueError: The detection lacks them (e.g. a detector without keypoints).
    """
    if len(detection.keypoints) <= max(indices):
        raise ValueError(
            f"alignment needs keypoints {list(indices)}, the detection has "
            f"{len(detection.keypoints)}"
        )
    return np.asarray([detection.keypoints[i] for i in indices], dtype=np.float64)


def estimate(detection: Detection, template: AlignTemplate) -> npt.NDArray[np.float64]:
    """The similarity taking the detection's keypoints onto the template.

    Raises:
        ValueError: The detection has too few keypoints or they coincide.
    """
    return similarity_transform(keypoint_array(detection, template.indices), template.points)


def align(image: Image, detection: Detection, template: AlignTemplate) -> FaceChip:
    """Align one detected face into a chip (similarity to the template, bilinear warp).

    Raises:
        ValueError: The detection lacks keypoints, or the image is malformed.
    """
    matrix = estimate(detection, template)
    return warp(image, matrix, template.size, border=template.border, detection=detection)


def box_transform(
    box: tuple[float, float, float, float], template: AlignTemplate
) -> npt.NDArray[np.float64]:
    """Map a face box onto the chip where the detector's boxes land (``template.box``).

    For faces without keypoints and the whole-image fallback: no rotation, one scale
    (least squares over the four corners), centres matched. Without a template box,
    the box is fitted into the whole chip.

    Raises:
        ValueError: The box has no area.
    """
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise ValueError(f"box must have a positive size, got {box}")
    tx, ty, tw, th = template.box or (0.0, 0.0, float(template.size[0]), float(template.size[1]))
    corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)
    target = np.array([[tx, ty], [tx + tw, ty], [tx + tw, ty + th], [tx, ty + th]])
    return similarity_transform(corners, target)

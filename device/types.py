"""The immutable values that flow between pipeline stages.

Images are ``numpy`` arrays in RGB order, ``uint8``, shape ``(H, W, 3)``. Boxes are
``(x, y, w, h)`` in original-frame pixels (floats). Keypoints are ``(x, y)`` pairs in
original-frame pixels, in the detector's order (see :data:`KEYPOINT_NAMES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

#: Order of the six BlazeFace keypoints (subject's left/right, as MediaPipe names them:
#: ``right_eye`` is the eye on the *image's* left for a frontal face).
KEYPOINT_NAMES: tuple[str, ...] = (
    "right_eye",
    "left_eye",
    "nose_tip",
    "mouth_center",
    "right_ear_tragion",
    "left_ear_tragion",
)


@dataclass(frozen=True, slots=True)
class Frame:
    """One image from a frame source.

    Attributes:
        camera_id: The configured id of the source that produced it.
        seq: Sequence number within the source, starting at 0, without gaps
            except where frames were dropped.
        timestamp: Capture time, seconds since the epoch (UTC).
        image: RGB ``uint8`` array of shape ``(H, W, 3)``.
        source: Human-readable origin (file path, device, URL without credentials).
    """

    camera_id: str
    seq: int
    timestamp: float
    image: Image = field(repr=False)
    source: str = ""

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True, slots=True)
class Detection:
    """One face found by a detector, in original-frame pixels.

    Attributes:
        box: ``(x, y, w, h)``; may extend past the frame edge for cut-off faces.
        score: Detector confidence in ``[0, 1]``.
        keypoints: ``(x, y)`` pairs; six for BlazeFace, none for detectors without them.
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: tuple[tuple[float, float], ...] = ()

    @property
    def area(self) -> float:
        return max(self.box[2], 0.0) * max(self.box[3], 0.0)

    def to_json(self) -> dict[str, object]:
        return {
            "box": [round(v, 2) for v in self.box],
            "score": round(self.score, 4),
            "keypoints": [[round(x, 2), round(y, 2)] for x, y in self.keypoints],
        }


@dataclass(frozen=True, slots=True)
class FaceChip:
    """An aligned face crop ready for an embedder.

    Attributes:
        image: RGB ``uint8`` array at the embedder's input size.
        detection: The detection it was cut from (``None`` for a whole-image fallback).
        transform: 2×3 affine matrix mapping frame pixels to chip pixels.
    """

    image: Image = field(repr=False)
    detection: Detection | None
    transform: FloatArray = field(repr=False)


@dataclass(frozen=True, slots=True)
class Embedding:
    """A face embedding, L2-normalised.

    Attributes:
        vector: ``float32`` unit vector.
        model_id: Id of the model that produced it (from ``models/manifest.toml``).
    """

    vector: FloatArray = field(repr=False)
    model_id: str

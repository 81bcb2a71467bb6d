"""Coral's SSD MobileNet V2 face detector on the Edge TPU.

``ssd_mobilenet_v2_face_quant_postprocess_edgetpu.tflite`` (google-coral/test_data):
a ``(1, 320, 320, 3)`` ``uint8`` input and the four outputs of TFLite's
``TFLite_Detection_PostProcess`` op (its NMS runs inside the model):

* boxes ``(1, N, 4)``: ``ymin, xmin, ymax, xmax``, normalised to the input;
* classes ``(1, N)``: class ids (always 0, "face");
* scores ``(1, N)``: confidences in ``[0, 1]``;
* count ``(1,)``: how many of the N rows are valid.

LiteRT does not promise the order of those outputs (models exported by TF1 and TF2
differ), so :func:`identify_outputs` tells them apart by shape, then by the op's
output names, then by their values. The model has no keypoints.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
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
from device.vision.boxes import Candidates, to_detections
from device.vision.letterbox import letterbox
from device.vision.runtime import ModelRuntime, TensorInfo
from device.vision.timing import NullTimer, StageTimer

logger = logging.getLogger(__name__)

_POSTPROCESS_NAME = re.compile(r"^(?P<base>.*TFLite_Detection_PostProcess)(?::(?P<n>\d+))?$")


@dataclass(frozen=True, slots=True, eq=False)
class SsdOutputs:
    """The four post-processed outputs, batch dimension removed.

    Attributes:
        boxes: ``(N, 4)`` ``ymin, xmin, ymax, xmax`` normalised.
        classes: ``(N,)`` class ids.
        scores: ``(N,)`` confidences.
        count: Number of valid rows.
    """

    boxes: FloatArray
    classes: FloatArray
    scores: FloatArray
    count: int


def _dequantize(info: TensorInfo, array: np.ndarray) -> FloatArray:
    if np.issubdtype(array.dtype, np.integer) and info.scale:
        return ((array.astype(np.float32) - info.zero_point) * info.scale).astype(np.float32)
    return np.asarray(array, dtype=np.float32)


def _is_integral(values: FloatArray) -> bool:
    return bool(np.all(np.abs(values - np.round(values)) < 1e-6))


def identify_outputs(infos: Sequence[TensorInfo], arrays: Sequence[np.ndarray]) -> SsdOutputs:
    """Sort the four ``TFLite_Detection_PostProcess`` outputs whatever their order.

    Boxes are the ``(1, N, 4)`` tensor and count the one-element tensor. Classes
    and scores have the same ``(1, N)`` shape: the op names them
    ``…PostProcess:1`` (classes) and ``…PostProcess:2`` (scores) when the model
    keeps those names; otherwise classes are the tensor whose valid entries are
    all whole numbers while scores are not; if both are (e.g. nothing detected),
    the model's output order is used.

    Raises:
        ModelError: The outputs are not those of a post-processed SSD.
    """
    if len(infos) != 4 or len(arrays) != 4:
        raise ModelError(f"expected the 4 outputs of an SSD post-process op, got {len(arrays)}")
    values = [_dequantize(i, a) for i, a in zip(infos, arrays, strict=True)]
    boxes_i = [k for k, v in enumerate(values) if v.ndim == 3 and v.shape[-1] == 4]
    # (1,) is the count; with N == 1, classes and scores have one element too.
    count_i = [k for k, v in enumerate(values) if v.size == 1 and v.ndim <= 1]
    rest = [k for k in range(4) if k not in boxes_i + count_i]
    if len(boxes_i) != 1 or len(count_i) != 1 or len(rest) != 2:
        raise ModelError(
            "outputs are not boxes (1,N,4), classes (1,N), scores (1,N), count (1,): "
            f"got shapes {[tuple(v.shape) for v in values]}"
        )
    boxes = values[boxes_i[0]].reshape(-1, 4)
    n = boxes.shape[0]
    a, b = rest
    if values[a].size != n or values[b].size != n:
        raise ModelError(
            f"classes/scores shapes {values[a].shape}, {values[b].shape} do not match "
            f"{n} boxes"
        )
    count = int(np.clip(round(float(values[count_i[0]].reshape(-1)[0])), 0, n))
    classes_k, scores_k = _order_classes_scores(infos, values, a, b, count)
    return SsdOutputs(
        boxes=boxes,
        classes=values[classes_k].reshape(-1),
        scores=values[scores_k].reshape(-1),
        count=count,
    )


def _order_classes_scores(
    infos: Sequence[TensorInfo], values: Sequence[FloatArray], a: int, b: int, count: int
) -> tuple[int, int]:
    ma, mb = _POSTPROCESS_NAME.match(infos[a].name), _POSTPROCESS_NAME.match(infos[b].name)
    if ma and mb and ma["base"] == mb["base"]:
        na, nb = int(ma["n"] or 0), int(mb["n"] or 0)
        if {na, nb} == {1, 2}:
            return (a, b) if na == 1 else (b, a)
    va, vb = values[a].reshape(-1)[:count], values[b].reshape(-1)[:count]
    ia, ib = _is_integral(va), _is_integral(vb)
    if ia and not ib:
        return a, b
    if ib and not ia:
        return b, a
    return (a, b) if a < b else (b, a)


def decode_ssd(outputs: SsdOutputs, threshold: float, max_detections: int) -> Candidates:
    """Valid detections scoring at least ``threshold``, best first, normalised corners.

    Returns:
        Candidates with boxes ``xmin, ymin, xmax, ymax`` in ``[0, 1]`` of the input
        and no keypoints.
    """
    n = outputs.count
    boxes = outputs.boxes[:n]
    scores = outputs.scores[:n]
    keep = (scores >= threshold) & np.all(np.isfinite(boxes), axis=1)
    keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")[:max_detections]
    corners = boxes[order][:, [1, 0, 3, 2]]  # y0 x0 y1 x1 -> x0 y0 x1 y1
    return Candidates(
        corners.astype(np.float32), scores[order].astype(np.float32),
        np.zeros((len(order), 0, 2), np.float32),
    )


class CoralSsdConfig(Section):
    """Coral's SSD MobileNet V2 face detector on an Edge TPU."""

    type: Literal["coral-ssd"] = Field("coral-ssd", description="Detector backend.")
    model_id: str = Field(
        "coral-ssd-face",
        description="Manifest id: coral-ssd-face (compiled for the Edge TPU) or "
        "coral-ssd-face-cpu (the same network uncompiled, on the CPU without a TPU).",
    )
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Minimum score.")
    max_faces: int = Field(100, ge=1, le=1000, description="At most this many faces per frame.")
    device: str | None = Field(
        None, description="Edge TPU to use: 'usb', 'pci', 'usb:0'…; default the first found."
    )
    num_threads: int = Field(1, ge=1, le=16, description="CPU threads for ops off the TPU.")


class CoralSsdDetector:
    """Detect faces on the Edge TPU (or, with the CPU variant, through LiteRT on the CPU).
    A context manager; ``close()`` is idempotent.

    Raises:
        HardwareError: No usable Edge TPU (checked first, for the Edge TPU model).
        ModelError: The model is missing, unpinned, fails verification, or does not
            have the expected tensors.
    """

    def __init__(
        self,
        config: CoralSsdConfig | None = None,
        *,
        cache_dir: Path | None = None,
        manifest: dict[str, model_manifest.ModelSpec] | None = None,
    ) -> None:
        self.config = config or CoralSsdConfig()
        # The manifest says whether the file is compiled for the Edge TPU (edgetpu = true,
        # the default) or is the CPU variant, run by LiteRT alone.
        spec = model_manifest.get_spec(self.config.model_id, manifest)
        on_tpu = bool(spec.extra.get("edgetpu", True))
        self.runtime = ModelRuntime(
            self.config.model_id, num_threads=self.config.num_threads, edgetpu=on_tpu,
            edgetpu_device=self.config.device, cache_dir=cache_dir, manifest=manifest,
        )
        info = self.runtime.inputs[0] if len(self.runtime.inputs) == 1 else None
        if info is None or len(info.shape) != 4 or info.shape[3] != 3 or (
            info.dtype not in ("uint8", "int8")
        ):
            self.runtime.close()
            raise ModelError(
                f"model {self.config.model_id}: input {[i.shape for i in self.runtime.inputs]} "
                "is not one (1, H, W, 3) uint8/int8 image"
            )
        self._input = info

    @property
    def input_size(self) -> tuple[int, int]:
        """``(width, height)`` of the model input."""
        return (self._input.shape[2], self._input.shape[1])

    def detect(self, image: Image, timer: StageTimer | None = None) -> list[Detection]:
        """Faces in ``image`` (RGB ``uint8``), best first, frame pixels, no keypoints.

        Raises:
            ModelError: Inference failed or the outputs are not recognised.
        """
        timer = timer or NullTimer()
        width, height = self.input_size
        with timer.stage("preprocess"):
            padded, plan = letterbox(image, width, height)
            tensor = padded if self._input.dtype == "uint8" else (
                (padded.astype(np.int16) - 128).astype(np.int8)
            )
        with timer.stage("inference"):
            arrays = self.runtime.run(tensor[None])
        with timer.stage("postprocess"):
            found = decode_ssd(
                identify_outputs(self.runtime.outputs, arrays),
                self.config.threshold, self.config.max_faces,
            )
            return to_detections(plan.candidates_to_frame(found, normalized=True))

    def close(self) -> None:
        """Release the interpreter and the Edge TPU. Safe to call twice."""
        self.runtime.close()

    def __enter__(self) -> CoralSsdDetector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

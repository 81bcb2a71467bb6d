"""TFLite's ``TFLite_Detection_PostProcess`` custom operator, for :class:`GraphBuilder`.

The operator SSD detectors end with (Coral's face detector among them): it decodes box
encodings against anchors, runs non-maximum suppression and writes four float32 outputs.

Inputs, in this order:

* box encodings ``(1, N, 4)``: ``y, x, h, w`` relative to each anchor, float32 or uint8;
* class predictions ``(1, N, C)``: ``C`` classes, plus one when class 0 is the
  background; float32 or uint8;
* anchors ``(N, 4)``: ``ycenter, xcenter, h, w``, a constant of the box encodings' type
  (the kernel dequantises uint8 anchors with uint8 encodings, and reads float anchors
  only beside float encodings).

Outputs, in this order: boxes ``(1, M, 4)`` (``ymin, xmin, ymax, xmax``), classes
``(1, M)``, scores ``(1, M)``, count ``(1,)``, with ``M = max_detections *
max_classes_per_detection``.

The options are a flexbuffer map with the keys the kernel's ``Init`` reads (LiteRT's
``kernels/detection_postprocess.cc``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from flatbuffers import flexbuffers

from device.errors import ModelError
from device.modelzoo import tflite_schema as fb
from device.modelzoo.tflite_builder import CustomOptions, GraphBuilder

#: The name LiteRT registers the kernel under (``OperatorCode.custom_code``).
CUSTOM_CODE = "TFLite_Detection_PostProcess"


@dataclass(frozen=True)
class DetectionPostProcessOptions:
    """The operator's options (defaults: those of TF's SSD exporter).

    Attributes:
        max_detections: Rows of the outputs.
        max_classes_per_detection: Classes kept per anchor (fast NMS).
        detections_per_class: Boxes kept per class (regular NMS).
        use_regular_nms: Per-class NMS instead of the fast, class-agnostic one.
        nms_score_threshold: Scores below this are dropped before NMS.
        nms_iou_threshold: A box overlapping a better one by more than this is dropped.
        num_classes: Classes without the background.
        y_scale: Divisor of the ``y`` encoding.
        x_scale: Divisor of the ``x`` encoding.
        h_scale: Divisor of the ``h`` encoding (before ``exp``).
        w_scale: Divisor of the ``w`` encoding (before ``exp``).
    """

    max_detections: int = 10
    max_classes_per_detection: int = 1
    detections_per_class: int = 100
    use_regular_nms: bool = False
    nms_score_threshold: float = 1e-8
    nms_iou_threshold: float = 0.6
    num_classes: int = 1
    y_scale: float = 10.0
    x_scale: float = 10.0
    h_scale: float = 5.0
    w_scale: float = 5.0

    def __post_init__(self) -> None:
        if min(self.max_detections, self.max_classes_per_detection,
               self.detections_per_class, self.num_classes) < 1:
            raise ModelError(f"{CUSTOM_CODE}: counts must be at least 1: {self}")
        if not 0.0 < self.nms_iou_threshold <= 1.0:
            raise ModelError(
                f"{CUSTOM_CODE}: nms_iou_threshold {self.nms_iou_threshold} is not in (0, 1]")
        if min(self.y_scale, self.x_scale, self.h_scale, self.w_scale) <= 0:
            raise ModelError(f"{CUSTOM_CODE}: the box scales must be positive: {self}")

    def flexbuffer(self) -> bytes:
        """The options as the flexbuffer map the kernel reads (keys sorted, deterministic)."""
        builder = flexbuffers.Builder()
        with builder.Map():
            for key, value in sorted(asdict(self).items()):
                if isinstance(value, bool):
                    builder.Bool(key, value)
                elif isinstance(value, int):
                    builder.Int(key, value)
                else:
                    builder.Float(key, float(value))
        return bytes(builder.Finish())

    @property
    def rows(self) -> int:
        """``M``: rows of the boxes, classes and scores outputs."""
        return self.max_detections * self.max_classes_per_detection


@dataclass(frozen=True)
class PostProcessOutputs:
    """Tensor indices of the operator's four outputs in the graph."""

    boxes: int
    classes: int
    scores: int
    count: int


def add_detection_postprocess(
    graph: GraphBuilder,
    box_encodings: int,
    class_predictions: int,
    anchors: int,
    options: DetectionPostProcessOptions,
    name: str = CUSTOM_CODE,
) -> PostProcessOutputs:
    """Append the operator and its four float32 outputs.

    The outputs are named as TF's exporter names them: ``name``, ``name:1`` (classes),
    ``name:2`` (scores), ``name:3`` (count).

    Raises:
        ModelError: The inputs do not have the shapes the operator takes.
    """
    boxes_shape = graph.shape(box_encodings)
    classes_shape = graph.shape(class_predictions)
    anchors_shape = graph.shape(anchors)
    n = boxes_shape[1] if len(boxes_shape) == 3 else -1
    if (len(boxes_shape) != 3 or boxes_shape[0] != 1 or boxes_shape[2] != 4
            or classes_shape[:2] != (1, n) or len(classes_shape) != 3
            or classes_shape[2] - options.num_classes not in (0, 1)
            or anchors_shape != (n, 4)):
        raise ModelError(
            f"{CUSTOM_CODE}: inputs must be box encodings (1, N, 4), class predictions "
            f"(1, N, {options.num_classes} or {options.num_classes + 1}) and anchors (N, 4); "
            f"got {boxes_shape}, {classes_shape}, {anchors_shape}"
        )
    types = {graph.tensor(i).dtype for i in (box_encodings, class_predictions, anchors)}
    if not types <= {fb.TensorType.FLOAT32, fb.TensorType.UINT8}:
        raise ModelError(f"{CUSTOM_CODE}: inputs must be float32 or uint8, got {types}")
    if (graph.tensor(box_encodings).dtype == fb.TensorType.UINT8) != (
            graph.tensor(anchors).dtype == fb.TensorType.UINT8):
        # The kernel reads the anchors with the box encodings' type: float anchors beside
        # uint8 encodings are read as zeros, and every box comes out empty.
        raise ModelError(
            f"{CUSTOM_CODE}: uint8 box encodings need uint8 (quantised) anchors and float32 "
            "encodings float32 anchors; the kernel reads both with the encodings' type"
        )
    m = options.rows
    outputs = PostProcessOutputs(
        boxes=graph.activation(name, (1, m, 4)),
        classes=graph.activation(f"{name}:1", (1, m)),
        scores=graph.activation(f"{name}:2", (1, m)),
        count=graph.activation(f"{name}:3", (1,)),
    )
    graph.operator(
        fb.BuiltinOperator.CUSTOM,
        (box_encodings, class_predictions, anchors),
        (outputs.boxes, outputs.classes, outputs.scores, outputs.count),
        CustomOptions(CUSTOM_CODE, options.flexbuffer()),
    )
    return outputs

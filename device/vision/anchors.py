"""SSD anchor generation, as MediaPipe's ``SsdAnchorsCalculator`` does it.

A port of the non-multiscale branch of
``mediapipe/calculators/tflite/ssd_anchors_calculator.cc``. The option values for
BlazeFace come from ``mediapipe/modules/face_detection/face_detection.pbtxt`` (shared
options: ``min_scale 0.1484375``, ``max_scale 0.75``, offsets 0.5, ``aspect_ratios
1.0``, ``fixed_anchor_size true``) and the per-model graphs
``face_detection_full_range.pbtxt`` (192×192, one layer of stride 4, no interpolated
anchor → 48·48 = 2304 anchors) and ``face_detection_short_range.pbtxt`` (128×128,
strides 8, 16, 16, 16, interpolated aspect 1.0 → 16·16·2 + 8·8·6 = 896 anchors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from device.types import FloatArray


@dataclass(frozen=True, slots=True)
class SsdAnchorOptions:
    """The subset of ``SsdAnchorsCalculatorOptions`` BlazeFace-style models use.

    Attributes:
        input_width: Model input width in pixels.
        input_height: Model input height in pixels.
        strides: One stride per layer; consecutive equal strides share a feature map.
        min_scale: Anchor scale of the first layer.
        max_scale: Anchor scale of the last layer.
        anchor_offset_x: Anchor centre offset within a cell, in cells.
        anchor_offset_y: Anchor centre offset within a cell, in cells.
        aspect_ratios: Aspect ratios added for every layer.
        interpolated_scale_aspect_ratio: If > 0, one more anchor per layer with this
            aspect ratio and the geometric mean of this and the next layer's scale.
        fixed_anchor_size: If true every anchor has width = height = 1 (the model
            regresses absolute sizes); BlazeFace uses this.
        reduce_boxes_in_lowest_layer: MediaPipe's predefined first-layer anchors.
    """

    input_width: int
    input_height: int
    strides: tuple[int, ...]
    min_scale: float = 0.1484375
    max_scale: float = 0.75
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = True
    reduce_boxes_in_lowest_layer: bool = False


#: ``face_detection_full_range.pbtxt``: 192×192, strides [4], no interpolated anchor.
FULL_RANGE_OPTIONS = SsdAnchorOptions(
    input_width=192, input_height=192, strides=(4,), interpolated_scale_aspect_ratio=0.0
)

#: ``face_detection_short_range.pbtxt``: 128×128, strides [8, 16, 16, 16].
SHORT_RANGE_OPTIONS = SsdAnchorOptions(
    input_width=128, input_height=128, strides=(8, 16, 16, 16),
    interpolated_scale_aspect_ratio=1.0,
)


def _scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


def generate_anchors(options: SsdAnchorOptions) -> FloatArray:
    """Anchors in MediaPipe's order.

    Returns:
        ``float32`` array of shape ``(N, 4)``: ``x_center, y_center, w, h``, all
        normalised to the input size (``w = h = 1`` with ``fixed_anchor_size``).

    Raises:
        ValueError: No strides, or a non-positive stride or input size.
    """
    strides = options.strides
    if not strides or min(strides) <= 0:
        raise ValueError(f"anchor options need positive strides, got {strides!r}")
    if options.input_width <= 0 or options.input_height <= 0:
        raise ValueError("anchor options need a positive input size")
    num_layers = len(strides)
    blocks: list[np.ndarray] = []
    layer_id = 0
    while layer_id < num_layers:
        sizes: list[tuple[float, float]] = []  # (w, h) per anchor of a cell
        last = layer_id
        while last < num_layers and strides[last] == strides[layer_id]:
            scale = _scale(options.min_scale, options.max_scale, last, num_layers)
            ratios: list[float] = []
            scales: list[float] = []
            if last == 0 and options.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for ratio in options.aspect_ratios:
                    ratios.append(ratio)
                    scales.append(scale)
                if options.interpolated_scale_aspect_ratio > 0.0:
                    scale_next = (
                        1.0 if last == num_layers - 1
                        else _scale(options.min_scale, options.max_scale, last + 1, num_layers)
                    )
                    scales.append(math.sqrt(scale * scale_next))
                    ratios.append(options.interpolated_scale_aspect_ratio)
            for ratio, s in zip(ratios, scales, strict=True):
                root = math.sqrt(ratio)
                sizes.append((s * root, s / root))
            last += 1
        stride = strides[layer_id]
        fm_h = math.ceil(options.input_height / stride)
        fm_w = math.ceil(options.input_width / stride)
        ys, xs = np.meshgrid(
            (np.arange(fm_h, dtype=np.float64) + options.anchor_offset_y) / fm_h,
            (np.arange(fm_w, dtype=np.float64) + options.anchor_offset_x) / fm_w,
            indexing="ij",
        )
        per_cell = len(sizes)
        block = np.empty((fm_h, fm_w, per_cell, 4), dtype=np.float64)
        block[..., 0] = xs[..., None]
        block[..., 1] = ys[..., None]
        if options.fixed_anchor_size:
            block[..., 2:] = 1.0
        else:
            block[..., 2] = np.array([w for w, _ in sizes])
            block[..., 3] = np.array([h for _, h in sizes])
        blocks.append(block.reshape(-1, 4))
        layer_id = last
    return np.concatenate(blocks).astype(np.float32)

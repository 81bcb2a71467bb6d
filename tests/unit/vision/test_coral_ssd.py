"""Coral SSD face detector: output decoding on synthetic tensors, and no-TPU errors."""

from __future__ import annotations

import ctypes.util
import itertools

import numpy as np
import pytest

from device.errors import HardwareError, ModelError
from device.vision.coral_ssd import (
    CoralSsdConfig,
    CoralSsdDetector,
    decode_ssd,
    identify_outputs,
)
from device.vision.letterbox import fit
from device.vision.runtime import TensorInfo

BOXES = np.array([[[0.1, 0.2, 0.5, 0.4], [0.6, 0.6, 0.9, 0.8], [0.0, 0.0, 0.1, 0.1]]], np.float32)
CLASSES = np.zeros((1, 3), np.float32)
SCORES = np.array([[0.7, 0.95, 0.2]], np.float32)
COUNT = np.array([2.0], np.float32)


def _info(name: str, array: np.ndarray, index: int) -> TensorInfo:
    return TensorInfo(name=name, index=index, shape=array.shape, dtype=array.dtype.name)


TF1_NAMES = [f"TFLite_Detection_PostProcess{s}" for s in ("", ":1", ":2", ":3")]
ARRAYS = [BOXES, CLASSES, SCORES, COUNT]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_outputs_are_identified_in_any_order_by_name(order: tuple[int, ...]) -> None:
    infos = [_info(TF1_NAMES[k], ARRAYS[k], i) for i, k in enumerate(order)]
    out = identify_outputs(infos, [ARRAYS[k] for k in order])
    np.testing.assert_array_equal(out.boxes, BOXES[0])
    np.testing.assert_array_equal(out.scores, SCORES[0])
    np.testing.assert_array_equal(out.classes, CLASSES[0])
    assert out.count == 2


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (2, 0, 3, 1), (1, 3, 0, 2)])
def test_without_telling_names_classes_and_scores_are_told_apart_by_value(
    order: tuple[int, ...],
) -> None:
    # TF2 exports name every output StatefulPartitionedCall:N, in no fixed order.
    infos = [_info(f"StatefulPartitionedCall:{i}", ARRAYS[k], i) for i, k in enumerate(order)]
    out = identify_outputs(infos, [ARRAYS[k] for k in order])
    np.testing.assert_array_equal(out.scores, SCORES[0])
    np.testing.assert_array_equal(out.classes, CLASSES[0])


def test_quantised_outputs_are_dequantised() -> None:
    scores_q = np.array([[179, 243, 51]], np.uint8)  # * 1/255 ~ 0.7, 0.95, 0.2
    infos = [_info(n, a, i) for i, (n, a) in enumerate(zip(TF1_NAMES, ARRAYS, strict=True))]
    infos[2] = TensorInfo(TF1_NAMES[2], 2, (1, 3), "uint8", scale=1 / 255, zero_point=0)
    out = identify_outputs(infos, [BOXES, CLASSES, scores_q, COUNT])
    np.testing.assert_allclose(out.scores, SCORES[0], atol=0.003)


def test_outputs_that_are_not_an_ssd_postprocess_are_refused() -> None:
    arrays = [np.zeros((1, 10, 16), np.float32), np.zeros((1, 10, 1), np.float32)]
    infos = [_info("a", arrays[0], 0), _info("b", arrays[1], 1)]
    with pytest.raises(ModelError, match="4 outputs"):
        identify_outputs(infos, arrays)
    arrays4 = [*arrays, np.zeros((1,), np.float32), np.zeros((1, 3), np.float32)]
    infos4 = [_info(str(i), a, i) for i, a in enumerate(arrays4)]
    with pytest.raises(ModelError, match="shapes"):
        identify_outputs(infos4, arrays4)


def test_decode_keeps_valid_rows_above_threshold_as_xyxy_best_first() -> None:
    infos = [_info(n, a, i) for i, (n, a) in enumerate(zip(TF1_NAMES, ARRAYS, strict=True))]
    found = decode_ssd(identify_outputs(infos, ARRAYS), threshold=0.5, max_detections=100)
    # Row 2 is past `count`; both valid rows pass 0.5; the 0.95 one comes first.
    assert found.scores.tolist() == pytest.approx([0.95, 0.7])
    np.testing.assert_allclose(found.boxes, [[0.6, 0.6, 0.8, 0.9], [0.2, 0.1, 0.4, 0.5]])
    assert found.keypoints.shape == (2, 0, 2)
    assert len(decode_ssd(identify_outputs(infos, ARRAYS), 0.8, 100)) == 1
    assert len(decode_ssd(identify_outputs(infos, ARRAYS), 0.5, 1)) == 1


def test_letterboxed_input_boxes_map_back_to_frame_pixels() -> None:
    plan = fit(1280, 720, 320, 320)  # inner 320x180, 70 px bars top and bottom
    infos = [_info(n, a, i) for i, (n, a) in enumerate(zip(TF1_NAMES, ARRAYS, strict=True))]
    boxes = np.array([[[70 / 320, 0.25, 250 / 320, 0.5], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    outs = identify_outputs(infos, [boxes, CLASSES, SCORES, np.array([1.0], np.float32)])
    frame = plan.candidates_to_frame(decode_ssd(outs, 0.5, 100))
    np.testing.assert_allclose(frame.boxes[0], [320, 0, 640, 720], atol=1e-3)

    portrait = fit(720, 1280, 320, 320)  # inner 180x320, 70 px bars left and right
    frame = portrait.candidates_to_frame(decode_ssd(outs, 0.5, 100))
    # x: input 80..160 px -> (x - 70) * 4; y: input 70..250 px -> y * 4.
    np.testing.assert_allclose(frame.boxes[0], [40, 280, 360, 1000], atol=1e-3)


@pytest.mark.skipif(
    ctypes.util.find_library("edgetpu") is not None,
    reason="the Edge TPU runtime is installed here; a TPU may be attached",
)
def test_without_an_edge_tpu_construction_says_what_to_check() -> None:
    with pytest.raises(HardwareError) as err:
        CoralSsdDetector(CoralSsdConfig())
    message = str(err.value)
    for hint in ("libedgetpu", "lsusb", "plugdev", "apex", "udev", "compiled for the Edge TPU"):
        assert hint in message

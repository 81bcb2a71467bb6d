"""The Coral backend's decoding against a real ``TFLite_Detection_PostProcess`` op.

Small uint8 SSD-shaped graphs, written by the project's own TFLite writer, end in TFLite's
detection post-processing op, which LiteRT runs: known anchors and quantised box
encodings and class scores go in; the op's boxes, classes, scores and count come out and
go through ``identify_outputs``, ``decode_ssd`` and the letterbox frame mapping, and
through ``CoralSsdDetector`` itself on the CPU. A numpy model of the op (decode, then
class-agnostic NMS) says what must come out.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from device.errors import HardwareError, ModelError
from device.imageio import read_image
from device.modelzoo import tflite_schema as fb
from device.modelzoo.ssd_postprocess import (
    CUSTOM_CODE,
    DetectionPostProcessOptions,
    add_detection_postprocess,
)
from device.modelzoo.tflite_builder import GraphBuilder, Quantization
from device.vision import models as model_manifest
from device.vision.coral_ssd import CoralSsdConfig, CoralSsdDetector, decode_ssd, identify_outputs
from device.vision.letterbox import fit
from device.vision.runtime import ModelRuntime

pytest.importorskip("ai_edge_litert.interpreter")

BOX_Q = Quantization.per_tensor(0.05, 128)  # encodings -6.4 .. 6.35
SCORE_Q = Quantization.per_tensor(1 / 255, 0)  # scores 0 .. 1
OPTIONS = DetectionPostProcessOptions(max_detections=5, nms_score_threshold=0.3,
                                      nms_iou_threshold=0.6, num_classes=1)

#: Anchors (ycenter, xcenter, h, w), normalised to the input.
ANCHORS = np.array([
    [0.30, 0.30, 0.20, 0.20],  # 0: a face
    [0.31, 0.31, 0.20, 0.20],  # 1: the same face, a weaker anchor: NMS drops it
    [0.70, 0.60, 0.30, 0.25],  # 2: a second face, shifted and scaled by its encoding
    [0.20, 0.80, 0.10, 0.10],  # 3: scores under nms_score_threshold
    [0.50, 0.10, 0.15, 0.15],  # 4: a third face, scoring between 0.3 and 0.5
    [0.90, 0.90, 0.10, 0.10],  # 5: background
    [0.10, 0.10, 0.10, 0.10],  # 6: background
    [0.60, 0.25, 0.12, 0.12],  # 7: a fourth face, well separated
], dtype=np.float32)

#: The anchors as the uint8 constant beside uint8 encodings (quantised SSD exports have
#: them so): every value above is a multiple of 0.005.
ANCHOR_Q = Quantization.per_tensor(0.005, 0)
ANCHORS_Q = np.round(ANCHORS / 0.005).astype(np.uint8)

#: Quantised box encodings (y, x, h, w); 128 is zero.
BOXES_Q = np.array([
    [128, 128, 128, 128],
    [130, 126, 129, 127],
    [168, 108, 142, 114],  # y +2.0, x -1.0, h +0.7, w -0.7
    [128, 128, 128, 128],
    [118, 138, 118, 138],
    [128, 128, 128, 128],
    [128, 128, 128, 128],
    [128, 128, 110, 146],
], dtype=np.uint8)

#: Quantised class predictions (background, face).
SCORES_Q = np.array([
    [10, 230], [20, 200], [5, 250], [200, 60], [100, 110], [250, 2], [240, 1], [30, 180],
], dtype=np.uint8)


def reference(anchors: np.ndarray, boxes_q: np.ndarray, scores_q: np.ndarray,
              options: DetectionPostProcessOptions) -> tuple[np.ndarray, np.ndarray, int]:
    """The op, in numpy: decode against the anchors, then fast single-class NMS."""
    enc = (boxes_q.astype(np.float64) - BOX_Q.zero_points[0]) * BOX_Q.scales[0]
    a = anchors.astype(np.float64)
    if anchors.dtype == np.uint8:
        a = (a - ANCHOR_Q.zero_points[0]) * np.float32(ANCHOR_Q.scales[0])
    yc = enc[:, 0] / options.y_scale * a[:, 2] + a[:, 0]
    xc = enc[:, 1] / options.x_scale * a[:, 3] + a[:, 1]
    half_h = 0.5 * np.exp(enc[:, 2] / options.h_scale) * a[:, 2]
    half_w = 0.5 * np.exp(enc[:, 3] / options.w_scale) * a[:, 3]
    decoded = np.stack([yc - half_h, xc - half_w, yc + half_h, xc + half_w], axis=1)
    scores = scores_q[:, 1].astype(np.float64) * SCORE_Q.scales[0]

    def iou(i: int, j: int) -> float:
        bi, bj = decoded[i], decoded[j]
        inter = (max(0.0, min(bi[2], bj[2]) - max(bi[0], bj[0]))
                 * max(0.0, min(bi[3], bj[3]) - max(bi[1], bj[1])))
        area = (bi[2] - bi[0]) * (bi[3] - bi[1]) + (bj[2] - bj[0]) * (bj[3] - bj[1])
        return float(inter / (area - inter))

    order = [int(i) for i in np.argsort(-scores, kind="stable")
             if scores[i] >= options.nms_score_threshold]
    kept: list[int] = []
    for i in order:
        if len(kept) < options.max_detections and all(
                iou(i, k) <= options.nms_iou_threshold for k in kept):
            kept.append(i)
    return decoded[kept], scores[kept], len(kept)


def postprocess_graph(output_order: tuple[int, ...] = (0, 1, 2, 3),
                      name: str = "TFLite_Detection_PostProcess") -> bytes:
    """uint8 box encodings and class predictions in, the op's four outputs out."""
    g = GraphBuilder("facegate test: SSD post-processing")
    n = len(ANCHORS)
    boxes = g.activation("raw_outputs/box_encodings", (1, n, 4), fb.TensorType.UINT8, BOX_Q)
    classes = g.activation("raw_outputs/class_predictions", (1, n, 2), fb.TensorType.UINT8,
                           SCORE_Q)
    anchors = g.constant("anchors", ANCHORS_Q, ANCHOR_Q)
    out = add_detection_postprocess(g, boxes, classes, anchors, OPTIONS, name=name)
    tensors = (out.boxes, out.classes, out.scores, out.count)
    g.set_io((boxes, classes), tuple(tensors[k] for k in output_order))
    return g.serialize()


def pinned_manifest(tmp_path: Path, model_id: str, data: bytes, **extra: str
                    ) -> dict[str, model_manifest.ModelSpec]:
    """A manifest entry pinning ``data`` (written to ``tmp_path/<model_id>.tflite``)."""
    (tmp_path / f"{model_id}.tflite").write_bytes(data)
    lines = [f"[models.{model_id}]", 'kind = "detector"', 'source = "url"',
             f'url = "https://example.invalid/{model_id}.tflite"',
             f'path = "{model_id}.tflite"',
             f'sha256 = "{_sha256(data)}"',
             *(f"{key} = {value}" for key, value in extra.items())]
    toml = tmp_path / f"{model_id}.toml"
    toml.write_text("schema = 1\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return model_manifest.load_manifest(toml)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def run_op(tmp_path: Path, model: bytes) -> tuple[ModelRuntime, list[np.ndarray]]:
    manifest = pinned_manifest(tmp_path, "ssd-post", model)
    runtime = ModelRuntime("ssd-post", num_threads=1, cache_dir=tmp_path, manifest=manifest)
    arrays = runtime.run(BOXES_Q[None], SCORES_Q[None])
    return runtime, arrays


def test_the_writer_emits_the_custom_op_litert_runs(tmp_path: Path) -> None:
    model = postprocess_graph()
    assert model == postprocess_graph()  # deterministic
    assert CUSTOM_CODE.encode() in model
    runtime, (boxes, classes, scores, count) = run_op(tmp_path, model)
    with runtime:
        assert [i.dtype for i in runtime.inputs] == ["uint8", "uint8"]
        assert runtime.inputs[0].scale == pytest.approx(0.05)
        assert runtime.inputs[0].zero_point == 128
        assert [o.name for o in runtime.outputs] == [
            "TFLite_Detection_PostProcess", "TFLite_Detection_PostProcess:1",
            "TFLite_Detection_PostProcess:2", "TFLite_Detection_PostProcess:3"]
    want_boxes, want_scores, want_count = reference(ANCHORS_Q, BOXES_Q, SCORES_Q, OPTIONS)
    assert want_count == 4  # anchors 2, 0, 7, 4; 1 suppressed, 3 under the threshold
    assert boxes.shape == (1, 5, 4) and classes.shape == (1, 5) and scores.shape == (1, 5)
    assert int(count[0]) == want_count
    np.testing.assert_allclose(boxes[0, :want_count], want_boxes, atol=1e-5)
    np.testing.assert_allclose(scores[0, :want_count], want_scores, atol=1e-6)
    np.testing.assert_array_equal(classes[0, :want_count], 0.0)


@pytest.mark.parametrize("name", ["TFLite_Detection_PostProcess", "detections"])
def test_identify_outputs_in_every_order(tmp_path: Path, name: str) -> None:
    """Whatever order the model lists its outputs in, and whether or not they keep the op's
    names, the backend finds boxes, classes, scores and count."""
    want_boxes, want_scores, want_count = reference(ANCHORS_Q, BOXES_Q, SCORES_Q, OPTIONS)
    for k, order in enumerate(itertools.permutations(range(4))):
        folder = tmp_path / f"{k:02d}"
        folder.mkdir()
        runtime, arrays = run_op(folder, postprocess_graph(order, name))
        with runtime:
            outs = identify_outputs(runtime.outputs, arrays)
        assert outs.count == want_count, order
        np.testing.assert_allclose(outs.boxes[:want_count], want_boxes, atol=1e-5)
        np.testing.assert_allclose(outs.scores[:want_count], want_scores, atol=1e-6)
        np.testing.assert_array_equal(outs.classes[:want_count], 0.0)


def test_decode_and_frame_mapping_of_the_ops_output(tmp_path: Path) -> None:
    runtime, arrays = run_op(tmp_path, postprocess_graph())
    with runtime:
        outs = identify_outputs(runtime.outputs, arrays)
    want_boxes, want_scores, _ = reference(ANCHORS_Q, BOXES_Q, SCORES_Q, OPTIONS)
    found = decode_ssd(outs, threshold=0.5, max_detections=100)
    strong = want_scores >= 0.5
    assert len(found.scores) == int(strong.sum()) == 3  # the 0.43 face is under 0.5
    np.testing.assert_allclose(found.scores, want_scores[strong], atol=1e-6)
    yx = want_boxes[strong]
    np.testing.assert_allclose(found.boxes, yx[:, [1, 0, 3, 2]], atol=1e-5)
    assert found.keypoints.shape == (3, 0, 2)
    # A 1280x720 frame letterboxed into 320x320: scale 1/4, 70 px bars above and below.
    frame = fit(1280, 720, 320, 320).candidates_to_frame(found, normalized=True)
    x0, y0, x1, y1 = (yx[:, 1] * 320 * 4, (yx[:, 0] * 320 - 70) * 4,
                      yx[:, 3] * 320 * 4, (yx[:, 2] * 320 - 70) * 4)
    np.testing.assert_allclose(frame.boxes, np.stack([x0, y0, x1, y1], axis=1), atol=2e-3)
    assert decode_ssd(outs, threshold=0.3, max_detections=2).scores.shape == (2,)


def detector_graph(box_encodings: np.ndarray, class_scores: np.ndarray) -> bytes:
    """A 320x320 uint8 image input (as Coral's model has) whose detections are fixed: the
    post-processing op runs on constant encodings and scores."""
    g = GraphBuilder("facegate test: SSD detector with fixed raw outputs")
    image = g.activation("normalized_input_image_tensor", (1, 320, 320, 3),
                         fb.TensorType.UINT8, Quantization.per_tensor(1 / 128, 128))
    boxes = g.constant("box_encodings", box_encodings[None].astype(np.float32))
    classes = g.constant("class_predictions", class_scores[None].astype(np.float32))
    anchors = g.constant("anchors", ANCHORS)
    out = add_detection_postprocess(g, boxes, classes, anchors, OPTIONS)
    g.set_io((image,), (out.boxes, out.classes, out.scores, out.count))
    return g.serialize()


def test_coral_ssd_detector_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    """CoralSsdDetector with an ``edgetpu = false`` model: letterbox, LiteRT, the op,
    identification, decoding and frame mapping, on a real frame."""
    enc = (BOXES_Q.astype(np.float32) - 128) * 0.05
    scores = SCORES_Q.astype(np.float32) / 255
    manifest = pinned_manifest(tmp_path, "ssd-cpu", detector_graph(enc, scores),
                               edgetpu="false")
    config = CoralSsdConfig(model_id="ssd-cpu", threshold=0.5)
    frame = np.zeros((720, 1280, 3), np.uint8)
    with CoralSsdDetector(config, cache_dir=tmp_path, manifest=manifest) as detector:
        assert detector.runtime.edgetpu is False
        assert detector.input_size == (320, 320)
        faces = detector.detect(frame)
    want_boxes, want_scores, _ = reference(ANCHORS, BOXES_Q, SCORES_Q, OPTIONS)
    strong = want_scores >= 0.5
    yx = want_boxes[strong]
    expected = np.stack([yx[:, 1] * 1280, (yx[:, 0] * 320 - 70) * 4,
                         yx[:, 3] * 1280, (yx[:, 2] * 320 - 70) * 4], axis=1)
    assert len(faces) == 3
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    got = np.array([[x, y, x + w, y + h] for x, y, w, h in (f.box for f in faces)])
    np.testing.assert_allclose(got, expected, atol=2e-3)
    np.testing.assert_allclose([f.score for f in faces], want_scores[strong], atol=1e-6)


def test_an_edge_tpu_model_id_still_refuses_without_a_tpu(tmp_path: Path) -> None:
    """The manifest's ``edgetpu`` flag, not the backend, decides where the model runs."""
    enc = np.zeros((len(ANCHORS), 4), np.float32)
    manifest = pinned_manifest(tmp_path, "ssd-tpu", detector_graph(enc, SCORES_Q / 255),
                               edgetpu="true")
    import ctypes.util

    if ctypes.util.find_library("edgetpu") is not None:
        pytest.skip("the Edge TPU runtime is installed here")
    with pytest.raises(HardwareError, match="Edge TPU"):
        CoralSsdDetector(CoralSsdConfig(model_id="ssd-tpu"), cache_dir=tmp_path,
                         manifest=manifest)


def test_bad_postprocess_inputs_are_refused() -> None:
    g = GraphBuilder("bad")
    boxes = g.activation("b", (1, 8, 4))
    classes = g.activation("c", (1, 8, 3))  # 2 classes + background, options say 1
    anchors = g.constant("a", ANCHORS)
    with pytest.raises(ModelError, match="class predictions"):
        add_detection_postprocess(g, boxes, classes, anchors, OPTIONS)
    # uint8 encodings with float anchors: the kernel would read the anchors as zeros.
    boxes_q = g.activation("bq", (1, 8, 4), fb.TensorType.UINT8, BOX_Q)
    classes_q = g.activation("cq", (1, 8, 2), fb.TensorType.UINT8, SCORE_Q)
    with pytest.raises(ModelError, match="uint8 box encodings need uint8"):
        add_detection_postprocess(g, boxes_q, classes_q, anchors, OPTIONS)
    with pytest.raises(ModelError, match="nms_iou_threshold"):
        DetectionPostProcessOptions(nms_iou_threshold=0.0)


@pytest.mark.skipif(not os.environ.get("FACEGATE_CORAL_CPU_FILE"),
                    reason="set FACEGATE_CORAL_CPU_FILE to Coral's CPU face model "
                    "(ssd_mobilenet_v2_face_quant_postprocess.tflite)")
def test_the_real_cpu_variant_finds_faces(tmp_path: Path, datasets: Path) -> None:
    source = Path(os.environ["FACEGATE_CORAL_CPU_FILE"])
    spec = model_manifest.get_spec("coral-ssd-face-cpu")
    assert model_manifest.git_blob_id(source) == spec.git_blob
    (tmp_path / spec.path).write_bytes(source.read_bytes())
    image = next(iter(sorted((datasets / "boxes").rglob("*.jpg"))))
    with CoralSsdDetector(CoralSsdConfig(model_id="coral-ssd-face-cpu"),
                          cache_dir=tmp_path) as detector:
        faces = detector.detect(read_image(image))
    assert faces, image

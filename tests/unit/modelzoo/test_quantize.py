"""int8 quantisation: the arithmetic, and small synthetic graphs run by LiteRT against float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device.errors import ModelError
from device.modelzoo import calibrate, quantize
from device.modelzoo import tflite_schema as fb
from device.modelzoo.tflite_builder import (
    AddOptions,
    Conv2DOptions,
    FullyConnectedOptions,
    GraphBuilder,
    PadOptions,
    Pool2DOptions,
    ReducerOptions,
)

litert = pytest.importorskip("ai_edge_litert.interpreter")
schema = pytest.importorskip("ai_edge_litert.schema_py_generated")


def test_per_channel_weights_are_symmetric_with_one_scale_per_output_channel() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 2)) * np.array([0.01, 1.0, 30.0, 0.0])[:, None, None, None]
    q, scales = quantize.quantise_weights(w)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scales.shape == (4,)
    peaks = np.abs(w.reshape(4, -1)).max(axis=1)
    np.testing.assert_allclose(scales[:3], peaks[:3] / 127, rtol=1e-7)
    assert scales[3] == 1.0 and not q[3].any()  # an all-zero channel: any positive scale
    assert np.abs(q).max() == 127 and q.min() >= -127  # -128 is never used
    error = np.abs(q * scales[:, None, None, None] - w)
    assert (error <= scales[:, None, None, None] / 2 + 1e-12).all()
    # Each stored scale is exactly a float32 (what the file holds).
    assert all(float(np.float32(s)) == s for s in scales)


def test_per_tensor_weights_share_one_scale() -> None:
    w = np.array([[0.5, -2.0], [1.0, 0.25]])
    q, scales = quantize.quantise_weights(w, per_channel=False)
    assert scales.shape == (1,)
    assert scales[0] == pytest.approx(2.0 / 127)
    assert q.tolist() == [[32, -127], [64, 16]]


def test_bias_is_int32_at_input_scale_times_weight_scale() -> None:
    bias = np.array([0.1, -3.0, 0.0])
    w_scales = np.array([0.01, 0.02, 0.5])
    q, scales = quantize.quantise_bias(bias, 0.05, w_scales)
    assert q.dtype == np.int32
    np.testing.assert_allclose(scales, 0.05 * w_scales, rtol=1e-6)
    np.testing.assert_array_equal(q, np.round(bias / scales))
    with pytest.raises(ModelError, match="does not fit in int32"):
        quantize.quantise_bias(np.array([1e9]), 1e-3, np.array([1e-3]), "big")


def test_pixels_fold_exactly_into_the_input_quantisation() -> None:
    quant = quantize.activation_quantization(0.0, 255.0)
    assert quant.scales == (1.0,) and quant.zero_points == (-128,)
    pixels = np.arange(256)
    q = pixels - 128  # what the runner feeds
    assert q.min() == -128 and q.max() == 127
    np.testing.assert_array_equal(quantize.dequantise(q, quant), pixels)


def test_activation_ranges_hold_zero_exactly() -> None:
    for low, high in ((0.0, 6.0), (-1.0, 3.0), (2.0, 5.0), (-4.0, -1.0)):
        quant = quantize.activation_quantization(low, high)
        zero = quant.zero_points[0]
        assert -128 <= zero <= 127
        assert quantize.dequantise(np.array([zero]), quant)[0] == 0.0
        covered = quantize.dequantise(np.array([-128, 127]), quant)
        assert covered[0] <= min(low, 0) + quant.scales[0] and covered[1] >= max(high, 0) - \
            quant.scales[0]
    with pytest.raises(ModelError, match="empty"):
        quantize.activation_quantization(0.0, 0.0, "dead")


def _small_graph() -> GraphBuilder:
    """conv(relu) -> conv -> add(relu, skip) -> avg pool + channel pad / spatial pad -> add ->
    mean -> fc: every rewrite the dlib graph needs, at 8x8x3."""
    rng = np.random.default_rng(1)
    g = GraphBuilder("small")
    x = g.activation("chip", (1, 8, 8, 3))

    def conv(src: int, name: str, cin: int, cout: int, stride: int, relu: bool,
             padding: fb.Padding) -> int:
        w = g.constant(f"{name}/w", (rng.normal(size=(cout, 3, 3, cin)) * 0.02).astype(np.float32))
        b = g.constant(f"{name}/b", rng.normal(size=cout).astype(np.float32))
        h, wd = g.shape(src)[1:3]
        size = (h - 2) // stride if padding == fb.Padding.VALID else h
        out = g.activation(name, (1, size, size, cout) if stride == 1 else
                           (1, 1 + (h - 3) // stride, 1 + (wd - 3) // stride, cout))
        act = fb.Activation.RELU if relu else fb.Activation.NONE
        g.operator(fb.BuiltinOperator.CONV_2D, (src, w, b), (out,),
                   Conv2DOptions(padding, stride, stride, act))
        return out

    a = conv(x, "c1", 3, 4, 1, True, fb.Padding.SAME)
    b = conv(a, "c2", 4, 4, 1, False, fb.Padding.SAME)
    s = g.activation("add1", (1, 8, 8, 4))
    g.operator(fb.BuiltinOperator.ADD, (b, a), (s,), AddOptions(fb.Activation.RELU))
    d = conv(s, "c3", 4, 8, 2, False, fb.Padding.VALID)  # 3x3x8
    pool = g.activation("pool", (1, 4, 4, 4))
    g.operator(fb.BuiltinOperator.AVERAGE_POOL_2D, (s,), (pool,),
               Pool2DOptions(fb.Padding.VALID, 2, 2, 2, 2))
    cpad = g.constant("cpad/p", np.array([[0, 0], [0, 0], [0, 0], [0, 4]], np.int32))
    pooled = g.activation("cpad", (1, 4, 4, 8))
    g.operator(fb.BuiltinOperator.PAD, (pool, cpad), (pooled,), PadOptions())
    spad = g.constant("spad/p", np.array([[0, 0], [0, 1], [0, 1], [0, 0]], np.int32))
    grown = g.activation("spad", (1, 4, 4, 8))
    g.operator(fb.BuiltinOperator.PAD, (d, spad), (grown,), PadOptions())
    s2 = g.activation("add2", (1, 4, 4, 8))
    g.operator(fb.BuiltinOperator.ADD, (grown, pooled), (s2,), AddOptions(fb.Activation.RELU))
    axes = g.constant("mean/axes", np.array([1, 2], np.int32))
    m = g.activation("mean", (1, 8))
    g.operator(fb.BuiltinOperator.MEAN, (s2, axes), (m,), ReducerOptions(False))
    fw = g.constant("fc/w", rng.normal(size=(5, 8)).astype(np.float32))
    out = g.activation("out", (1, 5))
    g.operator(fb.BuiltinOperator.FULLY_CONNECTED, (m, fw), (out,), FullyConnectedOptions())
    g.set_io((x,), (out,))
    return g


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    interp = litert.Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return np.array(interp.get_tensor(interp.get_output_details()[0]["index"]))


def _chips(n: int, seed: int) -> list[calibrate.CalibrationChip]:
    rng = np.random.default_rng(seed)
    return [calibrate.CalibrationChip(f"noise/{i}", rng.integers(0, 256, (8, 8, 3), np.uint8))
            for i in range(n)]


@pytest.fixture(scope="module")
def small_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, GraphBuilder]:
    tmp = tmp_path_factory.mktemp("quant")
    float_path = tmp / "float.tflite"
    float_path.write_bytes(_small_graph().serialize())
    ranges = calibrate.measure_ranges(float_path, _chips(64, 2), num_threads=1)
    int8 = quantize.quantise_graph(_small_graph(), ranges, "small int8")
    int8_path = tmp / "int8.tflite"
    int8_path.write_bytes(int8.serialize())
    return float_path, int8_path, int8


def test_small_int8_graph_tracks_its_float_reference(
    small_models: tuple[Path, Path, GraphBuilder],
) -> None:
    float_path, int8_path, _ = small_models
    for chip in _chips(20, 3):  # held-out inputs, not the calibration ones
        ref = _run(float_path, chip.image.astype(np.float32)[None])[0].astype(np.float64)
        got = _run(int8_path, (chip.image.astype(np.int16) - 128).astype(np.int8)[None])[0]
        assert got.dtype == np.float32
        cosine = ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got))
        assert cosine > 0.995
        assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_small_int8_graph_layout(small_models: tuple[Path, Path, GraphBuilder]) -> None:
    _, int8_path, graph = small_models
    model = schema.ModelT.InitFromPackedBuf(int8_path.read_bytes(), 0)
    sub = model.subgraphs[0]
    codes = [model.operatorCodes[op.opcodeIndex].builtinCode for op in sub.operators]
    B = schema.BuiltinOperator
    # The channel PAD became a CONCATENATION; the spatial one stays a PAD.
    assert codes.count(B.CONCATENATION) == 1 and codes.count(B.PAD) == 1
    assert codes[-1] == B.DEQUANTIZE and codes.count(B.DEQUANTIZE) == 1
    tensors = sub.tensors
    inp = tensors[sub.inputs[0]]
    assert inp.type == schema.TensorType.INT8
    assert list(inp.quantization.scale) == [1.0] and list(inp.quantization.zeroPoint) == [-128]
    assert tensors[sub.outputs[0]].type == schema.TensorType.FLOAT32
    conv = next(op for op in sub.operators
                if model.operatorCodes[op.opcodeIndex].builtinCode == B.CONV_2D)
    x, w, b = (tensors[i] for i in conv.inputs)
    assert w.type == schema.TensorType.INT8 and len(w.quantization.scale) == 4
    assert list(w.quantization.zeroPoint) == [0] * 4 and w.quantization.quantizedDimension == 0
    assert b.type == schema.TensorType.INT32
    np.testing.assert_allclose(
        b.quantization.scale, np.float32(x.quantization.scale[0]) * w.quantization.scale,
        rtol=1e-6)
    # The zeros joined by the CONCATENATION are real zeros (the zero point).
    concat = next(op for op in sub.operators
                  if model.operatorCodes[op.opcodeIndex].builtinCode == B.CONCATENATION)
    const = tensors[concat.inputs[1]]
    data = np.frombuffer(bytes(model.buffers[const.buffer].data), np.int8)
    assert (data == const.quantization.zeroPoint[0]).all()
    assert graph.num_operators == len(sub.operators)


def test_a_missing_range_is_refused() -> None:
    with pytest.raises(ModelError, match="no calibrated range"):
        quantize.quantise_graph(_small_graph(), {"chip": quantize.Range(0, 255)}, "x")

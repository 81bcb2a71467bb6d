"""The TFLite writer: a small graph of every supported op, run by LiteRT, checked by numpy.

The written flatbuffer is also parsed back with the generated schema reader that
ships in ai-edge-litert, an independent check of the hand-transcribed schema numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device.errors import ModelError
from device.modelzoo import tflite_schema as fb
from device.modelzoo.tflite_builder import (
    AddOptions,
    Conv2DOptions,
    FullyConnectedOptions,
    GraphBuilder,
    MulOptions,
    PadOptions,
    Pool2DOptions,
    ReducerOptions,
)

litert = pytest.importorskip("ai_edge_litert.interpreter")
schema = pytest.importorskip("ai_edge_litert.schema_py_generated")

RNG = np.random.default_rng(7)
W1 = RNG.normal(size=(6, 3, 3, 4)).astype(np.float32)  # out, kh, kw, in
B1 = RNG.normal(size=6).astype(np.float32)
W2 = RNG.normal(size=(8, 2, 2, 6)).astype(np.float32)
B2 = RNG.normal(size=8).astype(np.float32)
FC = RNG.normal(size=(5, 8)).astype(np.float32)


def tiny_graph() -> GraphBuilder:
    """x[1,9,9,4] -> conv3x3 SAME relu -> maxpool3 s2 VALID -> conv2x2 s2 VALID ->
    avgpool2 s1 -> ADD(pad(channels of mul(x_pool))) relu -> MEAN -> FC."""
    g = GraphBuilder("tiny test graph")
    x = g.activation("x", (1, 9, 9, 4))
    c1 = g.activation("c1", (1, 9, 9, 6))
    g.operator(
        fb.BuiltinOperator.CONV_2D,
        (x, g.constant("w1", W1), g.constant("b1", B1)),
        (c1,),
        Conv2DOptions(fb.Padding.SAME, 1, 1, fb.Activation.RELU),
    )
    p1 = g.activation("p1", (1, 4, 4, 6))
    g.operator(
        fb.BuiltinOperator.MAX_POOL_2D, (c1,), (p1,), Pool2DOptions(fb.Padding.VALID, 2, 2, 3, 3)
    )
    c2 = g.activation("c2", (1, 2, 2, 8))
    g.operator(
        fb.BuiltinOperator.CONV_2D,
        (p1, g.constant("w2", W2), g.constant("b2", B2)),
        (c2,),
        Conv2DOptions(fb.Padding.VALID, 2, 2),
    )
    a1 = g.activation("a1", (1, 3, 3, 6))
    g.operator(
        fb.BuiltinOperator.AVERAGE_POOL_2D,
        (p1,),
        (a1,),
        Pool2DOptions(fb.Padding.VALID, 1, 1, 2, 2),
    )
    half = g.activation("half", (1, 3, 3, 6))
    g.operator(
        fb.BuiltinOperator.MUL,
        (a1, g.constant("k", np.array([0.5], dtype=np.float32))),
        (half,),
        MulOptions(),
    )
    padded_a = g.activation("pad_a", (1, 3, 3, 8))
    g.operator(
        fb.BuiltinOperator.PAD,
        (half, g.constant("pa", np.array([[0, 0], [0, 0], [0, 0], [0, 2]], dtype=np.int32))),
        (padded_a,),
        PadOptions(),
    )
    padded_c = g.activation("pad_c", (1, 3, 3, 8))
    g.operator(
        fb.BuiltinOperator.PAD,
        (c2, g.constant("pc", np.array([[0, 0], [0, 1], [0, 1], [0, 0]], dtype=np.int32))),
        (padded_c,),
        PadOptions(),
    )
    s = g.activation("sum", (1, 3, 3, 8))
    add = g.operator(fb.BuiltinOperator.ADD, (padded_c, padded_a), (s,), AddOptions())
    g.replace_options(add, AddOptions(fb.Activation.RELU))
    m = g.activation("mean", (1, 8))
    g.operator(
        fb.BuiltinOperator.MEAN,
        (s, g.constant("axes", np.array([1, 2], dtype=np.int32))),
        (m,),
        ReducerOptions(keep_dims=False),
    )
    y = g.activation("y", (1, 5))
    g.operator(
        fb.BuiltinOperator.FULLY_CONNECTED,
        (m, g.constant("fc", FC), -1),
        (y,),
        FullyConnectedOptions(),
    )
    g.set_io((x,), (y,))
    return g


def conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    _, h, wd, _ = x.shape
    o, kh, kw, _ = w.shape
    out = np.zeros((1, (h - kh) // stride + 1, (wd - kw) // stride + 1, o))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            patch = x[0, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[0, i, j] = np.tensordot(w, patch, axes=([1, 2, 3], [0, 1, 2])) + b
    return out


def pool_ref(x: np.ndarray, k: int, stride: int, fn: str) -> np.ndarray:
    _, h, w, c = x.shape
    out = np.zeros((1, (h - k) // stride + 1, (w - k) // stride + 1, c))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            window = x[0, i * stride : i * stride + k, j * stride : j * stride + k]
            out[0, i, j] = window.max(axis=(0, 1)) if fn == "max" else window.mean(axis=(0, 1))
    return out


def reference(x: np.ndarray) -> np.ndarray:
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    c1 = np.maximum(conv_ref(xp, W1, B1, 1), 0)
    p1 = pool_ref(c1, 3, 2, "max")
    c2 = conv_ref(p1, W2, B2, 2)
    a1 = pool_ref(p1, 2, 1, "avg") * 0.5
    s = np.pad(c2, ((0, 0), (0, 1), (0, 1), (0, 0))) + np.pad(a1, ((0, 0), (0, 0), (0, 0), (0, 2)))
    m = np.maximum(s, 0).mean(axis=(1, 2))
    return m @ FC.T.astype(np.float64)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.tflite"
    path.write_bytes(tiny_graph().serialize())
    return path


@pytest.mark.parametrize("delegates", [True, False])
def test_tiny_graph_matches_numpy(model_file: Path, delegates: bool) -> None:
    kwargs = {}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = (
            litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
    interpreter = litert.Interpreter(model_path=str(model_file), **kwargs)
    interpreter.allocate_tensors()
    x = RNG.normal(size=(1, 9, 9, 4)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(y, reference(x), rtol=1e-4, atol=1e-4)


def test_flatbuffer_reads_back_with_the_generated_schema(model_file: Path) -> None:
    data = model_file.read_bytes()
    assert data[4:8] == b"TFL3"
    model = schema.Model.GetRootAs(data, 0)
    assert model.Version() == 3
    assert model.Description() == b"tiny test graph"
    codes = [model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())]
    assert codes == sorted(codes)
    assert {getattr(schema.BuiltinOperator, name.name) for name in fb.BuiltinOperator} >= set(codes)
    sub = model.Subgraphs(0)
    assert sub.OperatorsLength() == 10
    conv = sub.Operators(0)
    assert codes[conv.OpcodeIndex()] == schema.BuiltinOperator.CONV_2D
    assert conv.BuiltinOptionsType() == schema.BuiltinOptions.Conv2DOptions
    opts = schema.Conv2DOptions()
    table = conv.BuiltinOptions()
    opts.Init(table.Bytes, table.Pos)
    assert opts.Padding() == schema.Padding.SAME
    assert opts.FusedActivationFunction() == schema.ActivationFunctionType.RELU
    # Constant buffers honour the schema's 16-byte alignment.
    for i in range(1, model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            start = buffer._tab.Vector(buffer._tab.Offset(4))
            assert start % 16 == 0


def test_serialization_is_deterministic() -> None:
    assert tiny_graph().serialize() == tiny_graph().serialize()


def test_wrong_options_and_unknown_tensors_are_refused() -> None:
    g = GraphBuilder("bad")
    x = g.activation("x", (1, 2, 2, 1))
    with pytest.raises(ModelError, match="CONV_2D: options PadOptions do not fit"):
        g.operator(fb.BuiltinOperator.CONV_2D, (x,), (x,), PadOptions())
    with pytest.raises(ModelError, match="tensor index 7 does not exist"):
        g.operator(fb.BuiltinOperator.PAD, (x, 7), (x,), PadOptions())
    with pytest.raises(ModelError, match="dtype float64 is not float32, int32"):
        g.constant("d", np.zeros(2, dtype=np.float64))
    with pytest.raises(ModelError, match="inputs and outputs were not declared"):
        g.serialize()


@pytest.mark.parametrize(
    ("ours", "generated"),
    [
        (fb.BuiltinOperator, "BuiltinOperator"),
        (fb.BuiltinOptions, "BuiltinOptions"),
        (fb.TensorType, "TensorType"),
        (fb.Padding, "Padding"),
        (fb.Activation, "ActivationFunctionType"),
    ],
)
def test_transcribed_enums_match_the_generated_schema(ours: type, generated: str) -> None:
    theirs = getattr(schema, generated)
    for member in ours:  # type: ignore[attr-defined]
        assert getattr(theirs, member.name) == member.value, member

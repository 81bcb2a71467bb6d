"""The dlib .dat reader: dlib's encodings, the layer layout, and refusing bad files.

Synthetic networks are written with a small encoder that follows dlib's
serialize.h / core.h (the inverse of the reader), so these tests do not need the
real model; the real file is used only for the truncation test.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from device.errors import ModelError
from device.modelzoo import dlib_resnet
from device.modelzoo.dlib_format import (
    Affine,
    Conv,
    FullyConnected,
    InputRGB,
    Pool,
    Relu,
    TagOrSkip,
    parse_dlib_net,
    read_dlib_net,
)
from device.modelzoo.tflite_builder import GraphBuilder, PadOptions
from device.modelzoo.tflite_schema import BuiltinOperator

# --------------------------------------------------------------------------------------
# A minimal dlib serializer (dlib/serialize.h, dlib/dnn/tensor.h, core.h, layers.h)


def enc_int(value: int) -> bytes:
    magnitude = abs(value)
    raw = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(raw) | (0x80 if value < 0 else 0)]) + raw


def enc_float(value: float) -> bytes:
    """float_details: 24-bit mantissa (a float), trailing zero bytes shifted off."""
    frac, exp = math.frexp(value)
    mantissa, exponent = int(frac * (1 << 24)), exp - 24
    for _ in range(8):
        if mantissa & 0xFF:
            break
        mantissa >>= 8
        exponent += 8
    return enc_int(mantissa) + enc_int(exponent)


def enc_str(text: str) -> bytes:
    return enc_int(len(text)) + text.encode()


def enc_tensor(values: np.ndarray, version: int = 2) -> bytes:
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    head = enc_int(version) + b"".join(enc_int(d) for d in (flat.size, 1, 1, 1))
    if flat.size == 0:
        head = enc_int(version) + b"".join(enc_int(0) for _ in range(4))
    if version == 2:
        return head + flat.astype("<f4").tobytes()
    return head + b"".join(enc_float(float(v)) for v in flat)


def enc_alias(*dims: int) -> bytes:
    return enc_int(1) + b"".join(enc_int(d) for d in dims)


EMPTY = enc_tensor(np.zeros(0))
MULTS = enc_float(1.0) * 4


def con(filters: np.ndarray, bias: np.ndarray, stride: int, pad: int, version: int = 2) -> bytes:
    n, k, rows, cols = filters.shape
    return (
        enc_str("con_4")
        + enc_tensor(np.concatenate([filters.ravel(), bias]), version)
        + enc_int(n)
        + enc_int(rows)
        + enc_int(cols)
        + enc_int(stride) * 2
        + enc_int(pad) * 2
        + enc_alias(n, k, rows, cols)
        + enc_alias(1, n, 1, 1)
        + MULTS
    )


def affine(gamma: np.ndarray, beta: np.ndarray) -> bytes:
    return (
        enc_str("affine_")
        + enc_tensor(np.concatenate([gamma, beta]))
        + enc_alias(1, gamma.size, 1, 1) * 2
        + enc_int(0)
    )


def pool(kind: str, size: int, stride: int) -> bytes:
    return enc_str(f"{kind}_pool_2") + enc_int(size) * 2 + enc_int(stride) * 2 + enc_int(0) * 2


def fc(weights: np.ndarray) -> bytes:
    n_in, n_out = weights.shape
    return (
        enc_str("fc_2")
        + enc_int(n_out)
        + enc_int(n_in)
        + enc_tensor(weights)
        + enc_alias(n_in, n_out, 1, 1)
        + enc_alias(0, 0, 0, 0)
        + enc_int(1)
        + MULTS
    )


RELU = enc_str("relu_")
ADD_PREV = enc_str("add_prev_")
TAG = None  # marker for a tag or skip layer


def encode_net(forward: list[bytes | None], size: int = 8) -> bytes:
    """A dlib loss_metric network: ``forward`` lists layer details input-side first."""
    head = enc_int(1) + enc_str("loss_metric_2") + enc_float(0.04) + enc_float(0.6)
    first, rest = forward[0], forward[1:]
    assert first is not None
    versions = b"".join(enc_int(1 if d is None else 2) for d in reversed(rest))
    input_layer = (
        enc_str("input_rgb_image_sized")
        + enc_float(122.782)
        + enc_float(117.001)
        + enc_float(104.298)
        + enc_int(size) * 2
    )
    bottom = enc_int(3) + input_layer + first + b"110" + EMPTY * 3 + enc_int(1)
    tail = b"".join(d + b"110" + EMPTY * 3 for d in rest if d is not None)
    return head + versions + bottom + tail


RNG = np.random.default_rng(3)
FILTERS = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
BIAS = RNG.normal(size=4).astype(np.float32)
GAMMA = RNG.normal(size=4).astype(np.float32)
BETA = RNG.normal(size=4).astype(np.float32)
WEIGHTS = RNG.normal(size=(4, 5)).astype(np.float32)

SMALL_NET = [
    con(FILTERS, BIAS, 1, 1),
    affine(GAMMA, BETA),
    RELU,
    TAG,
    pool("max", 3, 2),
    pool("avg", 0, 1),
    fc(WEIGHTS),
]


# --------------------------------------------------------------------------------------
# Encodings


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, 65535, -1, -300, 2**40, -(2**62)])
def test_integers_round_trip(value: int) -> None:
    from device.modelzoo.dlib_format import _Cursor

    cur = _Cursor(enc_int(value), "x")
    assert cur.integer("n", 8) == value
    assert cur.pos == len(enc_int(value))


def test_dlib_float_bytes_decode_as_dlib_writes_them() -> None:
    """Bytes copied from the real model: margin 0.04, dist_thresh 0.6 (as float)."""
    from device.modelzoo.dlib_format import _Cursor

    cur = _Cursor(bytes.fromhex("030ad7a3811c039a999981 18".replace(" ", "")), "x")
    assert cur.real("margin") == pytest.approx(0.04, rel=1e-7)
    assert cur.real("dist") == pytest.approx(0.6, rel=1e-7)
    assert cur.pos == 12


def test_special_float_exponents() -> None:
    from device.modelzoo.dlib_format import _Cursor

    data = enc_int(0) + enc_int(32000) + enc_int(0) + enc_int(32001) + enc_int(0) + enc_int(32002)
    cur = _Cursor(data, "x")
    assert cur.real("a") == math.inf
    assert cur.real("b") == -math.inf
    assert math.isnan(cur.real("c"))


# --------------------------------------------------------------------------------------
# Layout


def test_small_network_layers_in_forward_order() -> None:
    net = parse_dlib_net(encode_net(SMALL_NET), "small.dat")
    kinds = [layer.kind for layer in net.layers]
    assert kinds == [
        "input",
        "con",
        "affine",
        "relu",
        "tag_or_skip",
        "max_pool",
        "avg_pool",
        "fc",
    ]
    inp, conv, aff, relu, tag, mp, ap, dense = net.layers
    assert isinstance(inp, InputRGB)
    assert (inp.rows, inp.cols) == (8, 8)
    assert inp.avg == pytest.approx((122.782, 117.001, 104.298), rel=1e-6)
    assert isinstance(conv, Conv)
    np.testing.assert_array_equal(conv.filters, FILTERS)
    np.testing.assert_array_equal(conv.bias, BIAS)
    assert conv.stride == (1, 1) and conv.padding == (1, 1)
    assert isinstance(aff, Affine) and aff.conv_mode
    np.testing.assert_array_equal(aff.gamma, GAMMA)
    np.testing.assert_array_equal(aff.beta, BETA)
    assert isinstance(relu, Relu) and isinstance(tag, TagOrSkip)
    assert isinstance(mp, Pool) and (mp.mode, mp.size, mp.stride) == ("max", (3, 3), (2, 2))
    assert isinstance(ap, Pool) and (ap.mode, ap.size) == ("avg", (0, 0))
    assert isinstance(dense, FullyConnected) and dense.bias is None
    np.testing.assert_array_equal(dense.weights, WEIGHTS)
    assert net.loss.margin == pytest.approx(0.04)
    assert net.loss.distance_threshold == pytest.approx(0.6)


def test_version1_tensors_of_dlib_floats_are_read() -> None:
    filters = np.array([0.5, -0.25, 3.0, 1e-3] * 27, dtype=np.float32)[:108].reshape(4, 3, 3, 3)
    layers = [con(filters, BIAS, 2, 0, version=1), *SMALL_NET[1:]]
    conv = parse_dlib_net(encode_net(layers)).layers[1]
    assert isinstance(conv, Conv)
    np.testing.assert_allclose(conv.filters, filters, rtol=1e-7)
    assert conv.stride == (2, 2) and conv.padding == (0, 0)


# --------------------------------------------------------------------------------------
# Bad input


def _dat_model_path() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face_recognition_models is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "models"
    path = path / "dlib_face_recognition_resnet_model_v1.dat"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def test_random_bytes_are_not_a_dlib_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.dat"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError, match=r"noise\.dat: not a dlib network.*at byte 0"):
        read_dlib_net(path)


def test_text_file_is_not_a_dlib_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.dat"
    path.write_text("this is a text file, not a model\n")
    with pytest.raises(ModelError, match=r"notes\.dat: not a dlib network.*expected dlib's"):
        read_dlib_net(path)


def test_tflite_file_is_not_a_dlib_file(tmp_path: Path) -> None:
    graph = GraphBuilder("tiny")
    x = graph.activation("x", (1, 2, 2, 1))
    pads = graph.constant("p", np.zeros((4, 2), dtype=np.int32))
    y = graph.activation("y", (1, 2, 2, 1))
    graph.operator(BuiltinOperator.PAD, (x, pads), (y,), PadOptions())
    graph.set_io((x,), (y,))
    path = tmp_path / "model.tflite"
    path.write_bytes(graph.serialize())
    with pytest.raises(ModelError, match=r"model\.tflite: not a dlib network.*at byte 0"):
        read_dlib_net(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.dat: file is truncated"):
        read_dlib_net(empty)
    with pytest.raises(ModelError, match=r"missing\.dat: cannot read"):
        read_dlib_net(tmp_path / "missing.dat")


@pytest.mark.parametrize("keep", [0.001, 0.5, 0.999])
def test_truncated_synthetic_net(keep: float) -> None:
    data = encode_net(SMALL_NET)
    cut = max(2, int(len(data) * keep))
    with pytest.raises(ModelError, match=r"cut\.dat: file is truncated: expected .* at byte"):
        parse_dlib_net(data[:cut], "cut.dat")


def test_unknown_layer_type_is_named() -> None:
    data = encode_net([con(FILTERS, BIAS, 1, 1), enc_str("prelu_") + enc_tensor(np.ones(1))])
    with pytest.raises(ModelError, match=r"found 'prelu_'"):
        parse_dlib_net(data, "prelu.dat")


def test_inconsistent_conv_is_refused() -> None:
    bad = con(FILTERS, BIAS, 1, 1).replace(enc_alias(4, 3, 3, 3), enc_alias(5, 3, 3, 3))
    with pytest.raises(ModelError, match=r"con_ layer whose filters"):
        parse_dlib_net(encode_net([bad, *SMALL_NET[1:]]), "bad.dat")


@pytest.mark.parametrize("fraction", [0.0001, 0.3, 0.9999])
def test_truncated_real_model(tmp_path: Path, fraction: float) -> None:
    source = _dat_model_path()
    data = source.read_bytes()
    path = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelError, match=r"resnet_model_v1\.dat: file is truncated: expected"):
        read_dlib_net(path)


# --------------------------------------------------------------------------------------
# Matching the architecture


def test_architecture_is_anet_type() -> None:
    steps = dlib_resnet.architecture()
    assert len(steps) == 131
    kinds = [s.kind for s in steps]
    assert kinds.count("con") == kinds.count("affine") == kinds.count("relu") == 29
    assert kinds.count("add_prev") == 14 and kinds.count("avg_pool") == 5
    assert kinds.count("tag") == 18 and kinds.count("skip") == 4


def test_a_different_network_is_refused() -> None:
    net = parse_dlib_net(encode_net(SMALL_NET), "small.dat")
    with pytest.raises(ModelError, match=r"small\.dat: holds 8 layers.*different network"):
        dlib_resnet.resolve(net)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "same"),
    [(35, 3, 1, 1, True), (150, 7, 2, 0, False), (35, 3, 2, 1, True), (8, 3, 2, 1, False)],
)
def test_same_padding_equivalence(
    size: int, kernel: int, stride: int, pad: int, same: bool
) -> None:
    assert dlib_resnet._same_padding(size, kernel, stride, pad) is same

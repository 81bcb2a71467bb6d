"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1``) as TFLite.

The architecture is ``anet_type`` from dlib's ``examples/dnn_face_recognition_ex.cpp``::

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

with ``ares<N>`` = relu(x + block(x)) and ``ares_down<N>`` =
relu(avg_pool2x2s2(x) + block_stride2(x)); block = affine(con3x3(relu(affine(con3x3)))).
A dlib file does not record tag/skip ids, so :func:`resolve` checks the file's layers
against that definition and names each tag and skip.

Mapping to TFLite (see :func:`convert`), NHWC float32, input ``[1,150,150,3]`` RGB in
0..255:

* ``input_rgb_image_sized``: dlib feeds ``(pixel - avg) / 256``.  The first ``con``
  has no padding, so this is folded exactly into its weights and bias (weights / 256,
  bias - sum(weights / 256 * avg)); otherwise an ADD and a MUL are emitted.
* ``con`` + ``affine``: one CONV_2D; ``affine`` (dlib's frozen batch norm,
  ``x * gamma + beta`` per channel) is folded into the weights and bias.  dlib pads
  stride-1 convs by ``k // 2`` (= TFLite SAME) and stride-2 convs by 0 (= VALID);
  any other padding becomes an explicit PAD then VALID.
* ``relu``: fused into the preceding CONV_2D or ADD.
* ``max_pool`` / ``avg_pool`` (unpadded): MAX_POOL_2D / AVERAGE_POOL_2D, VALID.
* ``avg_pool_everything``: MEAN over height and width.
* ``add_prev``: ADD.  dlib's ``tt::add`` zero-pads the smaller operand in every
  dimension: the 2x2-stride-2 average pool of an even-sized map is one pixel larger
  than the stride-2 conv's output (8 -> 4 vs 3, 4 -> 2 vs 1), and the skip path has
  fewer channels when a level widens (32 -> 64, 64 -> 128, 128 -> 256).  Each such
  operand gets a PAD (bottom/right, trailing channels) first.
* ``fc_no_bias<128>``: FULLY_CONNECTED without bias.  Output: the raw 128-d
  descriptor, not normalised (as ``compute_face_descriptor`` returns it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from device.errors import ModelError
from device.modelzoo import tflite_schema as fb
from device.modelzoo.dlib_format import (
    AddPrev,
    Affine,
    Conv,
    DlibLayer,
    DlibNet,
    FullyConnected,
    InputRGB,
    Pool,
    Relu,
    TagOrSkip,
)
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

logger = logging.getLogger(__name__)

INPUT_SIZE = 150
EMBEDDING_DIM = 128
INPUT_NAME = "chip"
OUTPUT_NAME = "embedding"


# --------------------------------------------------------------------------------------
# The architecture


@dataclass(frozen=True)
class Step:
    """One layer of the expected architecture.

    Attributes:
        kind: ``input``, ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``,
            ``add_prev``, ``fc``, ``tag`` or ``skip``.
        tag: Tag id for ``tag``/``skip``/``add_prev``.
        filters: Output channels (``con``) or outputs (``fc``).
        size: Kernel size (``con``, pools; 0 = whole input).
        stride: Stride (``con``, pools).
        where: Human-readable position, e.g. ``alevel3 ares_down<64>``.
    """

    kind: str
    tag: int = 0
    filters: int = 0
    size: int = 0
    stride: int = 0
    where: str = ""


def _block(n: int, stride: int, where: str) -> list[Step]:
    return [
        Step("con", filters=n, size=3, stride=stride, where=where),
        Step("affine", where=where),
        Step("relu", where=where),
        Step("con", filters=n, size=3, stride=1, where=where),
        Step("affine", where=where),
    ]


def _ares(n: int, where: str) -> list[Step]:
    return [
        Step("tag", tag=1, where=where),
        *_block(n, 1, where),
        Step("add_prev", tag=1, where=where),
        Step("relu", where=where),
    ]


def _ares_down(n: int, where: str) -> list[Step]:
    return [
        Step("tag", tag=1, where=where),
        *_block(n, 2, where),
        Step("tag", tag=2, where=where),
        Step("skip", tag=1, where=where),
        Step("avg_pool", size=2, stride=2, where=where),
        Step("add_prev", tag=2, where=where),
        Step("relu", where=where),
    ]


def architecture() -> tuple[Step, ...]:
    """``anet_type`` of dnn_face_recognition_ex.cpp, in forward order."""
    steps = [
        Step("input", where="input_rgb_image_sized<150>"),
        Step("con", filters=32, size=7, stride=2, where="stem"),
        Step("affine", where="stem"),
        Step("relu", where="stem"),
        Step("max_pool", size=3, stride=2, where="stem"),
    ]
    levels = [  # (name, width, ares_down first?, number of ares)
        ("alevel4", 32, False, 3),
        ("alevel3", 64, True, 3),
        ("alevel2", 128, True, 2),
        ("alevel1", 256, True, 2),
        ("alevel0", 256, True, 0),
    ]
    for name, width, down, repeats in levels:
        if down:
            steps += _ares_down(width, f"{name} ares_down<{width}>")
        for i in range(repeats):
            steps += _ares(width, f"{name} ares<{width}> #{i + 1}")
    steps += [
        Step("avg_pool", size=0, stride=1, where="avg_pool_everything"),
        Step("fc", filters=EMBEDDING_DIM, where="fc_no_bias<128>"),
    ]
    return tuple(steps)


def resolve(net: DlibNet) -> list[tuple[DlibLayer, Step]]:
    """Match the file's layers to :func:`architecture`; names every tag and skip.

    Raises:
        ModelError: The file holds a different network (layer kinds, sizes or strides
            differ), naming the first mismatching layer and its byte offset.
    """
    steps = architecture()
    if len(net.layers) != len(steps):
        raise ModelError(
            f"{net.source}: holds {len(net.layers)} layers, but dlib's face recognition "
            f"ResNet (anet_type) has {len(steps)}; this is a different network"
        )
    for index, (layer, step) in enumerate(zip(net.layers, steps, strict=True)):
        problem = _mismatch(layer, step)
        if problem:
            raise ModelError(
                f"{net.source}: layer {index} (byte {layer.offset}, {step.where}): expected "
                f"{step.kind}, {problem}; this is not dlib_face_recognition_resnet_model_v1"
            )
    return list(zip(net.layers, steps, strict=True))


def _mismatch(layer: DlibLayer, step: Step) -> str:
    if step.kind in ("tag", "skip"):
        return "" if isinstance(layer, TagOrSkip) else f"found {layer.kind}"
    if layer.kind != step.kind:
        return f"found {layer.kind}"
    if isinstance(layer, InputRGB) and (layer.rows, layer.cols) != (INPUT_SIZE, INPUT_SIZE):
        return f"found input {layer.rows}x{layer.cols}"
    if isinstance(layer, Conv):
        got = (layer.filters.shape[0], layer.filters.shape[2], layer.filters.shape[3])
        if got != (step.filters, step.size, step.size) or layer.stride != (
            step.stride,
            step.stride,
        ):
            return f"found con {got[0]} filters {got[1]}x{got[2]} stride {layer.stride}"
    if isinstance(layer, Pool) and (
        layer.size != (step.size, step.size) or layer.stride != (step.stride, step.stride)
    ):
        return f"found {layer.kind} {layer.size} stride {layer.stride}"
    if isinstance(layer, FullyConnected) and (
        layer.weights.shape[1] != step.filters or layer.bias is not None
    ):
        return f"found fc with {layer.weights.shape[1]} outputs, bias={layer.bias is not None}"
    if isinstance(layer, Affine) and not layer.conv_mode:
        return "found an affine layer in fc mode"
    return ""


# --------------------------------------------------------------------------------------
# Conversion


@dataclass(frozen=True, eq=False)
class _PendingConv:
    """A CONV_2D not yet written, so a following affine/relu can still fold into it."""

    source: int
    weights: NDArray[np.float64]  # (out, in, kh, kw), float64 while folding
    bias: NDArray[np.float64]
    options: Conv2DOptions
    out_shape: tuple[int, ...]
    name: str
    affine_folded: bool = False


@dataclass(frozen=True)
class _PendingAdd:
    """An ADD not yet written, so a following relu can fuse into it."""

    inputs: tuple[int, int]
    out_shape: tuple[int, ...]
    name: str
    activation: fb.Activation = fb.Activation.NONE


class _Converter:
    def __init__(self, net: DlibNet) -> None:
        self.net = net
        self.graph = GraphBuilder(
            "dlib_face_recognition_resnet_model_v1 (dlib, public domain) converted by "
            "facegate: input [1,150,150,3] float32 RGB 0..255, output [1,128] raw descriptor"
        )
        self.current = -1
        self.graph_input = -1
        self.tags: dict[int, int] = {}
        self.pending: _PendingConv | _PendingAdd | None = None
        self.normalise: tuple[NDArray[np.float64], float] | None = None

    def fail(self, index: int, layer: DlibLayer, what: str) -> ModelError:
        return ModelError(f"{self.net.source}: layer {index} (byte {layer.offset}): {what}")

    # emitting ---------------------------------------------------------------------

    def flush(self) -> int:
        """Write the pending operator (if any); returns the current tensor."""
        pending, self.pending = self.pending, None
        if isinstance(pending, _PendingConv):
            weights = np.transpose(pending.weights, (0, 2, 3, 1)).astype(np.float32)
            w = self.graph.constant(f"{pending.name}/weights", weights)
            b = self.graph.constant(f"{pending.name}/bias", pending.bias.astype(np.float32))
            out = self.graph.activation(pending.name, pending.out_shape)
            self.graph.operator(
                fb.BuiltinOperator.CONV_2D, (pending.source, w, b), (out,), pending.options
            )
            self.current = out
        elif isinstance(pending, _PendingAdd):
            out = self.graph.activation(pending.name, pending.out_shape)
            self.graph.operator(
                fb.BuiltinOperator.ADD, pending.inputs, (out,), AddOptions(pending.activation)
            )
            self.current = out
        return self.current

    def pad_to(self, tensor: int, shape: tuple[int, ...], name: str) -> int:
        """Zero-pad at the end of each dimension, as dlib's ``tt::add`` does."""
        have = self.graph.shape(tensor)
        if have == shape:
            return tensor
        amounts = np.array([[0, want - got] for got, want in zip(have, shape, strict=True)])
        paddings = self.graph.constant(f"{name}/paddings", amounts.astype(np.int32))
        out = self.graph.activation(name, shape)
        self.graph.operator(fb.BuiltinOperator.PAD, (tensor, paddings), (out,), PadOptions())
        return out

    # layers -------------------------------------------------------------------------

    def input(self, layer: InputRGB) -> None:
        assert layer.rows is not None and layer.cols is not None
        self.current = self.graph.activation(INPUT_NAME, (1, layer.rows, layer.cols, 3))
        self.graph_input = self.current
        self.normalise = (np.array(layer.avg, dtype=np.float64), 1.0 / 256.0)

    def emit_normalisation(self, name: str) -> None:
        """``(x - avg) / 256`` as ADD then MUL, for when it cannot be folded."""
        assert self.normalise is not None
        avg, scale = self.normalise
        self.normalise = None
        shape = self.graph.shape(self.current)
        neg = self.graph.constant(f"{name}/neg_avg", (-avg).astype(np.float32).reshape(1, 1, 1, 3))
        centred = self.graph.activation(f"{name}/centred", shape)
        self.graph.operator(fb.BuiltinOperator.ADD, (self.current, neg), (centred,), AddOptions())
        factor = self.graph.constant(f"{name}/scale", np.array([scale], dtype=np.float32))
        out = self.graph.activation(name, shape)
        self.graph.operator(fb.BuiltinOperator.MUL, (centred, factor), (out,), MulOptions())
        self.current = out

    def conv(self, index: int, layer: Conv, name: str) -> None:
        self.flush()
        weights = layer.filters.astype(np.float64)
        bias = layer.bias.astype(np.float64)
        if self.normalise is not None:
            if layer.padding == (0, 0):
                # Exact: with no zero padding every output sees only real pixels, so
                # conv(W, (x - m) / 256) = conv(W / 256, x) - sum(W / 256 * m).
                avg, scale = self.normalise
                self.normalise = None
                weights = weights * scale
                bias = np.array(
                    [
                        math.fsum([bias[o], *(-(weights[o] * avg[:, None, None]).ravel())])
                        for o in range(weights.shape[0])
                    ]
                )
            else:
                self.emit_normalisation(f"{name}/input_norm")
        _, height, width, _ = self.graph.shape(self.current)
        (kh, kw), (sy, sx), (py, px) = layer.filters.shape[2:], layer.stride, layer.padding
        out_h = 1 + (height + 2 * py - kh) // sy
        out_w = 1 + (width + 2 * px - kw) // sx
        if out_h < 1 or out_w < 1:
            raise self.fail(index, layer, f"con {kh}x{kw} does not fit a {height}x{width} input")
        if (py, px) == (0, 0):
            padding = fb.Padding.VALID
        elif _same_padding(height, kh, sy, py) and _same_padding(width, kw, sx, px):
            padding = fb.Padding.SAME
        else:
            shape = (1, height + 2 * py, width + 2 * px, self.graph.shape(self.current)[3])
            amounts = np.array([[0, 0], [py, py], [px, px], [0, 0]], dtype=np.int32)
            paddings = self.graph.constant(f"{name}/pad/paddings", amounts)
            padded = self.graph.activation(f"{name}/pad", shape)
            self.graph.operator(
                fb.BuiltinOperator.PAD, (self.current, paddings), (padded,), PadOptions()
            )
            self.current = padded
            padding = fb.Padding.VALID
        self.pending = _PendingConv(
            source=self.current,
            weights=weights,
            bias=bias,
            options=Conv2DOptions(padding, stride_h=sy, stride_w=sx),
            out_shape=(1, out_h, out_w, layer.filters.shape[0]),
            name=name,
        )

    def affine(self, index: int, layer: Affine) -> None:
        pending = self.pending
        if (
            not isinstance(pending, _PendingConv)
            or pending.affine_folded
            or pending.options.activation != fb.Activation.NONE
        ):
            raise self.fail(index, layer, "an affine layer that does not follow a con layer")
        gamma = layer.gamma.astype(np.float64).reshape(-1)
        beta = layer.beta.astype(np.float64).reshape(-1)
        if gamma.size != pending.weights.shape[0]:
            raise self.fail(
                index, layer, f"affine has {gamma.size} channels, con {pending.weights.shape[0]}"
            )
        self.pending = replace(
            pending,
            weights=pending.weights * gamma[:, None, None, None],
            bias=pending.bias * gamma + beta,
            affine_folded=True,
        )

    def relu(self, index: int, layer: Relu) -> None:
        pending = self.pending
        if isinstance(pending, _PendingConv) and pending.options.activation == fb.Activation.NONE:
            self.pending = replace(
                pending, options=replace(pending.options, activation=fb.Activation.RELU)
            )
        elif isinstance(pending, _PendingAdd) and pending.activation == fb.Activation.NONE:
            self.pending = replace(pending, activation=fb.Activation.RELU)
        else:
            raise self.fail(index, layer, "a relu that does not follow a con or add_prev layer")
        self.flush()

    def pool(self, index: int, layer: Pool, name: str) -> None:
        current = self.flush()
        shape = self.graph.shape(current)
        if layer.padding != (0, 0):
            raise self.fail(index, layer, f"{layer.kind} with padding {layer.padding}")
        if layer.size == (0, 0):
            if layer.mode != "avg":
                raise self.fail(index, layer, "max_pool_everything is not supported")
            axes = self.graph.constant(f"{name}/axes", np.array([1, 2], dtype=np.int32))
            out = self.graph.activation(name, (1, shape[3]))
            self.graph.operator(
                fb.BuiltinOperator.MEAN, (current, axes), (out,), ReducerOptions(keep_dims=False)
            )
            self.current = out
            return
        (kh, kw), (sy, sx) = layer.size, layer.stride
        out_shape = (1, 1 + (shape[1] - kh) // sy, 1 + (shape[2] - kw) // sx, shape[3])
        out = self.graph.activation(name, out_shape)
        opcode = fb.BuiltinOperator.AVERAGE_POOL_2D
        if layer.mode == "max":
            opcode = fb.BuiltinOperator.MAX_POOL_2D
        options = Pool2DOptions(fb.Padding.VALID, sy, sx, kh, kw)
        self.graph.operator(opcode, (current,), (out,), options)
        self.current = out

    def add_prev(self, index: int, layer: AddPrev, tag: int, name: str) -> None:
        current = self.flush()
        if tag not in self.tags:
            raise self.fail(index, layer, f"add_prev of tag{tag}, which was never set")
        other = self.tags[tag]
        a, b = self.graph.shape(current), self.graph.shape(other)
        if len(a) != len(b):
            raise self.fail(index, layer, f"add_prev of shapes {a} and {b}")
        shape = tuple(max(x, y) for x, y in zip(a, b, strict=True))
        left = self.pad_to(current, shape, f"{name}/pad_a")
        right = self.pad_to(other, shape, f"{name}/pad_b")
        self.pending = _PendingAdd((left, right), shape, name)

    def fc(self, index: int, layer: FullyConnected, name: str) -> None:
        current = self.flush()
        shape = self.graph.shape(current)
        if len(shape) != 2 or shape[1] != layer.weights.shape[0]:
            raise self.fail(
                index, layer, f"fc with {layer.weights.shape[0]} inputs after shape {shape}"
            )
        weights = self.graph.constant(
            f"{name}/weights", np.ascontiguousarray(layer.weights.T, dtype=np.float32)
        )
        inputs: tuple[int, ...] = (current, weights)
        if layer.bias is not None:
            inputs += (self.graph.constant(f"{name}/bias", layer.bias.astype(np.float32)),)
        out = self.graph.activation(OUTPUT_NAME, (1, layer.weights.shape[1]))
        self.graph.operator(
            fb.BuiltinOperator.FULLY_CONNECTED, inputs, (out,), FullyConnectedOptions()
        )
        self.current = out

    def run(self, resolved: list[tuple[DlibLayer, Step]]) -> GraphBuilder:
        for index, (layer, step) in enumerate(resolved):
            name = f"{index:03d}_{step.kind}"
            if isinstance(layer, InputRGB):
                self.input(layer)
            elif isinstance(layer, Conv):
                self.conv(index, layer, name)
            elif isinstance(layer, Affine):
                self.affine(index, layer)
            elif isinstance(layer, Relu):
                self.relu(index, layer)
            elif isinstance(layer, Pool):
                self.pool(index, layer, name)
            elif isinstance(layer, AddPrev):
                self.add_prev(index, layer, step.tag, name)
            elif isinstance(layer, FullyConnected):
                self.fc(index, layer, name)
            elif step.kind == "tag":
                self.tags[step.tag] = self.flush()
            else:  # skip
                self.flush()
                self.current = self.tags[step.tag]
        output = self.flush()
        self.graph.set_io((self.graph_input,), (output,))
        logger.debug(
            "converted %d dlib layers into %d TFLite operators",
            len(resolved),
            self.graph.num_operators,
        )
        return self.graph


def _same_padding(size: int, kernel: int, stride: int, pad: int) -> bool:
    """Whether TFLite SAME padding equals dlib's symmetric ``pad`` for this size."""
    out_same = -(-size // stride)
    total = max((out_same - 1) * stride + kernel - size, 0)
    out_dlib = 1 + (size + 2 * pad - kernel) // stride
    return out_same == out_dlib and total // 2 == pad


def convert(net: DlibNet) -> bytes:
    """Translate dlib's face recognition ResNet into a float32 ``.tflite`` flatbuffer.

    Deterministic: the same ``.dat`` gives byte-identical output (all folding is done
    in float64 with exactly rounded sums, then rounded once to float32).

    Raises:
        ModelError: The network is not dlib's face recognition ResNet.
    """
    return convert_graph(net).serialize()


def convert_graph(net: DlibNet) -> GraphBuilder:
    """The float32 graph :func:`convert` serializes (for passes such as int8 quantisation).

    Raises:
        ModelError: The network is not dlib's face recognition ResNet.
    """
    return _Converter(net).run(resolve(net))

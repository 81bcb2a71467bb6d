"""Convert a TensorFlow.js graph model (``model.json`` + weight shards) to TFLite.

No TensorFlow: the topology is JSON (a ``GraphDef`` written as JSON by
``tensorflowjs_converter``), the weights are little-endian arrays laid end to end in
the shards the ``weightsManifest`` lists. Each graph node becomes one TFLite operator
of the same meaning, so any intermediate node can be made an output and compared with
TF.js's own value for it (``device/modelzoo/tfjs_reference.cjs``):

=============================  =================================================
TF.js node                     TFLite
=============================  =================================================
``_FusedConv2D`` (BiasAdd[,    CONV_2D with bias (weights HWIO -> OHWI), fused
Relu])                         RELU
``FusedDepthwiseConv2dNative`` DEPTHWISE_CONV_2D (weights HWC1 -> 1HWC)
``Relu Abs Square Rsqrt``      RELU ABS SQUARE RSQRT
``Add Sub Mul Maximum``        ADD SUB MUL MAXIMUM (broadcasting a constant)
``Sum``                        SUM (constant axes)
``Squeeze``                    RESHAPE (batch dimension kept as -1)
=============================  =================================================

Anything else (another op, a quantised weight, dilation, NCHW) is refused with a
:class:`~device.errors.ModelError` naming the node. MobileFaceNet's PReLU, written by its
TF.js export as ``relu(x) + alpha * (x - |x|)``, is converted op for op, as are the
``Square/Sum/Maximum/Rsqrt/Mul`` of its L2 normalisation.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from device.errors import ModelError
from device.modelzoo import tflite_builder as tb
from device.modelzoo import tflite_schema as fb

logger = logging.getLogger(__name__)

_WEIGHT_DTYPES = {"float32": "<f4", "int32": "<i4"}
_ELEMENTWISE: dict[str, tuple[fb.BuiltinOperator, tb.Options]] = {
    "Add": (fb.BuiltinOperator.ADD, tb.AddOptions()),
    "AddV2": (fb.BuiltinOperator.ADD, tb.AddOptions()),
    "Sub": (fb.BuiltinOperator.SUB, tb.SubOptions()),
    "Mul": (fb.BuiltinOperator.MUL, tb.MulOptions()),
    "Maximum": (fb.BuiltinOperator.MAXIMUM, tb.MaximumMinimumOptions()),
}
_UNARY: dict[str, fb.BuiltinOperator] = {
    "Relu": fb.BuiltinOperator.RELU,
    "Abs": fb.BuiltinOperator.ABS,
    "Square": fb.BuiltinOperator.SQUARE,
    "Rsqrt": fb.BuiltinOperator.RSQRT,
}


@dataclass(frozen=True)
class Node:
    """One node of the graph: name, op, data inputs (names) and attributes."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attr: Mapping[str, Any]


@dataclass(frozen=True)
class TfjsGraph:
    """A TF.js graph model read from disk.

    Attributes:
        nodes: Every node, in the file's order (a topological order).
        weights: Constant values by node name.
        outputs: The signature's output node names (``userDefinedMetadata``), or the
            nodes nobody consumes.
    """

    nodes: tuple[Node, ...]
    weights: Mapping[str, NDArray[Any]]
    outputs: tuple[str, ...]

    def node(self, name: str) -> Node:
        """The node called ``name``.

        Raises:
            ModelError: No such node.
        """
        for node in self.nodes:
            if node.name == name:
                return node
        raise ModelError(f"TF.js graph: no node named {name!r}")


def read_graph(model_json: Path) -> TfjsGraph:
    """Read ``model.json`` and the weight shards it lists (beside it).

    Raises:
        ModelError: The file is not a TF.js graph model, a shard is missing or too short,
            or a weight is quantised or of an unsupported dtype.
    """
    try:
        model = json.loads(model_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read TF.js model {model_json}: {exc}") from exc
    if not isinstance(model, dict) or model.get("format") != "graph-model":
        raise ModelError(f"{model_json} is not a TF.js graph model (format != 'graph-model')")
    nodes = tuple(_node(raw) for raw in model["modelTopology"]["node"])
    weights: dict[str, NDArray[Any]] = {}
    for group in model["weightsManifest"]:
        blob = b"".join(_read_shard(model_json.parent / p) for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            name, shape, dtype = spec["name"], tuple(int(d) for d in spec["shape"]), spec["dtype"]
            if "quantization" in spec:
                raise ModelError(f"{model_json}: weight {name} is quantised; not supported")
            np_dtype = _WEIGHT_DTYPES.get(dtype)
            if np_dtype is None:
                raise ModelError(f"{model_json}: weight {name} has dtype {dtype}; not supported")
            count = math.prod(shape)
            size = 4 * count
            if offset + size > len(blob):
                raise ModelError(f"{model_json}: weight shards end before weight {name}")
            weights[name] = np.frombuffer(blob, np_dtype, count, offset).reshape(shape).copy()
            offset += size
    signature = model.get("userDefinedMetadata", {}).get("signature", {}).get("outputs", {})
    outputs = tuple(str(v["name"]) for v in signature.values())
    if not outputs:
        consumed = {i for node in nodes for i in node.inputs}
        outputs = tuple(n.name for n in nodes if n.name not in consumed and n.op != "Const")
    return TfjsGraph(nodes, weights, outputs)


def _read_shard(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read TF.js weight shard {path}: {exc}") from exc


def _node(raw: Mapping[str, Any]) -> Node:
    inputs = []
    for name in raw.get("input", []):
        if name.startswith("^"):
            continue  # control dependency: no data
        base, _, port = name.partition(":")
        if port not in ("", "0"):
            raise ModelError(f"TF.js node {raw['name']}: input {name} is not output 0")
        inputs.append(base)
    return Node(str(raw["name"]), str(raw["op"]), tuple(inputs), raw.get("attr", {}))


def _string(node: Node, key: str) -> str:
    value = node.attr.get(key, {}).get("s")
    return base64.b64decode(value).decode() if value else ""


def _strings(node: Node, key: str) -> list[str]:
    values = node.attr.get(key, {}).get("list", {}).get("s", [])
    return [base64.b64decode(s).decode() for s in values]


def _ints(node: Node, key: str) -> list[int]:
    return [int(i) for i in node.attr.get(key, {}).get("list", {}).get("i", [])]


class _Converter:
    def __init__(self, graph: TfjsGraph, description: str) -> None:
        self.graph = graph
        self.g = tb.GraphBuilder(description)
        self.index: dict[str, int] = {}
        self.ops = {node.name: node for node in graph.nodes}

    def tensor(self, name: str, *, dtype: str = "float32") -> int:
        """The TFLite tensor of a node: a computed one, or its constant (added once)."""
        if name in self.index:
            return self.index[name]
        node = self.ops.get(name)
        if node is None or node.op != "Const":
            raise ModelError(f"TF.js graph: {name!r} is used before it is computed")
        value = self.constant(name)
        if value.dtype.kind == "f" and dtype == "float32":
            index = self.g.constant(name, value.astype(np.float32))
        else:
            index = self.g.constant(name, value.astype(np.int32))
        self.index[name] = index
        return index

    def constant(self, name: str) -> NDArray[Any]:
        value = self.graph.weights.get(name)
        if value is None:
            raise ModelError(f"TF.js graph: constant {name!r} has no value in the weight shards")
        return value

    def out(self, node: Node, shape: tuple[int, ...]) -> int:
        index = self.g.activation(node.name, shape)
        self.index[node.name] = index
        return index

    def convert(self, node: Node) -> None:
        if node.op in ("Const",):
            return
        if node.op == "Placeholder":
            dims = [int(d.get("size", -1)) for d in node.attr["shape"]["shape"]["dim"]]
            self.out(node, tuple(1 if d < 0 else d for d in dims))
            return
        if node.op in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
            self.conv(node)
        elif node.op in _UNARY:
            x = self.tensor(node.inputs[0])
            self.g.operator(_UNARY[node.op], (x,), (self.out(node, self.g.shape(x)),),
                            tb.NoOptions())
        elif node.op in _ELEMENTWISE:
            opcode, options = _ELEMENTWISE[node.op]
            a, b = (self.tensor(i) for i in node.inputs)
            shape = tuple(np.broadcast_shapes(self.g.shape(a), self.g.shape(b)))
            self.g.operator(opcode, (a, b), (self.out(node, shape),), options)
        elif node.op == "Sum":
            self.reduce_sum(node)
        elif node.op == "Squeeze":
            self.squeeze(node)
        else:
            raise ModelError(f"TF.js node {node.name}: op {node.op} is not supported")

    def conv(self, node: Node) -> None:
        fused = _strings(node, "fused_ops")
        if not fused or fused[0] != "BiasAdd" or fused[1:] not in ([], ["Relu"]):
            raise ModelError(f"TF.js node {node.name}: fused ops {fused} are not supported")
        if _string(node, "data_format") not in ("", "NHWC"):
            raise ModelError(f"TF.js node {node.name}: only NHWC is supported")
        if any(d != 1 for d in _ints(node, "dilations")):
            raise ModelError(f"TF.js node {node.name}: dilated convolutions are not supported")
        padding_name = _string(node, "padding")
        if padding_name not in ("SAME", "VALID"):
            raise ModelError(f"TF.js node {node.name}: padding {padding_name!r} not supported")
        padding = fb.Padding.SAME if padding_name == "SAME" else fb.Padding.VALID
        strides = _ints(node, "strides") or [1, 1, 1, 1]
        activation = fb.Activation.RELU if fused[1:] == ["Relu"] else fb.Activation.NONE
        x = self.tensor(node.inputs[0])
        kernel = self.constant(node.inputs[1]).astype(np.float32)
        bias = self.constant(node.inputs[2]).astype(np.float32)
        batch, height, width, _ = self.g.shape(x)
        kh, kw = kernel.shape[0], kernel.shape[1]
        out_h = _out_size(height, kh, strides[1], padding)
        out_w = _out_size(width, kw, strides[2], padding)
        if node.op == "_FusedConv2D":
            w = self.g.constant(node.inputs[1], np.ascontiguousarray(kernel.transpose(3, 0, 1, 2)))
            b = self.g.constant(node.inputs[2], bias)
            y = self.out(node, (batch, out_h, out_w, kernel.shape[3]))
            self.g.operator(fb.BuiltinOperator.CONV_2D, (x, w, b), (y,),
                            tb.Conv2DOptions(padding, strides[1], strides[2], activation))
        else:
            if kernel.shape[3] != 1:
                raise ModelError(f"TF.js node {node.name}: depth multiplier {kernel.shape[3]}")
            w = self.g.constant(node.inputs[1], np.ascontiguousarray(kernel.transpose(3, 0, 1, 2)))
            b = self.g.constant(node.inputs[2], bias)
            y = self.out(node, (batch, out_h, out_w, kernel.shape[2]))
            self.g.operator(fb.BuiltinOperator.DEPTHWISE_CONV_2D, (x, w, b), (y,),
                            tb.DepthwiseConv2DOptions(padding, strides[1], strides[2], 1,
                                                      activation))

    def reduce_sum(self, node: Node) -> None:
        x = self.tensor(node.inputs[0])
        axes = np.atleast_1d(self.constant(node.inputs[1])).astype(np.int32)
        shape = list(self.g.shape(x))
        axes = np.asarray([a % len(shape) for a in axes], dtype=np.int32)
        keep = bool(node.attr.get("keep_dims", {}).get("b", False))
        out_shape = tuple(
            1 if i in axes else d for i, d in enumerate(shape) if keep or i not in axes
        )
        axis = self.g.constant(node.inputs[1], axes)
        self.g.operator(fb.BuiltinOperator.SUM, (x, axis), (self.out(node, out_shape),),
                        tb.ReducerOptions(keep_dims=keep))

    def squeeze(self, node: Node) -> None:
        x = self.tensor(node.inputs[0])
        shape = self.g.shape(x)
        dims = _ints(node, "squeeze_dims") or [i for i, d in enumerate(shape) if d == 1]
        if 0 in dims or any(shape[d] != 1 for d in dims):
            raise ModelError(f"TF.js node {node.name}: cannot squeeze dims {dims} of {shape}")
        kept = tuple(d for i, d in enumerate(shape) if i not in dims)
        new_shape = (-1, *kept[1:])
        target = self.g.constant(f"{node.name}/shape", np.asarray(new_shape, dtype=np.int32))
        self.g.operator(fb.BuiltinOperator.RESHAPE, (x, target), (self.out(node, kept),),
                        tb.ReshapeOptions(new_shape))


def _out_size(size: int, kernel: int, stride: int, padding: fb.Padding) -> int:
    if padding == fb.Padding.SAME:
        return -(-size // stride)
    return (size - kernel) // stride + 1


def convert_graph(
    graph: TfjsGraph, description: str, outputs: Sequence[str] | None = None
) -> tb.GraphBuilder:
    """Build the TFLite graph computing ``outputs`` (default the model's own outputs).

    Only the nodes the outputs depend on are converted, so an intermediate node can be
    checked on its own.

    Raises:
        ModelError: An unsupported node, or an output that is not a node.
    """
    wanted = tuple(outputs) if outputs else graph.outputs
    ops = {node.name: node for node in graph.nodes}
    needed: set[str] = set()
    stack = list(wanted)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        if name not in ops:
            raise ModelError(f"TF.js graph: no node named {name!r}")
        needed.add(name)
        stack.extend(ops[name].inputs)
    conv = _Converter(graph, description)
    inputs = []
    for node in graph.nodes:
        if node.name in needed:
            conv.convert(node)
            if node.op == "Placeholder":
                inputs.append(conv.index[node.name])
    conv.g.set_io(tuple(inputs), tuple(conv.index[name] for name in wanted))
    logger.debug("converted %d TF.js nodes into %d TFLite operators", len(needed),
                 conv.g.num_operators)
    return conv.g


def convert(model_json: Path, description: str, outputs: Sequence[str] | None = None,
            *, repair: bool = True) -> bytes:
    """``model.json`` (and its shards) as ``.tflite`` bytes; deterministic.

    Args:
        model_json: The graph model.
        description: Stored in the model.
        outputs: Nodes to compute (default the model's outputs).
        repair: Apply :func:`split_fused_prelu` first.

    Raises:
        ModelError: Unreadable model or an unsupported node.
    """
    graph = read_graph(model_json)
    if repair:
        with tempfile.TemporaryDirectory(prefix="facegate-tfjs-") as tmp:
            graph = read_graph(write_repaired(model_json, Path(tmp))[0])
    return convert_graph(graph, description, outputs).serialize()


_RELU = base64.b64encode(b"Relu").decode()


def split_fused_prelu(topology: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Undo a fusion that turned PReLU into ReLU: return a repaired copy of the topology.

    A node ``D = FusedDepthwiseConv2dNative(BiasAdd, Relu)`` whose output also feeds the
    ``Abs``/``Sub`` of a PReLU (``relu(x) + alpha * (x - |x|)``) applies the ReLU before
    the negative branch sees ``x``: ``x - |x|`` is then 0 and the PReLU is a plain ReLU.
    The repair computes ``D/linear`` (BiasAdd only), makes ``D`` its ``Relu`` (the PReLU's
    positive branch, as the graph's other PReLUs have it) and feeds ``Abs``/``Sub`` from
    ``D/linear``.

    Returns:
        The repaired topology and the names of the nodes split.
    """
    nodes = [dict(n) for n in topology["node"]]
    by_name = {n["name"]: n for n in nodes}
    consumers: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        for i in n.get("input", []):
            consumers.setdefault(i, []).append(n)
    split: list[str] = []
    out: list[dict[str, Any]] = []
    for n in nodes:
        name = n["name"]
        fused = n.get("attr", {}).get("fused_ops", {}).get("list", {}).get("s", [])
        users = consumers.get(name, [])
        negative = [u for u in users if u["op"] in ("Abs", "Sub")]
        if n["op"] != "FusedDepthwiseConv2dNative" or fused[1:] != [_RELU] or not negative:
            out.append(n)
            continue
        linear = f"{name}/linear"
        attr = copy.deepcopy(n["attr"])
        attr["fused_ops"]["list"]["s"] = fused[:1]
        out.append({**n, "name": linear, "attr": attr})
        out.append({"name": name, "op": "Relu", "input": [linear],
                    "attr": {"T": n.get("attr", {}).get("T", {"type": "DT_FLOAT"})}})
        for user in negative:
            user["input"] = [linear if i == name else i for i in user["input"]]
        split.append(name)
    del by_name
    return {**topology, "node": out}, split


def write_repaired(model_json: Path, out_dir: Path) -> tuple[Path, list[str]]:
    """Write ``model.json`` with :func:`split_fused_prelu` applied into ``out_dir``, its
    weight shards linked beside it (for the TF.js reference).

    Raises:
        ModelError: The model cannot be read or written.
    """
    try:
        model = json.loads(model_json.read_text(encoding="utf-8"))
        topology, split = split_fused_prelu(model["modelTopology"])
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / model_json.name
        target.write_text(json.dumps({**model, "modelTopology": topology}), encoding="utf-8")
        for group in model["weightsManifest"]:
            for shard in group["paths"]:
                link = out_dir / shard
                if not link.exists():
                    link.symlink_to((model_json.parent / shard).resolve())
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot write a repaired copy of {model_json}: {exc}") from exc
    return target, split

"""Full-integer post-training quantisation of a float graph written by the TFLite writer.

:func:`quantise_graph` rewrites a float32 :class:`~device.modelzoo.tflite_builder.GraphBuilder`
(as :func:`device.modelzoo.dlib_resnet.convert_graph` returns it) into an int8 one:

* weights: int8, symmetric (zero point 0). CONV_2D filters get one scale per output
  channel (``max|w_c| / 127``); FULLY_CONNECTED weights one scale for the tensor (the
  form TFLite's converter writes for the Edge TPU, whose compiler predates per-channel
  dense layers);
* biases: int32 with scale ``input_scale * weight_scale`` (per channel), zero point 0;
* activations: int8 with a per-tensor scale and zero point from a measured range
  ``[low, high]`` (widened to hold 0, so zero padding is exact);
* ops whose int8 kernels need equal input and output parameters (PAD, MAX_POOL_2D,
  AVERAGE_POOL_2D, CONCATENATION) pass the input's parameters on;
* a PAD of the channel axis (dlib's ``add_prev`` of a narrower skip path) becomes a
  CONCATENATION with a constant of real zeros: the Edge TPU maps PAD along x/y only,
  and maps a CONCATENATION with one all-zero constant as zero padding;
* the input keeps its range (e.g. 0..255 pixels) and becomes int8 with
  ``scale = (high - low) / 255``: for 0..255 that is scale 1, zero point -128, so a
  raw pixel ``p`` is fed as ``p - 128`` and maps onto the float input exactly (the
  float model's normalisation is already folded into its first convolution);
* the output is dequantised to float32 by a final DEQUANTIZE (the only op that is not
  int8), so callers normalise it as before.

Deterministic: the same graph and ranges give the same bytes (float64 arithmetic, one
rounding to float32 for each stored scale, ``numpy.round`` half to even).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from device.errors import ModelError
from device.modelzoo import tflite_schema as fb
from device.modelzoo.tflite_builder import (
    ConcatenationOptions,
    DequantizeOptions,
    GraphBuilder,
    PadOptions,
    Quantization,
)

logger = logging.getLogger(__name__)

INT8_MIN, INT8_MAX = -128, 127
#: Symmetric weights use -127..127 (TFLite's int8 spec: weights never take -128).
WEIGHT_MAX = 127
INT32_LIMIT = 2**31 - 1

#: Operator versions TFLite's converter records for these int8 kernels
#: (tensorflow/lite/tools/versioning/op_version.cc); the DEQUANTIZE of int8 is 2.
INT8_VERSIONS: dict[fb.BuiltinOperator, int] = {
    fb.BuiltinOperator.CONV_2D: 3,
    fb.BuiltinOperator.ADD: 2,
    fb.BuiltinOperator.PAD: 2,
    fb.BuiltinOperator.CONCATENATION: 2,
    fb.BuiltinOperator.MAX_POOL_2D: 2,
    fb.BuiltinOperator.AVERAGE_POOL_2D: 2,
    fb.BuiltinOperator.MEAN: 2,
    fb.BuiltinOperator.FULLY_CONNECTED: 4,
    fb.BuiltinOperator.DEQUANTIZE: 2,
}


@dataclass(frozen=True)
class Range:
    """A measured activation range."""

    low: float
    high: float


# --------------------------------------------------------------------------------------
# The arithmetic


def f32(value: float) -> float:
    """``value`` rounded to float32 (what the file stores), back as a Python float."""
    return float(np.float32(value))


def activation_quantization(low: float, high: float, name: str = "") -> Quantization:
    """Asymmetric int8 parameters covering ``[low, high]`` (widened to hold 0).

    ``scale = (high - low) / 255`` (rounded to float32) and ``zero_point =
    round(-128 - low / scale)``, clamped to -128..127, so real 0 is an exact code.

    Raises:
        ModelError: The range is not finite or empty.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ModelError(f"tensor {name}: range [{low}, {high}] is not finite")
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low <= 0:
        raise ModelError(f"tensor {name}: range [{low}, {high}] is empty; was it calibrated?")
    scale = f32((high - low) / (INT8_MAX - INT8_MIN))
    zero = int(np.clip(np.round(INT8_MIN - low / scale), INT8_MIN, INT8_MAX))
    return Quantization.per_tensor(scale, zero)


def quantise_weights(
    weights: NDArray[Any], per_channel: bool = True
) -> tuple[NDArray[np.int8], NDArray[np.float64]]:
    """Symmetric int8 weights; one scale per output channel (axis 0) or one in all.

    Returns:
        The int8 weights and the (float32-exact) scales, one per channel or one.
    """
    w = np.asarray(weights, dtype=np.float64)
    if per_channel:
        peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    else:
        peak = np.array([np.abs(w).max()])
    scales = np.where(peak > 0, peak / WEIGHT_MAX, 1.0).astype(np.float32).astype(np.float64)
    shaped = scales.reshape((-1,) + (1,) * (w.ndim - 1)) if per_channel else scales[0]
    q = np.clip(np.round(w / shaped), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return q, scales


def quantise_bias(
    bias: NDArray[Any], input_scale: float, weight_scales: NDArray[np.float64], name: str = ""
) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
    """int32 bias with scale ``input_scale * weight_scale`` per channel.

    Returns:
        The int32 bias and its scales (as stored, float32-exact).

    Raises:
        ModelError: A bias does not fit in int32 at that scale.
    """
    scales = (np.float64(f32(input_scale)) * weight_scales).astype(np.float32).astype(np.float64)
    scales = np.broadcast_to(scales, np.shape(bias))
    q = np.round(np.asarray(bias, dtype=np.float64) / scales)
    if np.abs(q).max(initial=0) > INT32_LIMIT:
        raise ModelError(f"{name}: a bias does not fit in int32 at scale {scales.min():g}")
    return q.astype(np.int32), np.asarray(scales)


def dequantise(q: NDArray[np.integer], quant: Quantization) -> NDArray[np.float64]:
    """``scale * (q - zero_point)`` for a per-tensor quantised array."""
    return quant.scales[0] * (np.asarray(q, dtype=np.float64) - quant.zero_points[0])


# --------------------------------------------------------------------------------------
# The graph rewrite


class _Rewriter:
    def __init__(self, src: GraphBuilder, ranges: Mapping[str, Range], description: str) -> None:
        self.src = src
        self.ranges = ranges
        self.dst = GraphBuilder(description)
        self.mapped: dict[int, int] = {}  # src activation -> dst int8 tensor
        self.quant: dict[int, Quantization] = {}  # dst tensor -> its quantisation
        for opcode, version in INT8_VERSIONS.items():
            self.dst.set_version(opcode, version)

    def range_of(self, index: int) -> Range:
        name = self.src.tensor(index).name
        found = self.ranges.get(name)
        if found is None:
            raise ModelError(f"tensor {name}: no calibrated range (the ranges file is stale)")
        return found

    def new_activation(self, src_index: int, quant: Quantization, name: str = "") -> int:
        view = self.src.tensor(src_index)
        out = self.dst.activation(name or view.name, view.shape, fb.TensorType.INT8, quant)
        self.mapped[src_index] = out
        self.quant[out] = quant
        return out

    def calibrated(self, src_index: int, name: str = "") -> int:
        r = self.range_of(src_index)
        view = self.src.tensor(src_index)
        return self.new_activation(src_index, activation_quantization(r.low, r.high, view.name),
                                   name)

    def inp(self, src_index: int) -> tuple[int, Quantization]:
        if src_index not in self.mapped:
            raise ModelError(f"tensor {self.src.tensor(src_index).name} is used before it is set")
        dst = self.mapped[src_index]
        return dst, self.quant[dst]

    def run(self) -> GraphBuilder:
        (graph_in,), (graph_out,) = self.src.io
        self.calibrated(graph_in)
        for op in self.src.operators():
            self.operator(op.opcode, op.inputs, op.outputs, op.options, graph_out)
        int8_out, _ = self.inp(graph_out)
        view = self.src.tensor(graph_out)
        out = self.dst.activation(view.name, view.shape, fb.TensorType.FLOAT32)
        self.dst.operator(fb.BuiltinOperator.DEQUANTIZE, (int8_out,), (out,), DequantizeOptions())
        self.dst.set_io((self.mapped[graph_in],), (out,))
        return self.dst

    def operator(self, opcode: fb.BuiltinOperator, inputs: tuple[int, ...],
                 outputs: tuple[int, ...], options: object, graph_out: int) -> None:
        ops = fb.BuiltinOperator
        (out,) = outputs
        name = self.src.tensor(out).name
        out_name = f"{name}/int8" if out == graph_out else ""
        if opcode == ops.CONV_2D:
            x, q_in = self.inp(inputs[0])
            w = self.src.tensor(inputs[1])
            b = self.src.tensor(inputs[2])
            assert w.data is not None and b.data is not None
            wq, w_scales = quantise_weights(w.data, per_channel=True)
            bq, b_scales = quantise_bias(b.data, q_in.scales[0], w_scales, name)
            zeros = (0,) * len(w_scales)
            wt = self.dst.constant(w.name, wq, Quantization(tuple(w_scales), zeros, 0))
            bt = self.dst.constant(b.name, bq, Quantization(tuple(b_scales), zeros, 0))
            y = self.calibrated(out, out_name)
            self.dst.operator(opcode, (x, wt, bt), (y,), options)  # type: ignore[arg-type]
        elif opcode == ops.FULLY_CONNECTED:
            x, q_in = self.inp(inputs[0])
            w = self.src.tensor(inputs[1])
            assert w.data is not None
            wq, w_scales = quantise_weights(w.data, per_channel=False)
            wt = self.dst.constant(w.name, wq, Quantization.per_tensor(w_scales[0], 0))
            fc_inputs: tuple[int, ...] = (x, wt)
            if len(inputs) > 2 and inputs[2] >= 0:
                b = self.src.tensor(inputs[2])
                assert b.data is not None
                bq, b_scales = quantise_bias(b.data, q_in.scales[0], w_scales, name)
                fc_inputs += (self.dst.constant(
                    b.name, bq, Quantization.per_tensor(b_scales[0], 0)),)
            y = self.calibrated(out, out_name)
            self.dst.operator(opcode, fc_inputs, (y,), options)  # type: ignore[arg-type]
        elif opcode in (ops.ADD, ops.MEAN):
            args = [self.inp(i)[0] for i in inputs if not self._is_constant(i)]
            if opcode == ops.MEAN:
                axes = self.src.tensor(inputs[1])
                assert axes.data is not None
                args.append(self.dst.constant(axes.name, np.asarray(axes.data, dtype=np.int32)))
            y = self.calibrated(out, out_name)
            self.dst.operator(opcode, tuple(args), (y,), options)  # type: ignore[arg-type]
        elif opcode in (ops.MAX_POOL_2D, ops.AVERAGE_POOL_2D):
            x, q_in = self.inp(inputs[0])
            y = self.new_activation(out, q_in, out_name)
            self.dst.operator(opcode, (x,), (y,), options)  # type: ignore[arg-type]
        elif opcode == ops.PAD:
            self.pad(inputs, out, out_name)
        else:
            raise ModelError(f"{opcode.name}: no int8 rewrite for this operator")

    def _is_constant(self, index: int) -> bool:
        return self.src.tensor(index).data is not None

    def pad(self, inputs: tuple[int, ...], out: int, out_name: str) -> None:
        """PAD along height/width as PAD, along channels as a CONCATENATION of zeros."""
        x, q_in = self.inp(inputs[0])
        paddings = self.src.tensor(inputs[1])
        assert paddings.data is not None
        amounts = np.asarray(paddings.data, dtype=np.int32)
        if amounts[0].any():
            raise ModelError(f"{paddings.name}: padding the batch axis has no int8 rewrite")
        view = self.src.tensor(out)
        current = x
        shape = self.dst.tensor(x).shape
        if amounts[1:3].any():
            spatial = amounts.copy()
            spatial[3] = 0
            pads = self.dst.constant(paddings.name, spatial)
            shape = tuple(int(s + a.sum()) for s, a in zip(shape, spatial, strict=True))
            nxt = self.dst.activation(f"{view.name}/spatial" if amounts[3].any() else
                                      (out_name or view.name), shape, fb.TensorType.INT8, q_in)
            self.dst.operator(fb.BuiltinOperator.PAD, (current, pads), (nxt,), PadOptions())
            current = nxt
        if amounts[3].any():
            before, after = int(amounts[3][0]), int(amounts[3][1])
            if before:
                raise ModelError(f"{paddings.name}: leading channel padding has no int8 rewrite")
            zeros = np.full((*shape[:3], after), q_in.zero_points[0], dtype=np.int8)
            const = self.dst.constant(f"{view.name}/zeros", zeros, q_in)
            nxt = self.dst.activation(out_name or view.name, view.shape, fb.TensorType.INT8, q_in)
            self.dst.operator(fb.BuiltinOperator.CONCATENATION, (current, const), (nxt,),
                              ConcatenationOptions(axis=3))
            current = nxt
        self.mapped[out] = current
        self.quant[current] = q_in


def quantise_graph(
    graph: GraphBuilder, ranges: Mapping[str, Range], description: str
) -> GraphBuilder:
    """The int8 version of a float graph (see the module docstring).

    Args:
        graph: A float32 graph with one input and one output.
        ranges: Measured range of every activation tensor, by tensor name (the input's
            too: ``[0, 255]`` for pixels).
        description: The new model's description.

    Raises:
        ModelError: A range is missing or empty, a bias overflows int32, or the graph
            uses an operator (or a padding) this rewrite does not handle.
    """
    inputs, outputs = graph.io
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError("int8 quantisation handles graphs with one input and one output")
    out = _Rewriter(graph, ranges, description).run()
    logger.debug("quantised %d operators to int8", out.num_operators)
    return out

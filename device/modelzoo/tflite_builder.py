"""Write a TensorFlow Lite model with ``flatbuffers.Builder``, no TensorFlow.

A :class:`GraphBuilder` collects tensors (constants and activations) and operators
in one subgraph; :meth:`GraphBuilder.serialize` lays them out as a ``TFL3``
flatbuffer.  Only the operators facegate's converters need are supported (see
:mod:`device.modelzoo.tflite_schema`).  Output is deterministic: the same calls give
the same bytes.

A custom operator (``BuiltinOperator.CUSTOM`` with :class:`CustomOptions`: its
``custom_code`` and flexbuffer options) runs a kernel LiteRT registers by name, such as
``TFLite_Detection_PostProcess``.

Tensors are float32 by default; int8/int32 tensors with quantisation parameters
(:class:`Quantization`) make full-integer models (see :mod:`device.modelzoo.quantize`).
A float tensor's table is written exactly as before quantisation was supported, so
float models keep their bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import flatbuffers
import numpy as np
from numpy.typing import NDArray

from device.errors import ModelError
from device.modelzoo import tflite_schema as fb

logger = logging.getLogger(__name__)

#: TFLite's schema asks for constant buffers aligned to 16 bytes (``force_align: 16``).
_BUFFER_ALIGNMENT = 16


# --------------------------------------------------------------------------------------
# Operator options


@dataclass(frozen=True)
class Conv2DOptions:
    """``Conv2DOptions``: padding, strides, fused activation."""

    padding: fb.Padding
    stride_h: int
    stride_w: int
    activation: fb.Activation = fb.Activation.NONE


@dataclass(frozen=True)
class DepthwiseConv2DOptions:
    """``DepthwiseConv2DOptions``: padding, strides, depth multiplier, fused activation."""

    padding: fb.Padding
    stride_h: int
    stride_w: int
    depth_multiplier: int = 1
    activation: fb.Activation = fb.Activation.NONE


@dataclass(frozen=True)
class SubOptions:
    """``SubOptions``."""

    activation: fb.Activation = fb.Activation.NONE


@dataclass(frozen=True)
class ReshapeOptions:
    """``ReshapeOptions``: the new shape (also given as the operator's second input)."""

    new_shape: tuple[int, ...]


@dataclass(frozen=True)
class MaximumMinimumOptions:
    """``MaximumMinimumOptions`` (an empty table)."""


@dataclass(frozen=True)
class NoOptions:
    """Operators without an options table (RELU, ABS, SQUARE, RSQRT): none is written."""


@dataclass(frozen=True)
class Pool2DOptions:
    """``Pool2DOptions`` for MAX_POOL_2D and AVERAGE_POOL_2D."""

    padding: fb.Padding
    stride_h: int
    stride_w: int
    filter_h: int
    filter_w: int
    activation: fb.Activation = fb.Activation.NONE


@dataclass(frozen=True)
class FullyConnectedOptions:
    """``FullyConnectedOptions`` (default weights format, 2-D output)."""

    activation: fb.Activation = fb.Activation.NONE


@dataclass(frozen=True)
class AddOptions:
    """``AddOptions``."""

    activation: fb.Activation = fb.Activation.NONE


@dataclass(frozen=True)
class MulOptions:
    """``MulOptions``."""

    activation: fb.Activation = fb.Activation.NONE


@dataclass(frozen=True)
class PadOptions:
    """``PadOptions`` (an empty table)."""


@dataclass(frozen=True)
class ReducerOptions:
    """``ReducerOptions`` for MEAN."""

    keep_dims: bool = False


@dataclass(frozen=True)
class ConcatenationOptions:
    """``ConcatenationOptions``: the axis to join along."""

    axis: int
    activation: fb.Activation = fb.Activation.NONE


@dataclass(frozen=True)
class DequantizeOptions:
    """DEQUANTIZE takes no options (none are written, as TFLite's converter does)."""


@dataclass(frozen=True)
class CustomOptions:
    """A custom operator: the name its kernel is registered under and its options.

    Attributes:
        code: ``OperatorCode.custom_code``, e.g. ``TFLite_Detection_PostProcess``.
        options: ``Operator.custom_options``: the flexbuffer the kernel's ``Init`` reads.
    """

    code: str
    options: bytes = b""


Options = (
    Conv2DOptions
    | DepthwiseConv2DOptions
    | SubOptions
    | ReshapeOptions
    | MaximumMinimumOptions
    | NoOptions
    | Pool2DOptions
    | FullyConnectedOptions
    | AddOptions
    | MulOptions
    | PadOptions
    | ReducerOptions
    | ConcatenationOptions
    | DequantizeOptions
    | CustomOptions
)

_OPTIONS_FOR: dict[fb.BuiltinOperator, type] = {
    fb.BuiltinOperator.CONV_2D: Conv2DOptions,
    fb.BuiltinOperator.MAX_POOL_2D: Pool2DOptions,
    fb.BuiltinOperator.AVERAGE_POOL_2D: Pool2DOptions,
    fb.BuiltinOperator.FULLY_CONNECTED: FullyConnectedOptions,
    fb.BuiltinOperator.ADD: AddOptions,
    fb.BuiltinOperator.MUL: MulOptions,
    fb.BuiltinOperator.PAD: PadOptions,
    fb.BuiltinOperator.MEAN: ReducerOptions,
    fb.BuiltinOperator.CONCATENATION: ConcatenationOptions,
    fb.BuiltinOperator.DEQUANTIZE: DequantizeOptions,
    fb.BuiltinOperator.CUSTOM: CustomOptions,
    fb.BuiltinOperator.DEPTHWISE_CONV_2D: DepthwiseConv2DOptions,
    fb.BuiltinOperator.SUB: SubOptions,
    fb.BuiltinOperator.RESHAPE: ReshapeOptions,
    fb.BuiltinOperator.MAXIMUM: MaximumMinimumOptions,
    fb.BuiltinOperator.SUM: ReducerOptions,
    fb.BuiltinOperator.RELU: NoOptions,
    fb.BuiltinOperator.ABS: NoOptions,
    fb.BuiltinOperator.SQUARE: NoOptions,
    fb.BuiltinOperator.RSQRT: NoOptions,
}

_DTYPES: dict[str, fb.TensorType] = {
    "float32": fb.TensorType.FLOAT32,
    "int32": fb.TensorType.INT32,
    "int8": fb.TensorType.INT8,
    "uint8": fb.TensorType.UINT8,
}


@dataclass(frozen=True)
class Quantization:
    """A tensor's affine quantisation: ``real = scale * (q - zero_point)``.

    Attributes:
        scales: One scale (per tensor) or one per slice along ``dimension``.
        zero_points: As many zero points as scales.
        dimension: The axis the scales run along when there are several.
    """

    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    dimension: int = 0

    def __post_init__(self) -> None:
        if not self.scales or len(self.scales) != len(self.zero_points):
            raise ModelError(
                f"quantisation needs as many zero points as scales, got {len(self.scales)} "
                f"and {len(self.zero_points)}"
            )
        if not all(s > 0 and np.isfinite(s) for s in self.scales):
            raise ModelError(f"quantisation scales must be positive and finite: {self.scales}")

    @staticmethod
    def per_tensor(scale: float, zero_point: int) -> Quantization:
        """One scale and zero point for the whole tensor."""
        return Quantization((float(scale),), (int(zero_point),))


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: fb.TensorType
    buffer: int  # 0 = no data (activation)
    quantization: Quantization | None = None


@dataclass(frozen=True)
class TensorView:
    """What a graph knows of one tensor (for passes that rewrite a graph).

    Attributes:
        name: Tensor name.
        shape: Its shape.
        dtype: Its element type.
        data: The constant's value, or ``None`` for a tensor computed at run time.
        quantization: Quantisation parameters, if any.
    """

    name: str
    shape: tuple[int, ...]
    dtype: fb.TensorType
    data: NDArray[np.generic] | None
    quantization: Quantization | None


@dataclass(frozen=True)
class OperatorView:
    """One operator of a graph: opcode, tensor indices and options."""

    opcode: fb.BuiltinOperator
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Options


@dataclass(frozen=True)
class _Operator:
    opcode: fb.BuiltinOperator
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Options


class GraphBuilder:
    """Collects one subgraph and serializes it as a ``.tflite`` flatbuffer.

    Args:
        description: Stored in ``Model.description``.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self._tensors: list[_Tensor] = []
        self._operators: list[_Operator] = []
        self._buffers: list[bytes] = [b""]  # buffer 0: the empty sentinel
        self._inputs: tuple[int, ...] = ()
        self._outputs: tuple[int, ...] = ()
        self._versions: dict[fb.BuiltinOperator, int] = {}

    # graph construction -------------------------------------------------------------

    def shape(self, tensor: int) -> tuple[int, ...]:
        """Shape of a tensor added earlier."""
        return self._tensors[tensor].shape

    def constant(
        self,
        name: str,
        value: NDArray[np.float32] | NDArray[np.int32] | NDArray[np.int8] | NDArray[np.uint8],
        quantization: Quantization | None = None,
    ) -> int:
        """Add a constant tensor (float32, int32, int8 or uint8) and return its index.

        Raises:
            ModelError: The array's dtype is none of those.
        """
        dtype = _DTYPES.get(value.dtype.name)
        if dtype is None:
            raise ModelError(
                f"constant {name}: dtype {value.dtype} is not float32, int32, int8 or uint8")
        data = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
        self._buffers.append(data)
        self._tensors.append(
            _Tensor(name, tuple(value.shape), dtype, len(self._buffers) - 1, quantization)
        )
        return len(self._tensors) - 1

    def activation(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: fb.TensorType = fb.TensorType.FLOAT32,
        quantization: Quantization | None = None,
    ) -> int:
        """Add a tensor computed at run time and return its index."""
        self._tensors.append(_Tensor(name, tuple(shape), dtype, 0, quantization))
        return len(self._tensors) - 1

    def set_version(self, opcode: fb.BuiltinOperator, version: int) -> None:
        """Declare an operator's version (default 1); int8 kernels have their own.

        Raises:
            ModelError: ``version`` is below 1.
        """
        if version < 1:
            raise ModelError(f"{opcode.name}: operator version {version} is below 1")
        self._versions[opcode] = version

    # reading back (for graph rewrites) ------------------------------------------------

    @property
    def num_tensors(self) -> int:
        """Tensors added so far."""
        return len(self._tensors)

    def tensor(self, index: int) -> TensorView:
        """A tensor added earlier, with its constant value decoded."""
        t = self._tensors[index]
        data: NDArray[np.generic] | None = None
        if t.buffer:
            np_type = {
                fb.TensorType.FLOAT32: "<f4",
                fb.TensorType.INT32: "<i4",
                fb.TensorType.INT8: "i1",
                fb.TensorType.UINT8: "u1",
            }[t.dtype]
            data = np.frombuffer(self._buffers[t.buffer], dtype=np_type).reshape(t.shape)
        return TensorView(t.name, t.shape, t.dtype, data, t.quantization)

    def operators(self) -> list[OperatorView]:
        """Every operator, in execution order."""
        return [OperatorView(op.opcode, op.inputs, op.outputs, op.options)
                for op in self._operators]

    @property
    def io(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The declared input and output tensor indices."""
        return self._inputs, self._outputs

    def operator(
        self,
        opcode: fb.BuiltinOperator,
        inputs: tuple[int, ...],
        outputs: tuple[int, ...],
        options: Options,
    ) -> int:
        """Append an operator (run in the order added) and return its index.

        An input index of -1 marks an omitted optional input.

        Raises:
            ModelError: ``options`` are not the kind the operator takes, or a tensor
                index is unknown.
        """
        expected = _OPTIONS_FOR.get(opcode)
        if expected is None or not isinstance(options, expected):
            raise ModelError(f"{opcode.name}: options {type(options).__name__} do not fit")
        optional = (-1,)  # TFLite's "input omitted" (e.g. FULLY_CONNECTED without bias)
        for index in (*(i for i in inputs if i not in optional), *outputs):
            if not 0 <= index < len(self._tensors):
                raise ModelError(f"{opcode.name}: tensor index {index} does not exist")
        self._operators.append(_Operator(opcode, tuple(inputs), tuple(outputs), options))
        return len(self._operators) - 1

    def operator_info(self, index: int) -> tuple[fb.BuiltinOperator, Options]:
        """Opcode and options of an operator added earlier."""
        op = self._operators[index]
        return op.opcode, op.options

    def replace_options(self, index: int, options: Options) -> None:
        """Change an operator's options (e.g. to fuse a following ReLU).

        Raises:
            ModelError: The new options do not fit the operator.
        """
        op = self._operators[index]
        if not isinstance(options, type(op.options)):
            raise ModelError(f"{op.opcode.name}: options {type(options).__name__} do not fit")
        self._operators[index] = replace(op, options=options)

    def set_io(self, inputs: tuple[int, ...], outputs: tuple[int, ...]) -> None:
        """Declare the subgraph's input and output tensors."""
        self._inputs, self._outputs = tuple(inputs), tuple(outputs)

    @property
    def num_operators(self) -> int:
        """Operators added so far."""
        return len(self._operators)

    # serialization ------------------------------------------------------------------

    def serialize(self) -> bytes:
        """The model as ``.tflite`` bytes.

        Raises:
            ModelError: Inputs or outputs were not declared.
        """
        if not self._inputs or not self._outputs:
            raise ModelError("the graph's inputs and outputs were not declared")
        total = sum(len(b) + _BUFFER_ALIGNMENT for b in self._buffers)
        builder = flatbuffers.Builder(total + 1024 * (len(self._tensors) + 16))

        buffer_offsets = [self._write_buffer(builder, data) for data in self._buffers]
        buffers_vec = _offset_vector(builder, buffer_offsets)

        tensor_offsets = [self._write_tensor(builder, t) for t in self._tensors]
        tensors_vec = _offset_vector(builder, tensor_offsets)

        # An operator code is the builtin code and, for CUSTOM, the custom code.
        opcodes = sorted({_opcode_key(op) for op in self._operators})
        opcode_index = {key: i for i, key in enumerate(opcodes)}
        operator_offsets = [
            self._write_operator(builder, op, opcode_index[_opcode_key(op)])
            for op in self._operators
        ]
        operators_vec = _offset_vector(builder, operator_offsets)

        inputs_vec = _int_vector(builder, self._inputs)
        outputs_vec = _int_vector(builder, self._outputs)
        name = builder.CreateString("main")
        builder.StartObject(fb.SUBGRAPH_SLOTS)
        builder.PrependUOffsetTRelativeSlot(fb.SubGraphField.tensors, tensors_vec, 0)
        builder.PrependUOffsetTRelativeSlot(fb.SubGraphField.inputs, inputs_vec, 0)
        builder.PrependUOffsetTRelativeSlot(fb.SubGraphField.outputs, outputs_vec, 0)
        builder.PrependUOffsetTRelativeSlot(fb.SubGraphField.operators, operators_vec, 0)
        builder.PrependUOffsetTRelativeSlot(fb.SubGraphField.name, name, 0)
        subgraph = builder.EndObject()
        subgraphs_vec = _offset_vector(builder, [subgraph])

        code_offsets = []
        for code_value, custom_code in opcodes:
            code = fb.BuiltinOperator(code_value)
            custom = builder.CreateString(custom_code) if custom_code else 0
            builder.StartObject(fb.OPERATOR_CODE_SLOTS)
            if custom:
                builder.PrependUOffsetTRelativeSlot(fb.OperatorCodeField.custom_code, custom, 0)
            # Codes below 127 are also written to the deprecated int8 field, as TFLite's
            # own converter does, so older runtimes read them too.
            builder.PrependInt8Slot(
                fb.OperatorCodeField.deprecated_builtin_code, min(int(code), 127), 0
            )
            builder.PrependInt32Slot(
                fb.OperatorCodeField.version, self._versions.get(code, 1), 1
            )
            builder.PrependInt32Slot(fb.OperatorCodeField.builtin_code, int(code), 0)
            code_offsets.append(builder.EndObject())
        codes_vec = _offset_vector(builder, code_offsets)

        description = builder.CreateString(self.description)
        builder.StartObject(fb.MODEL_SLOTS)
        builder.PrependUint32Slot(fb.ModelField.version, fb.SCHEMA_VERSION, 0)
        builder.PrependUOffsetTRelativeSlot(fb.ModelField.operator_codes, codes_vec, 0)
        builder.PrependUOffsetTRelativeSlot(fb.ModelField.subgraphs, subgraphs_vec, 0)
        builder.PrependUOffsetTRelativeSlot(fb.ModelField.description, description, 0)
        builder.PrependUOffsetTRelativeSlot(fb.ModelField.buffers, buffers_vec, 0)
        model = builder.EndObject()
        builder.Finish(model, file_identifier=fb.FILE_IDENTIFIER)
        return bytes(builder.Output())

    @staticmethod
    def _write_buffer(builder: flatbuffers.Builder, data: bytes) -> int:
        vector = 0
        if data:
            # As Builder.CreateNumpyVector does, but with the 16-byte alignment TFLite's
            # schema asks for (CreateNumpyVector aligns to the element size only).
            builder.StartVector(1, len(data), _BUFFER_ALIGNMENT)
            builder.head = builder.head - len(data)
            builder.Bytes[builder.head : builder.head + len(data)] = data
            vector = builder.EndVector()
        builder.StartObject(fb.BUFFER_SLOTS)
        if vector:
            builder.PrependUOffsetTRelativeSlot(fb.BufferField.data, vector, 0)
        return int(builder.EndObject())

    @staticmethod
    def _write_tensor(builder: flatbuffers.Builder, tensor: _Tensor) -> int:
        name = builder.CreateString(tensor.name)
        shape = _int_vector(builder, tensor.shape)
        if tensor.quantization is not None:
            quant = _write_quantization(builder, tensor.quantization)
            builder.StartObject(fb.QUANTIZED_TENSOR_SLOTS)
            builder.PrependUOffsetTRelativeSlot(fb.TENSOR_QUANTIZATION_SLOT, quant, 0)
        else:
            builder.StartObject(fb.TENSOR_SLOTS)
        builder.PrependUOffsetTRelativeSlot(fb.TensorField.shape, shape, 0)
        builder.PrependInt8Slot(fb.TensorField.type, int(tensor.dtype), 0)
        builder.PrependUint32Slot(fb.TensorField.buffer, tensor.buffer, 0)
        builder.PrependUOffsetTRelativeSlot(fb.TensorField.name, name, 0)
        return int(builder.EndObject())

    @staticmethod
    def _write_operator(builder: flatbuffers.Builder, op: _Operator, opcode_index: int) -> int:
        if isinstance(op.options, CustomOptions):
            return GraphBuilder._write_custom_operator(builder, op, op.options, opcode_index)
        options_type, options = _write_options(builder, op.options)
        inputs = _int_vector(builder, op.inputs)
        outputs = _int_vector(builder, op.outputs)
        builder.StartObject(fb.OPERATOR_SLOTS)
        builder.PrependUint32Slot(fb.OperatorField.opcode_index, opcode_index, 0)
        builder.PrependUOffsetTRelativeSlot(fb.OperatorField.inputs, inputs, 0)
        builder.PrependUOffsetTRelativeSlot(fb.OperatorField.outputs, outputs, 0)
        builder.PrependUint8Slot(fb.OperatorField.builtin_options_type, int(options_type), 0)
        builder.PrependUOffsetTRelativeSlot(fb.OperatorField.builtin_options, options, 0)
        return int(builder.EndObject())

    @staticmethod
    def _write_custom_operator(builder: flatbuffers.Builder, op: _Operator,
                               custom: CustomOptions, opcode_index: int) -> int:
        options = builder.CreateByteVector(custom.options) if custom.options else 0
        inputs = _int_vector(builder, op.inputs)
        outputs = _int_vector(builder, op.outputs)
        builder.StartObject(fb.CUSTOM_OPERATOR_SLOTS)
        builder.PrependUint32Slot(fb.OperatorField.opcode_index, opcode_index, 0)
        builder.PrependUOffsetTRelativeSlot(fb.OperatorField.inputs, inputs, 0)
        builder.PrependUOffsetTRelativeSlot(fb.OperatorField.outputs, outputs, 0)
        if options:
            builder.PrependUOffsetTRelativeSlot(fb.OperatorField.custom_options, options, 0)
        # custom_options_format FLEXBUFFERS is the schema's default (0): not written.
        return int(builder.EndObject())


def _opcode_key(op: _Operator) -> tuple[int, str]:
    custom = op.options.code if isinstance(op.options, CustomOptions) else ""
    return int(op.opcode), custom


def _write_quantization(builder: flatbuffers.Builder, quant: Quantization) -> int:
    scales = builder.CreateNumpyVector(np.asarray(quant.scales, dtype="<f4"))
    zeros = builder.CreateNumpyVector(np.asarray(quant.zero_points, dtype="<i8"))
    builder.StartObject(fb.QUANTIZATION_SLOTS)
    builder.PrependUOffsetTRelativeSlot(fb.QuantizationField.scale, scales, 0)
    builder.PrependUOffsetTRelativeSlot(fb.QuantizationField.zero_point, zeros, 0)
    builder.PrependInt32Slot(fb.QuantizationField.quantized_dimension, quant.dimension, 0)
    return int(builder.EndObject())


def _write_options(builder: flatbuffers.Builder, options: Options) -> tuple[fb.BuiltinOptions, int]:
    if isinstance(options, DequantizeOptions | NoOptions):
        return fb.BuiltinOptions.NONE, 0
    if isinstance(options, DepthwiseConv2DOptions):
        field = fb.DepthwiseConv2DOptionsField
        builder.StartObject(fb.DEPTHWISE_CONV2D_OPTIONS_SLOTS)
        builder.PrependInt8Slot(field.padding, int(options.padding), 0)
        builder.PrependInt32Slot(field.stride_w, options.stride_w, 0)
        builder.PrependInt32Slot(field.stride_h, options.stride_h, 0)
        builder.PrependInt32Slot(field.depth_multiplier, options.depth_multiplier, 0)
        builder.PrependInt8Slot(field.fused_activation_function, int(options.activation), 0)
        builder.PrependInt32Slot(field.dilation_w_factor, 1, 1)
        builder.PrependInt32Slot(field.dilation_h_factor, 1, 1)
        return fb.BuiltinOptions.DepthwiseConv2DOptions, int(builder.EndObject())
    if isinstance(options, SubOptions):
        builder.StartObject(fb.SUB_OPTIONS_SLOTS)
        builder.PrependInt8Slot(
            fb.SubOptionsField.fused_activation_function, int(options.activation), 0
        )
        return fb.BuiltinOptions.SubOptions, int(builder.EndObject())
    if isinstance(options, ReshapeOptions):
        new_shape = _int_vector(builder, options.new_shape)
        builder.StartObject(fb.RESHAPE_OPTIONS_SLOTS)
        builder.PrependUOffsetTRelativeSlot(fb.ReshapeOptionsField.new_shape, new_shape, 0)
        return fb.BuiltinOptions.ReshapeOptions, int(builder.EndObject())
    if isinstance(options, MaximumMinimumOptions):
        builder.StartObject(0)
        return fb.BuiltinOptions.MaximumMinimumOptions, int(builder.EndObject())
    if isinstance(options, ConcatenationOptions):
        builder.StartObject(fb.CONCATENATION_OPTIONS_SLOTS)
        builder.PrependInt32Slot(fb.ConcatenationOptionsField.axis, options.axis, 0)
        builder.PrependInt8Slot(
            fb.ConcatenationOptionsField.fused_activation_function, int(options.activation), 0
        )
        return fb.BuiltinOptions.ConcatenationOptions, int(builder.EndObject())
    if isinstance(options, Conv2DOptions):
        builder.StartObject(fb.CONV2D_OPTIONS_SLOTS)
        builder.PrependInt8Slot(fb.Conv2DOptionsField.padding, int(options.padding), 0)
        builder.PrependInt32Slot(fb.Conv2DOptionsField.stride_w, options.stride_w, 0)
        builder.PrependInt32Slot(fb.Conv2DOptionsField.stride_h, options.stride_h, 0)
        builder.PrependInt8Slot(
            fb.Conv2DOptionsField.fused_activation_function, int(options.activation), 0
        )
        builder.PrependInt32Slot(fb.Conv2DOptionsField.dilation_w_factor, 1, 1)
        builder.PrependInt32Slot(fb.Conv2DOptionsField.dilation_h_factor, 1, 1)
        return fb.BuiltinOptions.Conv2DOptions, int(builder.EndObject())
    if isinstance(options, Pool2DOptions):
        builder.StartObject(fb.POOL2D_OPTIONS_SLOTS)
        builder.PrependInt8Slot(fb.Pool2DOptionsField.padding, int(options.padding), 0)
        builder.PrependInt32Slot(fb.Pool2DOptionsField.stride_w, options.stride_w, 0)
        builder.PrependInt32Slot(fb.Pool2DOptionsField.stride_h, options.stride_h, 0)
        builder.PrependInt32Slot(fb.Pool2DOptionsField.filter_width, options.filter_w, 0)
        builder.PrependInt32Slot(fb.Pool2DOptionsField.filter_height, options.filter_h, 0)
        builder.PrependInt8Slot(
            fb.Pool2DOptionsField.fused_activation_function, int(options.activation), 0
        )
        return fb.BuiltinOptions.Pool2DOptions, int(builder.EndObject())
    if isinstance(options, FullyConnectedOptions):
        builder.StartObject(fb.FULLY_CONNECTED_OPTIONS_SLOTS)
        builder.PrependInt8Slot(
            fb.FullyConnectedOptionsField.fused_activation_function, int(options.activation), 0
        )
        return fb.BuiltinOptions.FullyConnectedOptions, int(builder.EndObject())
    if isinstance(options, AddOptions | MulOptions):
        builder.StartObject(fb.ADD_OPTIONS_SLOTS)
        builder.PrependInt8Slot(
            fb.AddOptionsField.fused_activation_function, int(options.activation), 0
        )
        kind = (
            fb.BuiltinOptions.AddOptions
            if isinstance(options, AddOptions)
            else fb.BuiltinOptions.MulOptions
        )
        return kind, int(builder.EndObject())
    if isinstance(options, PadOptions):
        builder.StartObject(0)
        return fb.BuiltinOptions.PadOptions, int(builder.EndObject())
    if isinstance(options, CustomOptions):  # written by _write_custom_operator
        raise ModelError(f"custom operator {options.code}: it has no builtin options")
    builder.StartObject(fb.REDUCER_OPTIONS_SLOTS)
    builder.PrependBoolSlot(fb.ReducerOptionsField.keep_dims, options.keep_dims, False)
    return fb.BuiltinOptions.ReducerOptions, int(builder.EndObject())


def _int_vector(builder: flatbuffers.Builder, values: tuple[int, ...]) -> int:
    return int(builder.CreateNumpyVector(np.asarray(values, dtype=np.int32)))


def _offset_vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return int(builder.EndVector())

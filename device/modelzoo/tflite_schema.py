"""The few numbers of the TensorFlow Lite flatbuffer schema that facegate writes.

What this is: hand-transcribed constants from TensorFlow Lite's ``schema.fbs``
(tensorflow/compiler/mlir/lite/schema/schema.fbs, schema version 3, file identifier
``TFL3``): enum values, and the field slot of each table field (a field's slot is its
declaration order; a union field ``x`` takes two slots, ``x_type`` then ``x``).
Only the tables and operators :mod:`device.modelzoo.tflite_builder` emits are listed.

Licence: the schema is Copyright The TensorFlow Authors, Apache License 2.0
(https://www.apache.org/licenses/LICENSE-2.0), the same licence as facegate.

The values were checked against the generated ``schema_py_generated.py`` that ships
with ``ai-edge-litert`` (see tests/unit/modelzoo/test_dlib_tflite_builder.py, which parses the
written model back with it).
"""

from __future__ import annotations

from enum import IntEnum

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3


class TensorType(IntEnum):
    """``enum TensorType : byte``."""

    FLOAT32 = 0
    INT32 = 2
    UINT8 = 3
    INT8 = 9


class BuiltinOperator(IntEnum):
    """``enum BuiltinOperator : int32`` (only the operators facegate emits)."""

    ADD = 0
    AVERAGE_POOL_2D = 1
    CONCATENATION = 2
    CONV_2D = 3
    DEPTHWISE_CONV_2D = 4
    DEQUANTIZE = 6
    FULLY_CONNECTED = 9
    MAX_POOL_2D = 17
    MUL = 18
    RELU = 19
    RESHAPE = 22
    CUSTOM = 32
    PAD = 34
    MEAN = 40
    SUB = 41
    MAXIMUM = 55
    SUM = 74
    RSQRT = 76
    SQUARE = 92
    ABS = 101


class BuiltinOptions(IntEnum):
    """``union BuiltinOptions`` member indices."""

    NONE = 0
    Conv2DOptions = 1
    DepthwiseConv2DOptions = 2
    Pool2DOptions = 5
    FullyConnectedOptions = 8
    ConcatenationOptions = 10
    AddOptions = 11
    MulOptions = 21
    ReshapeOptions = 17
    PadOptions = 22
    ReducerOptions = 27
    SubOptions = 28
    MaximumMinimumOptions = 39


class Padding(IntEnum):
    """``enum Padding : byte``."""

    SAME = 0
    VALID = 1


class Activation(IntEnum):
    """``enum ActivationFunctionType : byte``."""

    NONE = 0
    RELU = 1


# Number of field slots and slot numbers of each table (StartObject(n), Prepend*Slot(i)).
# Plain classes of ints rather than enums: a field may be called `name`.


class ModelField:
    """``table Model``."""

    version = 0
    operator_codes = 1
    subgraphs = 2
    description = 3
    buffers = 4


MODEL_SLOTS = 5


class OperatorCodeField:
    """``table OperatorCode``."""

    deprecated_builtin_code = 0
    custom_code = 1
    version = 2
    builtin_code = 3


OPERATOR_CODE_SLOTS = 4


class SubGraphField:
    """``table SubGraph``."""

    tensors = 0
    inputs = 1
    outputs = 2
    operators = 3
    name = 4


SUBGRAPH_SLOTS = 5


class TensorField:
    """``table Tensor``."""

    shape = 0
    type = 1
    buffer = 2
    name = 3


TENSOR_SLOTS = 4

#: A tensor with quantisation parameters also writes field 4 (``quantization``). Float
#: tensors keep the 4-slot table, so the float models' bytes do not change.
TENSOR_QUANTIZATION_SLOT = 4
QUANTIZED_TENSOR_SLOTS = 5


class QuantizationField:
    """``table QuantizationParameters`` (``details`` is a union: two slots)."""

    min = 0
    max = 1
    scale = 2  # [float]
    zero_point = 3  # [long]
    details_type = 4
    details = 5
    quantized_dimension = 6


QUANTIZATION_SLOTS = 7


class BufferField:
    """``table Buffer``."""

    data = 0


BUFFER_SLOTS = 1


class OperatorField:
    """``table Operator`` (``builtin_options`` is a union: type slot, then value slot)."""

    opcode_index = 0
    inputs = 1
    outputs = 2
    builtin_options_type = 3
    builtin_options = 4
    custom_options = 5  # [ubyte], a flexbuffer for custom_options_format FLEXBUFFERS (0)
    custom_options_format = 6


OPERATOR_SLOTS = 5
#: A custom operator also writes ``custom_options``; builtin operators keep the 5-slot
#: table, so the models written before custom operators were supported keep their bytes.
CUSTOM_OPERATOR_SLOTS = 7


class Conv2DOptionsField:
    """``table Conv2DOptions``."""

    padding = 0
    stride_w = 1
    stride_h = 2
    fused_activation_function = 3
    dilation_w_factor = 4
    dilation_h_factor = 5


CONV2D_OPTIONS_SLOTS = 6


class DepthwiseConv2DOptionsField:
    """``table DepthwiseConv2DOptions``."""

    padding = 0
    stride_w = 1
    stride_h = 2
    depth_multiplier = 3
    fused_activation_function = 4
    dilation_w_factor = 5
    dilation_h_factor = 6


DEPTHWISE_CONV2D_OPTIONS_SLOTS = 7


class ReshapeOptionsField:
    """``table ReshapeOptions``."""

    new_shape = 0


RESHAPE_OPTIONS_SLOTS = 1


class SubOptionsField:
    """``table SubOptions`` (``pot_scale_int16`` is left at its default)."""

    fused_activation_function = 0
    pot_scale_int16 = 1


SUB_OPTIONS_SLOTS = 2


class Pool2DOptionsField:
    """``table Pool2DOptions``."""

    padding = 0
    stride_w = 1
    stride_h = 2
    filter_width = 3
    filter_height = 4
    fused_activation_function = 5


POOL2D_OPTIONS_SLOTS = 6


class FullyConnectedOptionsField:
    """``table FullyConnectedOptions``."""

    fused_activation_function = 0
    weights_format = 1
    keep_num_dims = 2


FULLY_CONNECTED_OPTIONS_SLOTS = 3


class AddOptionsField:
    """``table AddOptions`` (also the layout of ``MulOptions``'s first field)."""

    fused_activation_function = 0


ADD_OPTIONS_SLOTS = 1


class ConcatenationOptionsField:
    """``table ConcatenationOptions``."""

    axis = 0
    fused_activation_function = 1


CONCATENATION_OPTIONS_SLOTS = 2


class ReducerOptionsField:
    """``table ReducerOptions``."""

    keep_dims = 0


REDUCER_OPTIONS_SLOTS = 1

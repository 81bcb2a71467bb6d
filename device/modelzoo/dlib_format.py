"""Reader for dlib's DNN serialization (``*.dat`` files written by ``dlib::serialize``).

The layout follows dlib's own sources (read from davisking/dlib):

* ``dlib/serialize.h``: integers are a control byte (bit 7 = negative, low 4 bits =
  number of magnitude bytes) followed by the magnitude in little-endian order; a
  ``bool`` is one ASCII byte ``'0'``/``'1'``; a string is its length (unsigned
  integer) then its bytes; a ``float``/``double`` is ``float_details``: the signed
  64-bit mantissa then the 16-bit exponent, both as integers, value =
  ``mantissa * 2**exponent`` (exponents 32000/32001/32002 mean +inf/-inf/NaN).
* ``dlib/dnn/tensor.h``: a ``resizable_tensor`` is a version integer, then
  ``num_samples, k, nr, nc``, then the values: version 1 stores each value as a dlib
  float, version 2 as raw little-endian IEEE float32.  An ``alias_tensor`` is version 1
  and the four dimensions, no data.
* ``dlib/dnn/core.h``: a network is serialized from the loss layer down.
  ``add_loss_layer`` writes version 1, the loss details, then its subnetwork;
  ``add_layer`` (version 2) writes its version, its *subnetwork*, then its layer
  details, three bools and the ``x_grad``, ``cached_output`` and ``params_grad``
  tensors; the ``add_layer`` that sits on the input layer (version 2 or 3) writes the
  input layer, its details, three bools, ``x_grad``, ``cached_output``,
  ``grad_final`` and (version 3) the sample expansion factor.  ``add_tag_layer`` and
  ``add_skip_layer`` write version 1 and their subnetwork, **nothing else**: their
  tag ids are template parameters, so the file cannot tell a tag from a skip.  The
  reader reports them as :class:`TagOrSkip` and the architecture module
  (:mod:`device.modelzoo.dlib_resnet`) says which is which.
* ``dlib/dnn/layers.h``, ``input.h``, ``loss.h``: the per-layer details
  (``con_4``, ``affine_``, ``relu_``, ``max_pool_2``, ``avg_pool_2``, ``add_prev_``,
  ``fc_2``, ``input_rgb_image_sized``, ``loss_metric_2``).

So the file holds every wrapper's version top-down, then the input layer, then each
layer's details bottom-up.  :func:`read_dlib_net` returns the layers in forward
(input-to-output) order.  Any deviation is a :class:`~device.errors.ModelError` that
names the file, the byte offset and what was expected there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from device.errors import ModelError

logger = logging.getLogger(__name__)

#: float_details exponents that encode the special values.
_IS_INF, _IS_NINF, _IS_NAN = 32000, 32001, 32002

#: Bytes of the C++ types dlib serializes as integers (LP64, as dlib's writers use).
_INT, _LONG, _UINT, _ULONG, _INT64, _INT16 = 4, 8, 4, 8, 8, 2

#: The biggest tensor the reader accepts (elements): far above any face model, far
#: below what a corrupted dimension field would ask for.
_MAX_TENSOR_ELEMENTS = 1 << 28


# --------------------------------------------------------------------------------------
# The layers a reader yields


@dataclass(frozen=True, eq=False)
class InputRGB:
    """``input_rgb_image`` / ``input_rgb_image_sized<NR,NC>``.

    dlib feeds the network ``(pixel - avg) / 256`` per channel, planar RGB.

    Attributes:
        avg: Mean red, green, blue subtracted from each pixel.
        rows: Fixed input height (``None`` for the unsized variant).
        cols: Fixed input width (``None`` for the unsized variant).
    """

    offset: int
    avg: tuple[float, float, float]
    rows: int | None
    cols: int | None
    kind: str = field(default="input", init=False)


@dataclass(frozen=True, eq=False)
class Conv:
    """``con_``: 2-D convolution with bias.

    Attributes:
        filters: ``(out_channels, in_channels, rows, cols)`` float32, dlib's layout.
        bias: ``(out_channels,)`` float32.
        stride: ``(stride_y, stride_x)``.
        padding: ``(padding_y, padding_x)`` zero padding on each side.
    """

    offset: int
    filters: NDArray[np.float32]
    bias: NDArray[np.float32]
    stride: tuple[int, int]
    padding: tuple[int, int]
    kind: str = field(default="con", init=False)


@dataclass(frozen=True, eq=False)
class Affine:
    """``affine_``: ``y = x * gamma + beta`` (dlib's inference form of batch norm).

    Attributes:
        gamma: Per channel (conv mode) or per element (fc mode) scale, float32.
        beta: Same shape as ``gamma``.
        conv_mode: ``True`` for ``CONV_MODE`` (one value per channel).
    """

    offset: int
    gamma: NDArray[np.float32]
    beta: NDArray[np.float32]
    conv_mode: bool
    kind: str = field(default="affine", init=False)


@dataclass(frozen=True, eq=False)
class Relu:
    """``relu_``."""

    offset: int
    kind: str = field(default="relu", init=False)


@dataclass(frozen=True, eq=False)
class Pool:
    """``max_pool_`` or ``avg_pool_``.

    Attributes:
        mode: ``"max"`` or ``"avg"``.
        size: ``(rows, cols)``; ``(0, 0)`` means the whole input (``*_pool_everything``).
        stride: ``(stride_y, stride_x)``.
        padding: ``(padding_y, padding_x)``.
    """

    offset: int
    mode: str
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def kind(self) -> str:
        """``max_pool`` or ``avg_pool``."""
        return f"{self.mode}_pool"


@dataclass(frozen=True, eq=False)
class AddPrev:
    """``add_prev_<tag>``: adds the output of the tagged layer (the tag id is not stored).

    dlib's ``tt::add`` zero-pads whichever operand is smaller in any dimension.
    """

    offset: int
    kind: str = field(default="add_prev", init=False)


@dataclass(frozen=True, eq=False)
class FullyConnected:
    """``fc_``: ``y = x @ weights (+ bias)``.

    Attributes:
        weights: ``(num_inputs, num_outputs)`` float32, dlib's layout.
        bias: ``(num_outputs,)`` float32 or ``None`` (``fc_no_bias``).
    """

    offset: int
    weights: NDArray[np.float32]
    bias: NDArray[np.float32] | None
    kind: str = field(default="fc", init=False)


@dataclass(frozen=True, eq=False)
class TagOrSkip:
    """An ``add_tag_layer`` or ``add_skip_layer``: the file does not say which."""

    offset: int
    kind: str = field(default="tag_or_skip", init=False)


@dataclass(frozen=True, eq=False)
class LossMetric:
    """``loss_metric_``: training-only settings; inference output is the raw subnet output."""

    offset: int
    margin: float
    distance_threshold: float
    kind: str = field(default="loss_metric", init=False)


DlibLayer = InputRGB | Conv | Affine | Relu | Pool | AddPrev | FullyConnected | TagOrSkip


@dataclass(frozen=True, eq=False)
class DlibNet:
    """A deserialized dlib network.

    Attributes:
        source: The file it came from (for messages).
        loss: The loss layer's settings.
        layers: Input first, then every layer in the order dlib runs them forward.
    """

    source: str
    loss: LossMetric
    layers: tuple[DlibLayer, ...]


# --------------------------------------------------------------------------------------
# Byte cursor


class _Cursor:
    """Reads dlib's primitive encodings from a byte buffer, naming offsets in errors."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.source = source

    # errors -----------------------------------------------------------------------

    def fail(self, what: str, found: str, at: int | None = None) -> ModelError:
        where = self.pos if at is None else at
        return ModelError(
            f"{self.source}: not a dlib network file this reader understands: expected "
            f"{what} at byte {where}, found {found}"
        )

    def truncated(self, what: str, need: int, at: int | None = None) -> ModelError:
        where = self.pos if at is None else at
        have = len(self.data) - where
        return ModelError(
            f"{self.source}: file is truncated: expected {what} ({need} bytes) at byte "
            f"{where}, but the file ends after {have} more byte(s) (size {len(self.data)})"
        )

    # primitives -------------------------------------------------------------------

    def take(self, count: int, what: str) -> memoryview:
        if self.pos + count > len(self.data):
            raise self.truncated(what, count)
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def integer(self, what: str, nbytes: int, signed: bool = True) -> int:
        """dlib's variable-length integer (``ser_helper::unpack_int``)."""
        start = self.pos
        control = self.take(1, what)[0]
        if signed:
            negative = bool(control & 0x80)
            size = control & 0x0F
        else:
            negative = False
            size = control & 0x8F
        if size > nbytes:
            raise self.fail(
                f"{what} (an integer of at most {nbytes} bytes)",
                f"control byte 0x{control:02x}",
                at=start,
            )
        raw = self.take(size, what)
        value = int.from_bytes(raw, "little", signed=False)
        return -value if negative else value

    def boolean(self, what: str) -> bool:
        start = self.pos
        byte = self.take(1, what)[0]
        if byte not in (0x30, 0x31):
            raise self.fail(f"{what} (a bool: '0' or '1')", f"byte 0x{byte:02x}", at=start)
        return byte == 0x31

    def real(self, what: str) -> float:
        """dlib's ``float_details`` encoding (mantissa, then exponent)."""
        start = self.pos
        if self.pos >= len(self.data):
            raise self.truncated(what, 1)
        if self.data[self.pos] & 0x70:
            raise self.fail(
                f"{what} (a binary float_details value)",
                f"byte 0x{self.data[self.pos]:02x} (dlib's pre-2013 ASCII float format, "
                "which this reader does not support)",
                at=start,
            )
        mantissa = self.integer(f"{what} mantissa", _INT64)
        exponent = self.integer(f"{what} exponent", _INT16)
        if exponent == _IS_INF:
            return math.inf
        if exponent == _IS_NINF:
            return -math.inf
        if exponent == _IS_NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def string(self, what: str, max_len: int = 4096) -> str:
        start = self.pos
        length = self.integer(f"{what} length", _ULONG, signed=False)
        if length > max_len:
            raise self.fail(f"{what} (a short string)", f"a length of {length}", at=start)
        raw = bytes(self.take(length, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"{what} (an ASCII string)", f"bytes {raw[:16]!r}", at=start) from None

    def peek_string(self, max_len: int = 64) -> str | None:
        """The string at the cursor if there plausibly is one; the cursor does not move."""
        saved = self.pos
        try:
            control = self.data[self.pos]
            size = control & 0x8F
            if size == 0 or size > _ULONG:
                return None
            length = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
            if not 0 < length <= max_len:
                return None
            start = self.pos + 1 + size
            raw = bytes(self.data[start : start + length])
            if len(raw) != length or not raw.isascii():
                return None
            return raw.decode("ascii")
        except IndexError:
            return None
        finally:
            self.pos = saved

    def expect_version(self, what: str, allowed: tuple[int, ...]) -> int:
        start = self.pos
        version = self.integer(f"{what} version", _INT)
        if version not in allowed:
            raise self.fail(
                f"{what} version {' or '.join(map(str, allowed))}", f"version {version}", at=start
            )
        return version

    # tensors ------------------------------------------------------------------------

    def _dims(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        dims = tuple(self.integer(f"{what} dimension", _LONG) for _ in range(4))
        if any(d < 0 for d in dims) or math.prod(dims) > _MAX_TENSOR_ELEMENTS:
            raise self.fail(f"{what} dimensions", f"{dims}", at=start)
        return dims  # type: ignore[return-value]

    def tensor(self, what: str) -> NDArray[np.float32]:
        """A ``resizable_tensor``; returned with shape ``(n, k, nr, nc)``."""
        version = self.expect_version(f"{what} tensor", (1, 2))
        dims = self._dims(what)
        count = math.prod(dims)
        if version == 2:
            raw = self.take(4 * count, f"{what} tensor data ({count} float32 values)")
            values = np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32)
        else:
            values = np.empty(count, dtype=np.float32)
            for i in range(count):
                values[i] = self.real(f"{what} tensor value {i}")
        return values.reshape(dims)

    def alias_tensor(self, what: str) -> tuple[int, int, int, int]:
        self.expect_version(f"{what} alias_tensor", (1,))
        return self._dims(what)


# --------------------------------------------------------------------------------------
# Layer details


def _read_conv(cur: _Cursor, start: int) -> Conv:
    params = cur.tensor("con_ params").reshape(-1)
    num_filters = cur.integer("con_ num_filters", _LONG)
    nr = cur.integer("con_ nr", _LONG)
    nc = cur.integer("con_ nc", _LONG)
    stride = (cur.integer("con_ stride_y", _INT), cur.integer("con_ stride_x", _INT))
    padding = (cur.integer("con_ padding_y", _INT), cur.integer("con_ padding_x", _INT))
    filt_at = cur.pos
    filt_dims = cur.alias_tensor("con_ filters")
    bias_dims = cur.alias_tensor("con_ biases")
    for name in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
        cur.real(f"con_ {name}_multiplier")
    n, k, rows, cols = filt_dims
    n_filt = n * k * rows * cols
    if (
        n != num_filters
        or (rows, cols) != (nr, nc)
        or math.prod(bias_dims) != num_filters
        or params.size != n_filt + num_filters
        or min(stride) < 1
        or min(padding) < 0
    ):
        raise cur.fail(
            "a con_ layer whose filters, biases and params agree",
            f"num_filters={num_filters} nr={nr} nc={nc} filters={filt_dims} "
            f"biases={bias_dims} params={params.size} stride={stride} padding={padding}",
            at=filt_at,
        )
    filters = params[:n_filt].reshape(n, k, rows, cols)
    bias = params[n_filt:].copy()
    return Conv(start, filters, bias, stride, padding)


def _read_affine(cur: _Cursor, start: int) -> Affine:
    params = cur.tensor("affine_ params").reshape(-1)
    gamma_at = cur.pos
    gamma_dims = cur.alias_tensor("affine_ gamma")
    beta_dims = cur.alias_tensor("affine_ beta")
    mode = cur.integer("affine_ mode", _INT)
    size = math.prod(gamma_dims)
    if gamma_dims != beta_dims or params.size != 2 * size or mode not in (0, 1):
        raise cur.fail(
            "an affine_ layer whose gamma, beta and params agree",
            f"gamma={gamma_dims} beta={beta_dims} params={params.size} mode={mode}",
            at=gamma_at,
        )
    return Affine(start, params[:size].copy(), params[size:].copy(), conv_mode=mode == 0)


def _read_pool(cur: _Cursor, start: int, mode: str) -> Pool:
    name = f"{mode}_pool_"
    size = (cur.integer(f"{name} nr", _LONG), cur.integer(f"{name} nc", _LONG))
    stride = (cur.integer(f"{name} stride_y", _INT), cur.integer(f"{name} stride_x", _INT))
    padding = (cur.integer(f"{name} padding_y", _INT), cur.integer(f"{name} padding_x", _INT))
    if min(size) < 0 or min(stride) < 1 or min(padding) < 0:
        raise cur.fail(
            f"a valid {name} layer", f"size={size} stride={stride} padding={padding}", at=start
        )
    return Pool(start, mode, size, stride, padding)


def _read_fc(cur: _Cursor, start: int) -> FullyConnected:
    num_outputs = cur.integer("fc_ num_outputs", _ULONG, signed=False)
    num_inputs = cur.integer("fc_ num_inputs", _ULONG, signed=False)
    params = cur.tensor("fc_ params").reshape(-1)
    weights_dims = cur.alias_tensor("fc_ weights")
    cur.alias_tensor("fc_ biases")
    mode_at = cur.pos
    bias_mode = cur.integer("fc_ bias_mode", _INT)
    for name in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
        cur.real(f"fc_ {name}_multiplier")
    n_weights = num_inputs * num_outputs
    expected = n_weights + (num_outputs if bias_mode == 0 else 0)
    if bias_mode not in (0, 1) or params.size != expected or math.prod(weights_dims) != n_weights:
        raise cur.fail(
            "an fc_ layer whose weights and params agree",
            f"num_inputs={num_inputs} num_outputs={num_outputs} weights={weights_dims} "
            f"params={params.size} bias_mode={bias_mode}",
            at=mode_at,
        )
    weights = params[:n_weights].reshape(num_inputs, num_outputs)
    bias = params[n_weights:].copy() if bias_mode == 0 else None
    return FullyConnected(start, weights, bias)


_DETAIL_READERS: dict[str, Callable[[_Cursor, int], DlibLayer]] = {
    "con_4": _read_conv,
    "affine_": _read_affine,
    "relu_": lambda cur, start: Relu(start),
    "max_pool_2": lambda cur, start: _read_pool(cur, start, "max"),
    "avg_pool_2": lambda cur, start: _read_pool(cur, start, "avg"),
    "add_prev_": lambda cur, start: AddPrev(start),
    "fc_2": _read_fc,
}


def _read_details(cur: _Cursor) -> DlibLayer:
    start = cur.pos
    name = cur.string("layer type name")
    reader = _DETAIL_READERS.get(name)
    if reader is None:
        raise cur.fail(
            f"a layer type this reader knows ({', '.join(sorted(_DETAIL_READERS))})",
            f"{name!r}",
            at=start,
        )
    return reader(cur, start)


def _read_input(cur: _Cursor) -> InputRGB:
    start = cur.pos
    name = cur.string("input layer type name")
    if name not in ("input_rgb_image_sized", "input_rgb_image"):
        raise cur.fail("input_rgb_image_sized or input_rgb_image", f"{name!r}", at=start)
    avg = (cur.real("avg_red"), cur.real("avg_green"), cur.real("avg_blue"))
    rows = cols = None
    if name == "input_rgb_image_sized":
        rows = cur.integer("input rows", _ULONG, signed=False)
        cols = cur.integer("input cols", _ULONG, signed=False)
    return InputRGB(start, avg, rows, cols)


def _read_loss(cur: _Cursor) -> LossMetric:
    start = cur.pos
    name = cur.string("loss layer type name")
    if name == "loss_metric_":
        return LossMetric(start, 0.1, 0.75)
    if name != "loss_metric_2":
        raise cur.fail("a loss_metric_ loss layer", f"{name!r}", at=start)
    return LossMetric(start, cur.real("loss_metric margin"), cur.real("loss_metric dist_thresh"))


# --------------------------------------------------------------------------------------
# The network


def parse_dlib_net(data: bytes, source: str = "<bytes>") -> DlibNet:
    """Deserialize a dlib ``loss_metric`` network from bytes.

    Args:
        data: The whole file.
        source: Name used in error messages (normally the file path).

    Raises:
        ModelError: The bytes are not a dlib network of the supported layer types,
            or they end early.
    """
    cur = _Cursor(data, source)
    if len(data) < 2:
        raise cur.truncated("the add_loss_layer version", 2, at=0)
    if data[0] != 0x01 or data[1] != 0x01:
        raise cur.fail(
            "dlib's add_loss_layer version 1 (bytes 01 01)", f"bytes {bytes(data[:8]).hex(' ')}"
        )
    cur.expect_version("add_loss_layer", (1,))
    loss = _read_loss(cur)

    # Wrapper versions, top-down, until the add_layer that sits on the input layer.
    wrappers: list[tuple[str, int]] = []
    while True:
        start = cur.pos
        version = cur.integer("layer version", _INT)
        if version == 1:
            wrappers.append(("tag_or_skip", start))
            continue
        if version in (2, 3):
            following = cur.peek_string()
            if following is not None and following.startswith("input"):
                input_version = version
                break
            if version == 2:
                wrappers.append(("add_layer", start))
                continue
        raise cur.fail(
            "a layer version (1 for tag/skip, 2 for add_layer, 2 or 3 above the input layer)",
            f"{version}",
            at=start,
        )

    logger.debug("%s: %d wrapper layers above the input", source, len(wrappers))
    layers: list[DlibLayer] = [_read_input(cur)]
    first = _read_details(cur)
    for what in ("setup_called", "gradient_input_is_stale", "output_disabled"):
        cur.boolean(f"input add_layer {what}")
    for what in ("x_grad", "cached_output", "grad_final"):
        cur.tensor(f"input add_layer {what}")
    if input_version == 3:
        cur.integer("sample_expansion_factor", _UINT, signed=False)
    layers.append(first)

    for kind, start in reversed(wrappers):
        if kind == "tag_or_skip":
            layers.append(TagOrSkip(start))
            continue
        layer = _read_details(cur)
        for what in ("setup_called", "gradient_input_is_stale", "output_disabled"):
            cur.boolean(f"{layer.kind} add_layer {what}")
        for what in ("x_grad", "cached_output", "params_grad"):
            cur.tensor(f"{layer.kind} add_layer {what}")
        layers.append(layer)

    if cur.pos != len(data):
        logger.warning("%s: %d byte(s) after the network were ignored", source, len(data) - cur.pos)
    return DlibNet(source=source, loss=loss, layers=tuple(layers))


def read_dlib_net(path: Path) -> DlibNet:
    """Read a dlib network file.

    Raises:
        ModelError: The file cannot be read, is not dlib's format, or is truncated.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read dlib model: {exc.strerror or exc}") from exc
    return parse_dlib_net(data, str(path))

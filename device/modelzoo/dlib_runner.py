"""Run the converted dlib face encoder: one 150x150 RGB chip in, the 128-d descriptor out.

:class:`DlibResnetTFLite` is what an ``Embedder`` backend wraps: ``run(chip)``
checks the chip (``150x150x3``, ``uint8`` or float RGB in 0..255, exactly what
``dlib.get_face_chip`` returns) and returns dlib's raw, un-normalised descriptor
as float32, matching ``face_recognition_model_v1.compute_face_descriptor``.

:class:`device.vision.dlib_tflite.DlibTFLiteEmbedder` wraps it (after checking the file
against the manifest's sha256) and adds the L2 normalisation and mirror averaging.
It takes a plain path, unlike :class:`device.vision.runtime.ModelRuntime`, so the
fidelity tests and ``facegate bench embed`` can load any build of the encoder; the
interpreter comes from the same place as the runtime's (``ai_edge_litert``, else
``tflite_runtime``). An interpreter is not thread-safe: use one instance per thread.

It runs the int8 build (``dlib-resnet-v1-int8``) too: when the model's input is int8,
each pixel is quantised with the input's scale and zero point (scale 1, zero point
-128: ``pixel - 128``, exact), and a batch runs as one invocation per chip (the int8
graph's zero padding of channels is a constant of batch 1).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from device.errors import ModelError
from device.modelzoo.dlib_resnet import EMBEDDING_DIM, INPUT_SIZE
from device.vision import models as model_manifest
from device.vision.runtime import interpreter_module

logger = logging.getLogger(__name__)

MODEL_ID = "dlib-resnet-v1"
CHIP_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)


def check_chip(chip: NDArray[Any]) -> NDArray[np.float32]:
    """Validate a face chip and return it as a ``(1, 150, 150, 3)`` float32 batch.

    Raises:
        ModelError: Wrong shape, dtype (not uint8 or float), or values outside 0..255.
    """
    if not isinstance(chip, np.ndarray):
        raise ModelError(f"face chip must be a numpy array, got {type(chip).__name__}")
    if chip.shape != CHIP_SHAPE:
        raise ModelError(
            f"face chip must be {INPUT_SIZE}x{INPUT_SIZE}x3 RGB (as dlib.get_face_chip makes "
            f"it), got shape {chip.shape}"
        )
    if chip.dtype == np.uint8:
        return chip.astype(np.float32)[None]
    if not np.issubdtype(chip.dtype, np.floating):
        raise ModelError(f"face chip must be uint8 or float RGB, got dtype {chip.dtype}")
    if not np.isfinite(chip).all() or chip.min() < 0 or chip.max() > 255:
        raise ModelError("face chip values must be finite and within 0..255 (RGB pixels)")
    return chip.astype(np.float32)[None]


def _interpreter_class() -> Any:
    """``Interpreter`` of the installed LiteRT (or tflite_runtime).

    Raises:
        ModelError: Neither is installed.
    """
    return interpreter_module().Interpreter


class DlibResnetTFLite:
    """dlib's face encoder on a LiteRT interpreter (XNNPACK on the CPU).

    Args:
        model_path: The built ``.tflite`` (use :meth:`from_cache` to get it verified).
        num_threads: Interpreter threads.

    Raises:
        ModelError: No interpreter is installed, the file cannot be loaded, or it is not
            a 150x150x3 -> 128 model.
    """

    def __init__(self, model_path: Path, num_threads: int = 2) -> None:
        self.model_path = Path(model_path)
        interpreter_cls = _interpreter_class()
        try:
            interpreter = interpreter_cls(model_path=str(self.model_path), num_threads=num_threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.model_path}: cannot load as a TFLite model: {exc}") from exc
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        in_shape = tuple(int(v) for v in inputs[0]["shape"]) if len(inputs) == 1 else ()
        out_shape = tuple(int(v) for v in outputs[0]["shape"]) if len(outputs) == 1 else ()
        if in_shape != (1, *CHIP_SHAPE) or out_shape != (1, EMBEDDING_DIM):
            raise ModelError(
                f"{self.model_path}: expected a model taking (1, {INPUT_SIZE}, {INPUT_SIZE}, 3) "
                f"and giving (1, {EMBEDDING_DIM}), found {in_shape} -> {out_shape}"
            )
        self._interpreter: Any = interpreter
        self._input = int(inputs[0]["index"])
        self._output = int(outputs[0]["index"])
        self._batch = 1
        self.input_dtype = np.dtype(inputs[0]["dtype"]).name
        scale, zero = inputs[0].get("quantization", (0.0, 0))
        self._quant = (float(scale), int(zero))
        if self.input_dtype not in ("float32", "int8"):
            raise ModelError(
                f"{self.model_path}: input dtype {self.input_dtype} is neither float32 nor int8"
            )
        if self.input_dtype == "int8" and self._quant[0] <= 0:
            raise ModelError(f"{self.model_path}: the int8 input has no quantisation scale")
        logger.debug("loaded %s with %d thread(s)", self.model_path, num_threads)

    @classmethod
    def from_cache(cls, cache_dir: Path | None = None, num_threads: int = 2) -> DlibResnetTFLite:
        """Open the built model from the model cache after checking its pinned sha256.

        Raises:
            ModelError: Not built yet, hash mismatch, or not loadable.
        """
        return cls(model_manifest.verified_path(MODEL_ID, cache_dir), num_threads)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._interpreter is None

    def run(self, chip: NDArray[Any]) -> NDArray[np.float32]:
        """The raw 128-d descriptor of one aligned 150x150 RGB face chip.

        Raises:
            ModelError: The chip is malformed (see :func:`check_chip`) or the runner is
                closed.
        """
        out: NDArray[np.float32] = self.run_batch([chip])[0]
        return out

    def run_batch(self, chips: Sequence[NDArray[Any]]) -> NDArray[np.float32]:
        """Raw descriptors of several chips in one invocation, ``(len(chips), 128)``.

        One invocation of a batch is cheaper than one per chip (XNNPACK's GEMMs get
        more rows): a chip and its mirror image cost about 1.6 single runs, not 2.
        The interpreter is resized when the batch size changes.

        Raises:
            ModelError: No chips, a chip is malformed (see :func:`check_chip`), or the
                runner is closed.
        """
        if self._interpreter is None:
            raise ModelError(f"{self.model_path}: the runner is closed")
        if not chips:
            raise ModelError("no face chips to run")
        batch = np.concatenate([check_chip(chip) for chip in chips])
        if self.input_dtype == "int8":
            return np.stack([self._run_int8(one[None]) for one in batch])
        if batch.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input, [batch.shape[0], *CHIP_SHAPE])
            self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._input, batch)
        self._interpreter.invoke()
        out: NDArray[np.float32] = self._interpreter.get_tensor(self._output).copy()
        return out

    def _run_int8(self, chip: NDArray[np.float32]) -> NDArray[np.float32]:
        scale, zero = self._quant
        q = np.clip(np.round(chip / scale) + zero, -128, 127).astype(np.int8)
        self._interpreter.set_tensor(self._input, q)
        self._interpreter.invoke()
        out: NDArray[np.float32] = self._interpreter.get_tensor(self._output)[0].copy()
        return out

    def fully_delegated(self) -> bool:
        """Whether one delegate (XNNPACK on the CPU) runs the whole graph.

        True when the interpreter has exactly one ``DELEGATE`` node, it produces the
        model's output, and none of its inputs is computed by another operator (so no
        operator fell back to the reference kernels between partitions).

        Raises:
            ModelError: The runner is closed.
        """
        if self._interpreter is None:
            raise ModelError(f"{self.model_path}: the runner is closed")
        ops = self._interpreter._get_ops_details()
        delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
        if len(delegates) != 1:
            return False
        computed = {int(i) for op in ops if op["op_name"] != "DELEGATE" for i in op["outputs"]}
        inputs = {int(i) for i in delegates[0]["inputs"]}
        outputs = {int(i) for i in delegates[0]["outputs"]}
        return self._output in outputs and not (inputs & computed)

    def close(self) -> None:
        """Release the interpreter; idempotent."""
        self._interpreter = None

    def __enter__(self) -> DlibResnetTFLite:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

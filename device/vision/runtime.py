"""The model runtime: a verified ``.tflite`` file in a LiteRT interpreter.

Interpreter: ``ai_edge_litert`` (NumPy 2 safe, XNNPACK on the CPU by default),
falling back to ``tflite_runtime`` when only that is installed (Raspberry Pi images
with Coral's own packages). Every model goes through
:func:`device.vision.models.verified_path` first, so a truncated, corrupted or
swapped file is refused with a :class:`ModelError` before the interpreter sees it;
a file that passes the hash but is still not a model (a mis-edited manifest) gets
a :class:`ModelError` from the interpreter's own complaint, never a crash.

The Edge TPU delegate (``libedgetpu.so.1``) is loaded lazily, only when asked for.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from device.errors import HardwareError, ModelError
from device.vision import models as model_manifest

logger = logging.getLogger(__name__)

#: Shared-library name of the Edge TPU runtime (``libedgetpu1-std`` / ``-max``).
EDGETPU_LIBRARY = "libedgetpu.so.1"

#: What to check when the Edge TPU cannot be opened.
EDGETPU_CHECKLIST = (
    "check that: the Coral is connected (USB: `lsusb` lists 1a6e:089a or 18d1:9302, "
    "use a USB 3 port and a data cable; M.2/PCIe: /dev/apex_0 exists, gasket/apex "
    "driver loaded); the Edge TPU runtime is installed (`libedgetpu1-std` package, "
    f"provides {EDGETPU_LIBRARY}); the service user may open the device (udev rule "
    "installed, user in the `plugdev` group for USB or the `apex` group for PCIe; "
    "log in again after adding it); and the model is compiled for the Edge TPU "
    "(`*_edgetpu.tflite`)"
)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One input or output tensor of a loaded model.

    Attributes:
        name: Tensor name in the model.
        index: Interpreter tensor index.
        shape: Shape, e.g. ``(1, 192, 192, 3)``.
        dtype: NumPy dtype name, e.g. ``"float32"`` or ``"uint8"``.
        scale: Quantisation scale (0.0 when not quantised).
        zero_point: Quantisation zero point.
    """

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @staticmethod
    def from_detail(detail: dict[str, Any]) -> TensorInfo:
        scale, zero = detail.get("quantization", (0.0, 0))
        return TensorInfo(
            name=str(detail["name"]),
            index=int(detail["index"]),
            shape=tuple(int(v) for v in detail["shape"]),
            dtype=np.dtype(detail["dtype"]).name,
            scale=float(scale),
            zero_point=int(zero),
        )


def interpreter_module() -> ModuleType:
    """The module providing ``Interpreter`` and ``load_delegate``.

    Raises:
        ModelError: Neither ``ai_edge_litert`` nor ``tflite_runtime`` is installed.
    """
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ModelError(
        "no TFLite interpreter installed: `pip install ai-edge-litert` "
        "(or, on Coral images, the `python3-tflite-runtime` package)"
    )


def load_edgetpu_delegate(device: str | None = None) -> Any:
    """Open the Edge TPU delegate.

    Args:
        device: Optional device selector (``"usb"``, ``"pci"``, ``"usb:0"``…).

    Raises:
        HardwareError: The runtime library is missing or no Edge TPU answers.
    """
    module = interpreter_module()
    options = {"device": device} if device else {}
    try:
        # Probe the library first: LiteRT's Delegate prints a spurious traceback
        # from its destructor when the library cannot be opened.
        ctypes.CDLL(EDGETPU_LIBRARY)
    except OSError as exc:
        raise HardwareError(
            f"cannot open the Edge TPU: the runtime library is missing ({exc}); "
            f"{EDGETPU_CHECKLIST}"
        ) from exc
    try:
        return module.load_delegate(EDGETPU_LIBRARY, options)
    except (ValueError, OSError, RuntimeError) as exc:
        raise HardwareError(f"cannot open the Edge TPU ({exc}); {EDGETPU_CHECKLIST}") from exc


def verified_model_path(
    model_id: str,
    cache_dir: Path | None = None,
    manifest: dict[str, model_manifest.ModelSpec] | None = None,
) -> Path:
    """Resolve and hash-check a model, refusing entries without a pinned sha256
    (the manifest's, or for a ``url`` model the installer's: see ``models.installer_pin``).

    Raises:
        ModelError: Unknown id, no pin, file missing, or hash mismatch.
    """
    return model_manifest.verified_path(model_id, cache_dir=cache_dir, manifest=manifest)


_XNNPACK_BANNER = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@contextlib.contextmanager
def _native_stderr_filtered(drop: bytes) -> Iterator[None]:
    """Hold back what native code writes to fd 2, then pass it on without ``drop`` lines.

    LiteRT prints an INFO banner straight to the C stderr each time an interpreter
    applies XNNPACK; on a unit that is journal noise and in the CLI it breaks the
    output. Nothing else is swallowed: whatever else reached fd 2 meanwhile (another
    thread's log line included) is written back when the block ends.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True)
                    if line.rstrip(b"\r\n") != drop]
            if kept:
                os.write(2, b"".join(kept))


class ModelRuntime:
    """A loaded model, ready to run. A context manager; ``close()`` is idempotent.

    Args:
        model_id: Manifest id; the file is verified before loading.
        num_threads: CPU threads for the interpreter (XNNPACK).
        edgetpu: Run on the Edge TPU delegate.
        edgetpu_device: Edge TPU selector (``"usb"``, ``"pci"``…), default any.
        cache_dir: Model cache directory (default :func:`models.default_cache_dir`).
        manifest: Parsed manifest (default the shipped one).

    Raises:
        ModelError: The file is unverifiable, corrupted, or not a valid model.
        HardwareError: ``edgetpu`` was asked for and the Edge TPU is unusable.
    """

    def __init__(
        self,
        model_id: str,
        *,
        num_threads: int = 2,
        edgetpu: bool = False,
        edgetpu_device: str | None = None,
        cache_dir: Path | None = None,
        manifest: dict[str, model_manifest.ModelSpec] | None = None,
    ) -> None:
        if num_threads < 1:
            raise ModelError(f"model {model_id}: num_threads must be >= 1, got {num_threads}")
        self.model_id = model_id
        module = interpreter_module()
        # The device first: without it, nothing else matters to the operator.
        delegates = [load_edgetpu_delegate(edgetpu_device)] if edgetpu else []
        self.path = verified_model_path(model_id, cache_dir=cache_dir, manifest=manifest)
        if edgetpu and not _compiled_for_edgetpu(self.path):
            logger.warning(
                "model %s (%s) is not compiled for the Edge TPU; it will run on the CPU",
                model_id, self.path,
            )
        try:
            interpreter = module.Interpreter(
                model_path=str(self.path),
                num_threads=num_threads,
                experimental_delegates=delegates or None,
            )
            with _native_stderr_filtered(_XNNPACK_BANNER):
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError, OSError) as exc:
            hint = (
                " (it needs the Edge TPU: it contains an edgetpu-custom-op)"
                if "edgetpu" in str(exc).lower() else ""
            )
            raise ModelError(
                f"model {model_id}: {self.path} passed its hash check but the interpreter "
                f"cannot load it{hint}: {exc}"
            ) from exc
        self._interpreter: Any = interpreter
        self.inputs: tuple[TensorInfo, ...] = tuple(
            TensorInfo.from_detail(d) for d in interpreter.get_input_details()
        )
        self.outputs: tuple[TensorInfo, ...] = tuple(
            TensorInfo.from_detail(d) for d in interpreter.get_output_details()
        )
        self.num_threads = num_threads
        self.edgetpu = edgetpu
        logger.info(
            "loaded model %s from %s (threads=%d, edgetpu=%s, inputs=%s, outputs=%s)",
            model_id, self.path, num_threads, edgetpu,
            [i.shape for i in self.inputs], [o.shape for o in self.outputs],
        )

    @property
    def closed(self) -> bool:
        return self._interpreter is None

    def _live(self) -> Any:
        if self._interpreter is None:
            raise ModelError(f"model {self.model_id}: runtime is closed")
        return self._interpreter

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Set the inputs (in model order), invoke, return copies of every output.

        Raises:
            ModelError: Wrong number, shape or dtype of inputs, the runtime is
                closed, or the interpreter failed.
        """
        interpreter = self._live()
        if len(inputs) != len(self.inputs):
            raise ModelError(
                f"model {self.model_id}: expected {len(self.inputs)} inputs, got {len(inputs)}"
            )
        try:
            for info, array in zip(self.inputs, inputs, strict=True):
                if tuple(array.shape) != info.shape or array.dtype.name != info.dtype:
                    raise ModelError(
                        f"model {self.model_id}: input {info.name} wants {info.dtype} "
                        f"{info.shape}, got {array.dtype.name} {tuple(array.shape)}"
                    )
                interpreter.set_tensor(info.index, array)
            interpreter.invoke()
            return [np.array(interpreter.get_tensor(o.index)) for o in self.outputs]
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"model {self.model_id}: inference failed: {exc}") from exc

    def close(self) -> None:
        """Release the interpreter (and its delegate). Safe to call twice."""
        if self._interpreter is not None:
            self._interpreter = None
            logger.debug("closed model %s", self.model_id)

    def __enter__(self) -> ModelRuntime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _compiled_for_edgetpu(path: Path) -> bool:
    """Whether a model file contains the Edge TPU custom op (compiled models do)."""
    try:
        return b"edgetpu-custom-op" in path.read_bytes()
    except OSError:
        return False

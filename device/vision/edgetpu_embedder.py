"""An int8 face embedder compiled for the Coral Edge TPU.

Its input size, normalisation (``(pixel - mean) / std``, then quantised) and
alignment template come from its ``models/manifest.toml`` entry. Construction fails
with a :class:`~device.errors.ModelError` naming the manifest entry or file to fix,
or a :class:`~device.errors.HardwareError` naming what to check on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from device.config import Section
from device.errors import ModelError
from device.types import Embedding, FaceChip, FloatArray, Image
from device.vision import models as model_manifest
from device.vision.embed_support import (
    ChipEmbedder,
    check_chip_size,
    input_size_of,
    l2_normalise,
    template_of,
)


class EdgeTpuEmbedderConfig(Section):
    """An int8 face embedder compiled for the Coral Edge TPU."""

    type: Literal["edgetpu"] = Field("edgetpu", description="Embedder backend.")
    model: str = Field(
        ...,
        description="Manifest id of the compiled model; its entry declares edgetpu = true, "
        "input = {width, height, mean, std} and the alignment template.",
    )
    device: str | None = Field(
        None, description="Edge TPU to use: 'usb', 'pci', 'usb:0'...; default the first found."
    )
    flip_average: bool = Field(
        False, description="Average the embeddings of the chip and its mirror image."
    )


@dataclass(frozen=True, slots=True)
class InputNormalisation:
    """How chip pixels become the model's input: ``(pixel - mean) / std``, then quantised.

    Attributes:
        mean: Subtracted from each 0..255 pixel.
        std: Divides the result.
    """

    mean: float = 0.0
    std: float = 1.0


def quantise(
    values: npt.NDArray[np.float32], scale: float, zero_point: int, dtype: str
) -> npt.NDArray[Any]:
    """Float values to a quantised tensor (``round(v / scale) + zero_point``, clipped).

    Raises:
        ModelError: ``dtype`` is not an integer type or ``scale`` is not positive.
    """
    if dtype not in ("int8", "uint8"):
        raise ModelError(f"expected an int8/uint8 model input, got {dtype}")
    if scale <= 0:
        raise ModelError(f"the model input has no quantisation scale ({scale})")
    info = np.iinfo(np.dtype(dtype))
    q = np.round(values / scale) + zero_point
    out: npt.NDArray[Any] = np.clip(q, info.min, info.max).astype(dtype)
    return out


def dequantise(values: npt.NDArray[Any], scale: float, zero_point: int) -> FloatArray:
    """A quantised output tensor back to float (unquantised outputs pass through)."""
    if scale == 0.0:
        return np.asarray(values, dtype=np.float32)
    return ((np.asarray(values, dtype=np.float32) - zero_point) * scale).astype(np.float32)


class EdgeTpuEmbedder(ChipEmbedder):
    """An embedder on the Edge TPU. A context manager; ``close()`` is idempotent.

    Args:
        config: Backend configuration.
        cache_dir: Model cache (default :func:`~device.vision.models.default_cache_dir`).
        manifest: Parsed manifest (default the shipped one).

    Raises:
        ModelError: The manifest has no such entry, it is not an Edge TPU embedder or
            lacks its input spec or template, the model file is missing or fails its
            hash check, or its tensors do not match the declared input size.
        HardwareError: No Edge TPU answers (the message lists what to check).
    """

    def __init__(
        self,
        config: EdgeTpuEmbedderConfig,
        *,
        cache_dir: Path | None = None,
        manifest: dict[str, model_manifest.ModelSpec] | None = None,
    ) -> None:
        from device.vision.runtime import ModelRuntime

        self.config = config
        specs = manifest if manifest is not None else model_manifest.load_manifest()
        spec = specs.get(config.model)
        if spec is None:
            raise ModelError(
                f"Edge TPU embedder: model {config.model!r} is not in models/manifest.toml; "
                "add a [models.<id>] entry with kind = \"embedder\", edgetpu = true, "
                "source/path/sha256 of the *_edgetpu.tflite file, input = { width, height, "
                "mean, std } and a template (see dlib-resnet-v1's). Known models: "
                + ", ".join(sorted(specs))
            )
        if spec.kind != "embedder" or not spec.extra.get("edgetpu", False):
            raise ModelError(
                f"Edge TPU embedder: model {spec.id} is not declared as an Edge TPU embedder "
                f"(kind = {spec.kind!r}, edgetpu = {spec.extra.get('edgetpu', False)!r})"
            )
        self._model_id = spec.id
        self._input_size = input_size_of(spec)
        self._template = template_of(spec)
        raw_input = spec.extra["input"]
        self._norm = InputNormalisation(
            mean=float(raw_input.get("mean", 0.0)), std=float(raw_input.get("std", 1.0))
        )
        self._runtime = ModelRuntime(
            spec.id, edgetpu=True, edgetpu_device=config.device, cache_dir=cache_dir,
            manifest=specs,
        )
        width, height = self._input_size
        info = self._runtime.inputs[0]
        if len(self._runtime.inputs) != 1 or info.shape != (1, height, width, 3) or len(
            self._runtime.outputs
        ) != 1:
            shapes = [i.shape for i in self._runtime.inputs]
            self._runtime.close()
            raise ModelError(
                f"model {spec.id}: inputs {shapes} do not match the manifest's "
                f"{width}x{height} RGB input, or it has more than one output"
            )

    def _run(self, pixels: Image) -> FloatArray:
        info = self._runtime.inputs[0]
        values = (pixels.astype(np.float32) - self._norm.mean) / self._norm.std
        if info.dtype in ("int8", "uint8"):
            tensor = quantise(values, info.scale, info.zero_point, info.dtype)
        else:
            tensor = values.astype(info.dtype)
        out = self._runtime.run(tensor[None])[0]
        output = self._runtime.outputs[0]
        return dequantise(out, output.scale, output.zero_point).ravel()

    def embed(self, chips: Sequence[FaceChip]) -> list[Embedding]:
        """L2-normalised embeddings, one per chip.

        Raises:
            ModelError: A chip is not of the model's input size, or inference failed.
        """
        out = []
        for chip in chips:
            check_chip_size(chip, self._input_size, self._model_id)
            vector = l2_normalise(self._run(chip.image))
            if self.config.flip_average:
                mirrored = l2_normalise(self._run(np.ascontiguousarray(chip.image[:, ::-1])))
                vector = l2_normalise(vector + mirrored)
            out.append(Embedding(vector=vector, model_id=self._model_id))
        return out

    def close(self) -> None:
        """Release the interpreter and the Edge TPU. Safe to call twice."""
        self._runtime.close()


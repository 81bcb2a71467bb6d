"""dlib's face ResNet as TFLite on the CPU (LiteRT + XNNPACK): the default embedder.

The model is ``dlib-resnet-v1``, converted from dlib's own weights by ``facegate
models build`` (:mod:`device.modelzoo`); it takes 150×150 RGB chips aligned to dlib's
template. By default it adds the descriptor of the chip's mirror image
(``flip_average``): the two chips go through the model as one batch of two, and the
sum is less sensitive to which way the face is turned (``facegate eval pairs`` and
the README give what it earns).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
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

#: The default embedder's manifest id.
DLIB_MODEL_ID = "dlib-resnet-v1"


class DlibTFLiteEmbedderConfig(Section):
    """dlib's face ResNet as TFLite on the CPU (LiteRT + XNNPACK)."""

    type: Literal["dlib_tflite"] = Field("dlib_tflite", description="Embedder backend.")
    model: str = Field(
        DLIB_MODEL_ID,
        description="Manifest id of the built model (`facegate models build` makes it).",
    )
    num_threads: int = Field(2, ge=1, le=16, description="CPU threads for the interpreter.")
    flip_average: bool = Field(
        True,
        description="Add the descriptor of the chip's mirror image (two inferences per "
        "face, in one batch); more robust to head turn.",
    )
    border: Literal["constant", "replicate"] | None = Field(
        None,
        description="Fill for chip pixels outside the image; default the template's "
        "(models/manifest.toml).",
    )


class DlibTFLiteEmbedder(ChipEmbedder):
    """dlib's 128-d face descriptor, L2-normalised. A context manager.

    Args:
        config: Backend configuration.
        cache_dir: Model cache (default :func:`~device.vision.models.default_cache_dir`).
        manifest: Parsed manifest (default the shipped one).

    Raises:
        ModelError: The manifest entry or its template is missing or malformed, the
            model is not built, fails its hash check or is not dlib's encoder.
    """

    #: The backend's ``type`` and the input its model must take (float32 or int8).
    BACKEND = "dlib_tflite"
    INPUT_DTYPE = "float32"

    def __init__(
        self,
        config: DlibTFLiteEmbedderConfig | DlibInt8EmbedderConfig | None = None,
        *,
        cache_dir: Path | None = None,
        manifest: dict[str, model_manifest.ModelSpec] | None = None,
    ) -> None:
        from device.modelzoo.dlib_runner import CHIP_SHAPE, DlibResnetTFLite

        self.config = config or self._default_config()
        spec = model_manifest.get_spec(self.config.model, manifest)
        self._model_id = spec.id
        template = template_of(spec)
        if self.config.border is not None:
            template = replace(template, border=self.config.border)
        self._template = template
        self._input_size = input_size_of(spec)
        if self._input_size != (CHIP_SHAPE[1], CHIP_SHAPE[0]):
            raise ModelError(
                f"model {spec.id}: the {self.BACKEND} backend runs dlib's 150x150 encoder, the "
                f"manifest declares {self._input_size}"
            )
        path = model_manifest.verified_path(spec.id, cache_dir=cache_dir, manifest=manifest)
        self._runner = DlibResnetTFLite(path, num_threads=self.config.num_threads)
        if self._runner.input_dtype != self.INPUT_DTYPE:
            self._runner.close()
            other = "dlib_int8" if self._runner.input_dtype == "int8" else "dlib_tflite"
            raise ModelError(
                f"model {spec.id} ({path}) takes {self._runner.input_dtype} input, not "
                f"{self.INPUT_DTYPE}; use the {other} backend for it"
            )

    @staticmethod
    def _default_config() -> DlibTFLiteEmbedderConfig | DlibInt8EmbedderConfig:
        return DlibTFLiteEmbedderConfig()

    def descriptor(self, chip: FaceChip) -> FloatArray:
        """The raw (un-normalised) descriptor, flip-averaged if configured.

        Raises:
            ModelError: Wrong chip size, or the embedder is closed.
        """
        check_chip_size(chip, self._input_size, self._model_id)
        if not self.config.flip_average:
            single: FloatArray = self._runner.run(chip.image)
            return single
        both = self._runner.run_batch([chip.image, np.ascontiguousarray(chip.image[:, ::-1])])
        summed: FloatArray = both.astype(np.float64).sum(axis=0).astype(np.float32)
        return summed

    def close(self) -> None:
        """Release the interpreter. Safe to call twice."""
        self._runner.close()



#: The int8 encoder's manifest id.
DLIB_INT8_MODEL_ID = "dlib-resnet-v1-int8"


class DlibInt8EmbedderConfig(Section):
    """dlib's face ResNet quantised to int8, on the CPU (LiteRT + XNNPACK)."""

    type: Literal["dlib_int8"] = Field("dlib_int8", description="Embedder backend.")
    model: str = Field(
        DLIB_INT8_MODEL_ID,
        description="Manifest id of the built int8 model (`facegate models build` makes it).",
    )
    num_threads: int = Field(2, ge=1, le=16, description="CPU threads for the interpreter.")
    flip_average: bool = Field(
        True, description="Add the descriptor of the chip's mirror image (two inferences)."
    )
    border: Literal["constant", "replicate"] | None = Field(
        None,
        description="Fill for chip pixels outside the image; default the template's "
        "(models/manifest.toml).",
    )


class DlibInt8Embedder(DlibTFLiteEmbedder):
    """dlib's 128-d descriptor from the int8 model, L2-normalised. A context manager.

    The same chips, template and flip averaging as :class:`DlibTFLiteEmbedder`; the
    model takes int8 input (the normalisation is folded into its quantisation).

    Raises:
        ModelError: As :class:`DlibTFLiteEmbedder`, or the model does not take int8.
    """

    BACKEND = "dlib_int8"
    INPUT_DTYPE = "int8"

    @staticmethod
    def _default_config() -> DlibTFLiteEmbedderConfig | DlibInt8EmbedderConfig:
        return DlibInt8EmbedderConfig()

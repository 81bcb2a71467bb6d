"""``dlib_int8``: dlib's face ResNet quantised to int8, on the CPU (LiteRT + XNNPACK).

The model is ``dlib-resnet-v1-int8`` (built by ``facegate models build`` from the same
dlib weights as the float encoder, with activation ranges measured on aligned chips
that are not the evaluation data): int8 weights and activations, the pixels fed as
``pixel - 128`` (exact), the descriptor dequantised to float32 and L2-normalised
here. Same chips, template and mirror averaging as ``dlib_tflite``; each chip (and
its mirror) is one invocation. The same file, compiled by ``edgetpu_compiler``, is
what the ``edgetpu`` backend runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
from pydantic import Field

from device.config import Section
from device.errors import ModelError
from device.types import Embedding, FaceChip, FloatArray
from device.vision import models as model_manifest
from device.vision.align import AlignTemplate
from device.vision.embed_support import check_chip_size, l2_normalise

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


class DlibInt8Embedder:
    """dlib's 128-d descriptor from the int8 model, L2-normalised. A context manager.

    Args:
        config: Backend configuration.
        cache_dir: Model cache (default :func:`~device.vision.models.default_cache_dir`).
        manifest: Parsed manifest (default the shipped one).

    Raises:
        ModelError: The manifest entry or template is missing or malformed, the model is
            not built, fails its hash check, or does not take int8 150x150 chips.
    """

    def __init__(
        self,
        config: DlibInt8EmbedderConfig | None = None,
        *,
        cache_dir: Path | None = None,
        manifest: dict[str, model_manifest.ModelSpec] | None = None,
    ) -> None:
        from device.modelzoo.dlib_runner import CHIP_SHAPE, DlibResnetTFLite

        self.config = config or DlibInt8EmbedderConfig()
        spec = model_manifest.get_spec(self.config.model, manifest)
        self._model_id = spec.id
        raw = spec.extra.get("input")
        if not isinstance(raw, Mapping) or "width" not in raw or "height" not in raw:
            raise ModelError(f"model {spec.id}: models/manifest.toml declares no input size")
        self._input_size = (int(raw["width"]), int(raw["height"]))
        if self._input_size != (CHIP_SHAPE[1], CHIP_SHAPE[0]):
            raise ModelError(
                f"model {spec.id}: the dlib_int8 backend runs dlib's 150x150 encoder, the "
                f"manifest declares {self._input_size}"
            )
        template = AlignTemplate.from_manifest(spec.id, spec.extra)
        if template.size != self._input_size:
            raise ModelError(f"model {spec.id}: template size {template.size} is not the input's")
        if self.config.border is not None:
            template = replace(template, border=self.config.border)
        self._template = template
        path = model_manifest.verified_path(spec.id, cache_dir=cache_dir, manifest=manifest)
        self._runner = DlibResnetTFLite(path, num_threads=self.config.num_threads)
        if self._runner.input_dtype != "int8":
            self._runner.close()
            raise ModelError(
                f"model {spec.id} ({path}) takes {self._runner.input_dtype} input, not int8; "
                "use the dlib_tflite backend for the float encoder"
            )

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @property
    def template(self) -> AlignTemplate:
        return self._template

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

    def embed(self, chips: Sequence[FaceChip]) -> list[Embedding]:
        """L2-normalised embeddings, one per chip.

        Raises:
            ModelError: A chip is not 150x150 RGB uint8, or the embedder is closed.
        """
        return [
            Embedding(vector=l2_normalise(self.descriptor(chip)), model_id=self._model_id)
            for chip in chips
        ]

    def close(self) -> None:
        """Release the interpreter. Safe to call twice."""
        self._runner.close()

    def __enter__(self) -> DlibInt8Embedder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

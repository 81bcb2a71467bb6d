"""dlib's face ResNet as TFLite on the CPU (LiteRT + XNNPACK): the default embedder.

The model is ``dlib-resnet-v1``, converted from dlib's own weights by ``facegate
models build`` (:mod:`device.modelzoo`); it takes 150×150 RGB chips aligned to dlib's
template. By default it adds the descriptor of the chip's mirror image
(``flip_average``): the two chips go through the model as one batch of two, and the
sum is less sensitive to which way the face is turned (``facegate eval pairs`` and
the README give what it earns).
"""

from __future__ import annotations

from collections.abc import Sequence
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
from device.vision.embed_support import check_chip_size, input_size_of, l2_normalise, template_of

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


class DlibTFLiteEmbedder:
    """dlib's 128-d face descriptor, L2-normalised. A context manager.

    Args:
        config: Backend configuration.
        cache_dir: Model cache (default :func:`~device.vision.models.default_cache_dir`).
        manifest: Parsed manifest (default the shipped one).

    Raises:
        ModelError: The manifest entry or its template is missing or malformed, the
            model is not built, fails its hash check or is not dlib's encoder.
    """

    def __init__(
        self,
        config: DlibTFLiteEmbedderConfig | None = None,
        *,
        cache_dir: Path | None = None,
        manifest: dict[str, model_manifest.ModelSpec] | None = None,
    ) -> None:
        from device.modelzoo.dlib_runner import CHIP_SHAPE, DlibResnetTFLite

        self.config = config or DlibTFLiteEmbedderConfig()
        spec = model_manifest.get_spec(self.config.model, manifest)
        self._model_id = spec.id
        template = template_of(spec)
        if self.config.border is not None:
            template = replace(template, border=self.config.border)
        self._template = template
        self._input_size = input_size_of(spec)
        if self._input_size != (CHIP_SHAPE[1], CHIP_SHAPE[0]):
            raise ModelError(
                f"model {spec.id}: the dlib_tflite backend runs dlib's 150x150 encoder, the "
                f"manifest declares {self._input_size}"
            )
        path = model_manifest.verified_path(spec.id, cache_dir=cache_dir, manifest=manifest)
        self._runner = DlibResnetTFLite(path, num_threads=self.config.num_threads)

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

    def __enter__(self) -> DlibTFLiteEmbedder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""What every embedder backend shares: checking chips, normalising what the model
returns, and reading a model's input size and alignment template from its manifest entry.

The backends import these from here rather than from :mod:`device.vision.embed`,
which imports the backends for its registry (and re-exports the two public checks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Self

import numpy as np
import numpy.typing as npt

from device.errors import ModelError
from device.types import Embedding, FaceChip, FloatArray
from device.vision import models as model_manifest
from device.vision.align import AlignTemplate


def l2_normalise(vector: npt.ArrayLike) -> FloatArray:
    """``vector / ||vector||`` as float32.

    Raises:
        ModelError: The vector is zero or not finite (the model produced garbage).
    """
    v = np.asarray(vector, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise ModelError(f"the embedder returned a {'zero' if norm == 0 else 'non-finite'} vector")
    return (v / norm).astype(np.float32)


def check_chip_size(chip: FaceChip, size: tuple[int, int], model_id: str) -> None:
    """Refuse a chip whose image is not an RGB ``uint8`` array of ``size``.

    Raises:
        ModelError: Wrong shape or dtype; the message names both sizes.
    """
    image = chip.image
    width, height = size
    if not isinstance(image, np.ndarray) or image.shape != (height, width, 3):
        got = image.shape if isinstance(image, np.ndarray) else type(image).__name__
        raise ModelError(
            f"model {model_id} takes {width}x{height} RGB face chips, got a chip of shape "
            f"{got}; align faces with the model's template (device.vision.align.align)"
        )
    if image.dtype != np.uint8:
        raise ModelError(f"model {model_id}: face chips must be uint8 RGB, got {image.dtype}")


def template_of(spec: model_manifest.ModelSpec) -> AlignTemplate:
    """The alignment template of a manifest entry, checked against its input size.

    Raises:
        ModelError: No template, or one of another size than the input.
    """
    template = AlignTemplate.from_manifest(spec.id, spec.extra)
    width, height = input_size_of(spec)
    if template.size != (width, height):
        raise ModelError(
            f"model {spec.id}: the template's size {template.size} is not the model's input "
            f"size {(width, height)} in models/manifest.toml"
        )
    return template


def input_size_of(spec: model_manifest.ModelSpec) -> tuple[int, int]:
    """The chip ``(width, height)`` a manifest entry declares.

    Raises:
        ModelError: The entry declares no ``input = { width, height }``.
    """
    raw = spec.extra.get("input")
    if not isinstance(raw, Mapping) or "width" not in raw or "height" not in raw:
        raise ModelError(
            f"model {spec.id}: models/manifest.toml declares no input = {{ width, height, ... }}"
        )
    return int(raw["width"]), int(raw["height"])


class ChipEmbedder:
    """What every embedder backend shares: its identity, the embed loop, the lifecycle.

    A backend sets ``_model_id``, ``_input_size`` and ``_template`` and implements
    :meth:`descriptor` (the raw output for one chip) and :meth:`close`; :meth:`embed`
    L2-normalises each descriptor (a backend may override it).
    """

    _model_id: str
    _input_size: tuple[int, int]
    _template: AlignTemplate

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
        """The raw (un-normalised) descriptor of one chip."""
        raise NotImplementedError

    def embed(self, chips: Sequence[FaceChip]) -> list[Embedding]:
        """L2-normalised embeddings, one per chip.

        Raises:
            ModelError: A chip is not of the model's input size, or the embedder is closed.
        """
        return [Embedding(vector=l2_normalise(self.descriptor(chip)), model_id=self._model_id)
                for chip in chips]

    def close(self) -> None:
        """Release the model. Safe to call twice."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

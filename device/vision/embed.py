"""Face embedders: the Protocol every backend meets, and their registry.

A backend is one module with its pydantic config (``type`` literal) next to its
code, Frigate-style, as the detectors are: :mod:`device.vision.dlib_tflite`
(``dlib_tflite``, the default: dlib's face ResNet on the CPU) and
:mod:`device.vision.edgetpu_embedder` (``edgetpu``: an int8 model on the Coral Edge
TPU), :mod:`device.vision.mobilefacenet` (``mobilefacenet``: MobileFaceNet on the
CPU). :data:`EMBEDDERS` maps the ``type`` to the class and :func:`create_embedder`
builds one from a config. Embedding still photos (detect, pick, align, embed) is
:func:`device.vision.stills.embed_faces`.

Every embedder returns L2-normalised vectors; the similarity of two faces is the dot
product of their embeddings (cosine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import Field

from device.types import Embedding, FaceChip
from device.vision import models as model_manifest
from device.vision.align import AlignTemplate
from device.vision.dlib_int8 import DlibInt8Embedder, DlibInt8EmbedderConfig
from device.vision.dlib_tflite import DlibTFLiteEmbedder, DlibTFLiteEmbedderConfig
from device.vision.edgetpu_embedder import EdgeTpuEmbedder, EdgeTpuEmbedderConfig
from device.vision.embed_support import check_chip_size, l2_normalise
from device.vision.mobilefacenet import MobileFaceNetEmbedder, MobileFaceNetEmbedderConfig

__all__ = [
    "EMBEDDERS",
    "Embedder",
    "EmbedderConfig",
    "check_chip_size",
    "create_embedder",
    "l2_normalise",
]


class Embedder(Protocol):
    """Turns aligned face chips into L2-normalised embeddings."""

    @property
    def model_id(self) -> str:
        """Manifest id of the model (recorded in every :class:`Embedding`)."""
        ...

    @property
    def input_size(self) -> tuple[int, int]:
        """Chip ``(width, height)`` the model takes."""
        ...

    @property
    def template(self) -> AlignTemplate:
        """Where the detector's keypoints go in this model's chips."""
        ...

    def embed(self, chips: Sequence[FaceChip]) -> list[Embedding]:
        """One embedding per chip, in order.

        Raises:
            ModelError: A chip is not of :attr:`input_size`, or inference failed.
        """
        ...

    def close(self) -> None:
        """Release the model (and device). Safe to call twice."""
        ...


#: Any embedder backend's configuration, chosen by its ``type``.
EmbedderConfig = Annotated[
    DlibTFLiteEmbedderConfig
    | EdgeTpuEmbedderConfig
    | DlibInt8EmbedderConfig
    | MobileFaceNetEmbedderConfig,
    Field(discriminator="type"),
]

#: ``type`` → embedder class. Each class takes ``(config, *, cache_dir, manifest)``.
EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "dlib_tflite": DlibTFLiteEmbedder,
    "edgetpu": EdgeTpuEmbedder,
    "dlib_int8": DlibInt8Embedder,
    "mobilefacenet": MobileFaceNetEmbedder,
}


def create_embedder(
    config: DlibTFLiteEmbedderConfig
    | EdgeTpuEmbedderConfig
    | DlibInt8EmbedderConfig
    | MobileFaceNetEmbedderConfig,
    *,
    cache_dir: Path | None = None,
    manifest: dict[str, model_manifest.ModelSpec] | None = None,
) -> Embedder:
    """Build the embedder a config describes.

    Raises:
        ModelError: The model or its manifest entry is missing or unusable.
        HardwareError: The backend's device is absent.
    """
    factory: Callable[..., Any] = EMBEDDERS[config.type]
    embedder: Embedder = factory(config, cache_dir=cache_dir, manifest=manifest)
    return embedder

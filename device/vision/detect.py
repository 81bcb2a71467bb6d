"""Face detectors: the Protocol every backend meets, their configs, the registry.

A backend is one module with its pydantic config (``type`` literal) next to its
code, Frigate-style; :data:`DETECTORS` maps the ``type`` to the class and
:func:`create_detector` builds one from a config. Tiling for large frames lives in
:mod:`device.vision.tiling` and is a BlazeFace option (the Edge TPU SSD runs its
NMS inside the model, so its candidates cannot be merged across tiles the same way).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import Field

from device.types import Detection, Image
from device.vision import models as model_manifest
from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
from device.vision.coral_ssd import CoralSsdConfig, CoralSsdDetector
from device.vision.timing import StageTimer


class Detector(Protocol):
    """Finds faces in one RGB frame."""

    def detect(self, image: Image, timer: StageTimer | None = None) -> list[Detection]:
        """Faces in ``image``, best first, boxes and keypoints in frame pixels."""
        ...

    def close(self) -> None:
        """Release the model (and device). Safe to call twice."""
        ...


#: Any detector backend's configuration, chosen by its ``type``.
DetectorConfig = Annotated[BlazeFaceConfig | CoralSsdConfig, Field(discriminator="type")]

#: ``type`` → detector class. Each class takes ``(config, *, cache_dir, manifest)``.
DETECTORS: dict[str, Callable[..., Detector]] = {
    "blazeface": BlazeFaceDetector,
    "coral-ssd": CoralSsdDetector,
}


def create_detector(
    config: BlazeFaceConfig | CoralSsdConfig,
    *,
    cache_dir: Path | None = None,
    manifest: dict[str, model_manifest.ModelSpec] | None = None,
) -> Detector:
    """Build the detector a config describes.

    Raises:
        ModelError: The model cannot be loaded.
        HardwareError: The backend's device is absent.
    """
    factory: Callable[..., Any] = DETECTORS[config.type]
    detector: Detector = factory(config, cache_dir=cache_dir, manifest=manifest)
    return detector

"""Face embedders: the Protocol every backend meets, their configs, the registry, and
:func:`embed_faces` (detect → pick → align → embed) for still images.

Backends, Frigate-style, each with its pydantic config (``type`` literal) next to its
code and an explicit registry (:data:`EMBEDDERS`):

* ``dlib_tflite`` (default): dlib's face ResNet converted to TFLite
  (``dlib-resnet-v1``, built by ``facegate models build``), 150×150 RGB chips, on
  the CPU with XNNPACK. By default it adds the descriptor of the chip's mirror image
  (``flip_average``; the two chips go through the model as one batch of two, about
  1.7 times the cost of one). Measured on LFW (5,125 images, every pair): TAR at FMR
  1e-4 0.788 → 0.834, at 1e-3 0.919 → 0.940; on the 2,791 listed pairs TAR@1e-3
  0.910 → 0.947. The same encoder weights as dlib's, so this is where most of the
  margin over face_recognition comes from, with alignment (``device.vision.stills``).
* ``edgetpu``: an int8 model compiled for the Edge TPU, whose input size,
  normalisation and alignment template come from its ``models/manifest.toml`` entry.
  Construction fails with a :class:`~device.errors.ModelError` naming the manifest
  entry or file to fix, or a :class:`~device.errors.HardwareError` naming what to
  check on the device.

Every embedder returns L2-normalised vectors; the similarity of two faces is the dot
product of their embeddings (cosine).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import Field

from device.config import Section
from device.errors import ModelError
from device.types import Detection, Embedding, FaceChip, FloatArray, Image
from device.vision import models as model_manifest
from device.vision.align import AlignTemplate, align, box_transform, warp
from device.vision.detect import Detector

logger = logging.getLogger(__name__)

#: The default embedder's manifest id.
DLIB_MODEL_ID = "dlib-resnet-v1"


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


def _template_of(spec: model_manifest.ModelSpec) -> AlignTemplate:
    template = AlignTemplate.from_manifest(spec.id, spec.extra)
    width, height = _input_size_of(spec)
    if template.size != (width, height):
        raise ModelError(
            f"model {spec.id}: the template's size {template.size} is not the model's input "
            f"size {(width, height)} in models/manifest.toml"
        )
    return template


def _input_size_of(spec: model_manifest.ModelSpec) -> tuple[int, int]:
    raw = spec.extra.get("input")
    if not isinstance(raw, Mapping) or "width" not in raw or "height" not in raw:
        raise ModelError(
            f"model {spec.id}: models/manifest.toml declares no input = {{ width, height, ... }}"
        )
    return int(raw["width"]), int(raw["height"])


# ----------------------------------------------------------------------------------
# dlib ResNet on TFLite (the default)


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
        "face in one batch; LFW all-pairs TAR@1e-4 0.788 -> 0.834).",
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
        template = _template_of(spec)
        if self.config.border is not None:
            template = replace(template, border=self.config.border)
        self._template = template
        self._input_size = _input_size_of(spec)
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


# ----------------------------------------------------------------------------------
# Edge TPU


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


class EdgeTpuEmbedder:
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
        self._input_size = _input_size_of(spec)
        self._template = _template_of(spec)
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

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def input_size(self) -> tuple[int, int]:
        return self._input_size

    @property
    def template(self) -> AlignTemplate:
        return self._template

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

    def __enter__(self) -> EdgeTpuEmbedder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ----------------------------------------------------------------------------------
# Registry

from device.vision.dlib_int8 import DlibInt8Embedder, DlibInt8EmbedderConfig  # noqa: E402

#: Any embedder backend's configuration, chosen by its ``type``.
EmbedderConfig = Annotated[
    DlibTFLiteEmbedderConfig | EdgeTpuEmbedderConfig | DlibInt8EmbedderConfig,
    Field(discriminator="type"),
]

#: ``type`` → embedder class. Each class takes ``(config, *, cache_dir, manifest)``.
EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "dlib_tflite": DlibTFLiteEmbedder,
    "edgetpu": EdgeTpuEmbedder,
    "dlib_int8": DlibInt8Embedder,
}


def create_embedder(
    config: DlibTFLiteEmbedderConfig | EdgeTpuEmbedderConfig | DlibInt8EmbedderConfig,
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


# ----------------------------------------------------------------------------------
# Still images: detect, pick, align, embed


@dataclass(frozen=True, slots=True)
class FaceEmbedding:
    """One embedded face of an image.

    Attributes:
        box: ``(x, y, w, h)`` in image pixels (the whole image for a fallback).
        detection: The detection, or ``None`` when the whole image was used.
        embedding: The face's embedding.
    """

    box: tuple[float, float, float, float]
    detection: Detection | None
    embedding: Embedding

    @property
    def fallback(self) -> bool:
        """Whether no face was found and the whole image stood in for it."""
        return self.detection is None


def embed_faces(
    image: Image,
    detector: Detector,
    embedder: Embedder,
    *,
    all_faces: bool = False,
    fallback_whole: bool = False,
) -> list[FaceEmbedding]:
    """Embed the largest face of an image (or every face, largest first).

    Args:
        image: RGB ``uint8`` ``(H, W, 3)``.
        detector: Face detector with keypoints; a
            :class:`~device.vision.stills.StillFaceFinder` (close-range pass for tight
            crops, keypoint refinement) is what photos want, and then only the faces
            used are refined.
        embedder: The embedder; its template aligns the chips.
        all_faces: Embed every face instead of only the largest.
        fallback_whole: When no face is found, embed the whole image as if it were
            the detector's face box (tightly cropped photos).

    Returns:
        The embedded faces; empty when none was found and ``fallback_whole`` is off.

    Raises:
        ModelError: Detection or embedding failed.
        ValueError: ``image`` is not ``(H, W, 3)``, or a detection lacks the keypoints
            the template needs.
    """
    from device.vision.stills import StillFaceFinder

    if isinstance(detector, StillFaceFinder):
        found = detector.find(image, largest_only=not all_faces)
    else:
        found = sorted(detector.detect(image), key=lambda d: d.area, reverse=True)
        found = found if all_faces else found[:1]
    template = embedder.template
    chips: list[FaceChip] = []
    boxes: list[tuple[float, float, float, float]] = []
    for detection in found:
        chips.append(align(image, detection, template))
        boxes.append(detection.box)
    if not found and fallback_whole:
        height, width = image.shape[:2]
        whole = (0.0, 0.0, float(width), float(height))
        chips.append(warp(image, box_transform(whole, template), template.size,
                          border=template.border))
        boxes.append(whole)
    embeddings = embedder.embed(chips)
    return [
        FaceEmbedding(box=box, detection=chip.detection, embedding=emb)
        for box, chip, emb in zip(boxes, chips, embeddings, strict=True)
    ]

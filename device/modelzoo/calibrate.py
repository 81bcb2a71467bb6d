"""Activation ranges for int8 quantisation, measured by running the float model.

The representative set is a fixed, ordered list of aligned face chips that are not
the evaluation data (LFW is): every top-level photo of ``deepface/`` and the first
``per_person`` photos (sorted by name) of each person in ``diversity/``, each run
through facegate's still-photo finder (largest face) and aligned with the model's
template. Photos where no face is found are skipped, and listed.

:func:`measure_ranges` runs the float model through LiteRT with
``experimental_preserve_all_tensors`` so every intermediate tensor can be read, and
records per tensor the minimum and maximum over all chips, and (second pass, a
4096-bin histogram over that span) the ``percentile`` / ``100 - percentile`` values.

The ranges are written to a JSON file that the build reads, so ``facegate models
build`` needs neither the datasets nor the float model's interpreter and gives the
same bytes on every machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from device.errors import ModelError
from device.modelzoo.quantize import Range
from device.vision.runtime import interpreter_module

logger = logging.getLogger(__name__)

#: Histogram bins per tensor for percentile ranges.
BINS = 4096
INPUT_RANGE = Range(0.0, 255.0)


@dataclass(frozen=True)
class CalibrationChip:
    """One representative chip: where it came from and its pixels."""

    source: str
    image: NDArray[np.uint8]


def representative_photos(datasets: Path, per_person: int = 48) -> list[Path]:
    """The calibration photos, in a fixed order (not LFW: that is the evaluation set).

    Raises:
        ModelError: Neither ``deepface/`` nor ``diversity/`` holds photos.
    """
    suffixes = {".jpg", ".jpeg", ".png"}
    deepface = sorted(p for p in (datasets / "deepface").glob("*") if p.suffix.lower() in suffixes)
    diversity: list[Path] = []
    for person in sorted(p for p in (datasets / "diversity").glob("*") if p.is_dir()):
        photos = sorted(p for p in person.iterdir() if p.suffix.lower() in suffixes)
        diversity += photos[:per_person]
    if not deepface and not diversity:
        raise ModelError(f"{datasets}: no deepface/ or diversity/ photos for calibration")
    return deepface + diversity


def aligned_chips(
    photos: Sequence[Path], datasets: Path, cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[CalibrationChip], list[str]]:
    """Find the largest face of each photo, align it with dlib-resnet-v1's template.

    Returns:
        The chips, and the photos (relative to ``datasets``) where no face was found.
    """
    from device.imageio import read_image
    from device.vision import models as model_manifest
    from device.vision.align import AlignTemplate, align
    from device.vision.stills import StillFaceFinder

    spec = model_manifest.get_spec("dlib-resnet-v1")
    template = AlignTemplate.from_manifest(spec.id, spec.extra)
    chips: list[CalibrationChip] = []
    missed: list[str] = []
    with StillFaceFinder.from_config(cache_dir=cache_dir) as finder:
        for i, path in enumerate(photos):
            rel = path.relative_to(datasets).as_posix()
            image = read_image(path)
            found = finder.find(image, largest_only=True)
            if not found:
                missed.append(rel)
                continue
            chips.append(CalibrationChip(rel, align(image, found[0], template).image))
            if progress and (i + 1) % 50 == 0:
                progress(f"aligned {i + 1}/{len(photos)} photos")
    return chips, missed


def chip_digest(chips: Sequence[CalibrationChip]) -> str:
    """sha256 over the chips' sources and pixels, in order (pins the set)."""
    digest = hashlib.sha256()
    for chip in chips:
        digest.update(chip.source.encode() + b"\0")
        digest.update(np.ascontiguousarray(chip.image).tobytes())
    return digest.hexdigest()


class _Activations:
    """The float model with every tensor kept; yields (name, array) per chip."""

    def __init__(self, model_path: Path, num_threads: int) -> None:
        module = interpreter_module()
        with warnings.catch_warnings():  # "intended for debugging": here it is the point
            warnings.simplefilter("ignore", UserWarning)
            self.interpreter: Any = module.Interpreter(
                model_path=str(model_path), num_threads=num_threads,
                experimental_preserve_all_tensors=True,
            )
        self.interpreter.allocate_tensors()
        self.input = int(self.interpreter.get_input_details()[0]["index"])
        # Activations: the tensors some operator computes (constants are never outputs).
        computed = {int(i) for op in self.interpreter._get_ops_details() for i in op["outputs"]}
        self.tensors = [
            (str(d["name"]), int(d["index"])) for d in self.interpreter.get_tensor_details()
            if np.dtype(d["dtype"]) == np.float32 and int(d["index"]) in computed
        ]

    def run(self, chip: NDArray[np.uint8]) -> list[tuple[str, NDArray[np.float32]]]:
        self.interpreter.set_tensor(self.input, chip.astype(np.float32)[None])
        self.interpreter.invoke()
        return [(name, self.interpreter.get_tensor(i)) for name, i in self.tensors]


def measure_ranges(
    model_path: Path, chips: Sequence[CalibrationChip], percentile: float | None = None,
    num_threads: int = 2,
) -> dict[str, Range]:
    """Range of every float activation over the chips: min/max, or a percentile.

    Args:
        model_path: The float model.
        chips: The representative set.
        percentile: ``None`` for min/max; else e.g. 99.99: the range runs from the
            ``100 - p`` to the ``p`` percentile of all values of the tensor.
        num_threads: Interpreter threads.

    Raises:
        ModelError: No chips.
    """
    if not chips:
        raise ModelError("no calibration chips")
    acts = _Activations(model_path, num_threads)
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    for chip in chips:
        for name, value in acts.run(chip.image):
            low[name] = min(low.get(name, np.inf), float(value.min()))
            high[name] = max(high.get(name, -np.inf), float(value.max()))
    ranges = {name: Range(low[name], high[name]) for name in low}
    if percentile is None:
        ranges["chip"] = INPUT_RANGE
        return ranges
    hist = {name: np.zeros(BINS, dtype=np.int64) for name in low}
    for chip in chips:
        for name, value in acts.run(chip.image):
            span = (low[name], high[name] if high[name] > low[name] else low[name] + 1.0)
            hist[name] += np.histogram(value, bins=BINS, range=span)[0]
    out: dict[str, Range] = {}
    for name, counts in hist.items():
        cum = np.cumsum(counts) / counts.sum()
        edges = np.linspace(low[name], high[name], BINS + 1)
        lo_bin = int(np.searchsorted(cum, (100 - percentile) / 100))
        hi_bin = int(np.searchsorted(cum, percentile / 100))
        lo = low[name] if low[name] >= 0 else float(edges[lo_bin])
        out[name] = Range(lo, float(edges[min(hi_bin + 1, BINS)]))
    out["chip"] = INPUT_RANGE
    return out


def write_ranges(path: Path, ranges: dict[str, Range], meta: dict[str, Any]) -> None:
    """The ranges file the build reads (sorted keys, floats as exact reprs)."""
    doc = {**meta, "ranges": {k: [r.low, r.high] for k, r in sorted(ranges.items())}}
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def read_ranges(path: Path) -> tuple[dict[str, Range], dict[str, Any]]:
    """Ranges and metadata of a ranges file.

    Raises:
        ModelError: Missing, not JSON, or without a ``ranges`` table of pairs.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        ranges = {str(k): Range(float(v[0]), float(v[1])) for k, v in doc.pop("ranges").items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelError(f"cannot read activation ranges {path}: {exc}") from exc
    return ranges, doc

"""What the enroll, identify, calibrate and eval-identify verbs share: models, progress.

Not a verb module: it registers no command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import click

from device.cli.common import progress
from device.service.thresholds import (
    DEFAULT_TARGET_FMR,
    MAX_SAFE_FMR,
    Threshold,
    ThresholdPolicy,
    resolve_threshold,
)
from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
from device.vision.dlib_tflite import (
    DLIB_INT8_MODEL_ID,
    DLIB_MODEL_ID,
    DlibInt8Embedder,
    DlibInt8EmbedderConfig,
    DlibTFLiteEmbedder,
    DlibTFLiteEmbedderConfig,
)
from device.vision.mobilefacenet import (
    MOBILEFACENET_MODEL_ID,
    MobileFaceNetEmbedder,
    MobileFaceNetEmbedderConfig,
)
from device.vision.stills import StillFaceFinder, StillFinderConfig

threads_option = click.option(
    "--threads", type=click.IntRange(1, 16), default=2, show_default=True,
    help="CPU threads for each model.")

model_option = click.option(
    "--model", "model_id", default=DLIB_MODEL_ID, show_default=True,
    help="Embedder (manifest id: dlib-resnet-v1, dlib-resnet-v1-int8 or mobilefacenet).")

target_fmr_option = click.option(
    "--target-fmr", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=DEFAULT_TARGET_FMR, show_default=True,
    help="False-match rate the match threshold is derived for (calibration table).")

#: How a command-line user accepts an unsafe threshold (said in refusals).
ALLOW_UNSAFE_FLAG = "pass --allow-unsafe-threshold"

unsafe_option = click.option(
    "--allow-unsafe-threshold", is_flag=True,
    help=f"Accept a threshold whose FMR is above {MAX_SAFE_FMR:g} (refused otherwise; "
         "warns loudly).")

threshold_option = click.option(
    "--threshold", "explicit_threshold", type=click.FloatRange(-1.0, 1.0), default=None,
    help="Explicit similarity threshold, as [gallery] threshold (overrides --target-fmr).")

threshold_fmr_option = click.option(
    "--threshold-fmr", type=click.FloatRange(0.0, 1.0), default=None,
    help="FMR measured for --threshold, as [gallery] threshold_fmr (used when the model "
         "has no calibration table).")


def open_detector(model: Literal["full", "short"], threads: int) -> BlazeFaceDetector:
    """BlazeFace on the CPU.

    Raises:
        ModelError: The model cannot be loaded.
    """
    return BlazeFaceDetector(BlazeFaceConfig(model=model, num_threads=threads))


def open_finder(threads: int) -> StillFaceFinder:
    """The still-photo face finder (full-range, zoom-out retry, keypoint refinement).

    Raises:
        ModelError: A BlazeFace model cannot be loaded.
    """
    return StillFaceFinder.from_config(StillFinderConfig(num_threads=threads))


def open_embedder(model_id: str, threads: int) -> DlibTFLiteEmbedder | MobileFaceNetEmbedder:
    """The CPU embedder for ``model_id``: dlib float or int8, or MobileFaceNet.

    Any other id is taken as a dlib-format float model of the manifest.

    Raises:
        ModelError: The model is not built, fails its hash check or lacks a template.
    """
    if model_id == DLIB_INT8_MODEL_ID:
        return DlibInt8Embedder(DlibInt8EmbedderConfig(num_threads=threads))
    if model_id == MOBILEFACENET_MODEL_ID:
        return MobileFaceNetEmbedder(MobileFaceNetEmbedderConfig(num_threads=threads))
    return DlibTFLiteEmbedder(DlibTFLiteEmbedderConfig(model=model_id, num_threads=threads))


def load_threshold(model_id: str, policy: ThresholdPolicy) -> Threshold:
    """The threshold ``policy`` gives, as the service resolves it (refusals name the flag).

    Raises:
        ConfigError: No table, or the target is unresolvable or unsafe.
    """
    return resolve_threshold(model_id, policy, allow_unsafe_hint=ALLOW_UNSAFE_FLAG)


@contextmanager
def progress_bar(total: int, desc: str, unit: str = "photo", *, as_json: bool = False
                 ) -> Iterator[Callable[[int], object]]:
    """:func:`device.cli.common.progress`, yielding only its advance callable."""
    with progress(total, desc, unit, as_json=as_json) as advance:
        yield advance

"""What the enroll, identify, calibrate and eval-identify verbs share: models, progress.

Not a verb module: it registers no command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import click
from tqdm import tqdm

from device.errors import ConfigError
from device.gallery.calibration import CalibrationTable, MatchThreshold, find_table
from device.gallery.calibration import resolve_threshold as _resolve
from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
from device.vision.dlib_tflite import DLIB_MODEL_ID, DlibTFLiteEmbedder, DlibTFLiteEmbedderConfig
from device.vision.stills import StillFaceFinder, StillFinderConfig

threads_option = click.option(
    "--threads", type=click.IntRange(1, 16), default=2, show_default=True,
    help="CPU threads for each model.")

model_option = click.option(
    "--model", "model_id", default=DLIB_MODEL_ID, show_default=True,
    help="Embedder (manifest id).")

target_fmr_option = click.option(
    "--target-fmr", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=1e-4, show_default=True,
    help="False-match rate the match threshold is derived for (calibration table).")

unsafe_option = click.option(
    "--allow-unsafe-threshold", is_flag=True,
    help="Accept a target FMR above 1e-3 (refused otherwise; warns loudly).")


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


def open_embedder(model_id: str, threads: int) -> DlibTFLiteEmbedder:
    """The TFLite dlib embedder for ``model_id``.

    Raises:
        ModelError: The model is not built, fails its hash check or lacks a template.
    """
    return DlibTFLiteEmbedder(DlibTFLiteEmbedderConfig(model=model_id, num_threads=threads))


def load_threshold(model_id: str, target_fmr: float, allow_unsafe: bool
                   ) -> tuple[CalibrationTable, MatchThreshold, Path]:
    """The model's calibration table and the threshold for ``target_fmr``.

    Raises:
        ConfigError: No table, or the target is unresolvable or unsafe.
    """
    table, path = find_table(model_id)
    try:
        return table, _resolve(table, target_fmr, allow_unsafe=allow_unsafe), path
    except ConfigError as exc:
        raise ConfigError(f"{exc} (table {path})") from exc


@contextmanager
def progress_bar(total: int, desc: str, unit: str = "photo") -> Iterator[Callable[[int], object]]:
    """A tqdm bar on stderr (hidden when stderr is not a terminal); yields its ``update``."""
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False,
               dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()


def fmr_text(fmr: float, upper_bound: bool) -> str:
    """``1.2e-04``, or ``<7.6e-08`` for an upper bound."""
    return f"{'<' if upper_bound else ''}{fmr:.1e}"

"""The match threshold: from a target false-match rate, or stated explicitly.

Thresholds come from a target FMR (``[gallery] target_fmr``, default ``1e-4``)
through the model's calibration table (:mod:`device.gallery.calibration`, measured
by ``facegate calibrate``). A threshold may also be stated by hand
(``[gallery] threshold``): its FMR is then the table's when the model has one, else
the ``threshold_fmr`` the configuration states (measured, e.g., by ``facegate eval
pairs``). Either way, a threshold whose false-match rate is above
:data:`MAX_SAFE_FMR` is refused unless ``allow_unsafe_threshold = true``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from device.errors import ConfigError
from device.gallery import calibration
from device.gallery.calibration import MAX_SAFE_FMR

logger = logging.getLogger(__name__)

__all__ = ["MAX_SAFE_FMR", "Threshold", "fmr_at", "resolve_threshold", "threshold_for"]


@dataclass(frozen=True, slots=True)
class Threshold:
    """The similarity threshold in force and what it means.

    Attributes:
        value: Cosine similarity at or above which a face votes for an identity.
        fmr: The false-match rate of ``value`` (goes into every match event).
        source: ``calibration`` (from the model's table) or ``config`` (stated by hand).
    """

    value: float
    fmr: float
    source: Literal["calibration", "config"]

    def to_json(self) -> dict[str, object]:
        return {"value": self.value, "fmr": self.fmr, "source": self.source}


def threshold_for(model_id: str, target_fmr: float, cache_dir: Path | None = None) -> float:
    """The similarity threshold of ``model_id`` whose false-match rate is ``target_fmr``.

    Raises:
        ConfigError: The model has no calibration table (the message says how to
            measure one), or the target is finer than the table resolves.
    """
    return calibration.threshold_for(model_id, target_fmr, cache_dir)


def fmr_at(model_id: str, threshold: float, cache_dir: Path | None = None) -> float | None:
    """The calibrated false-match rate of ``threshold`` for ``model_id``; None without a table."""
    try:
        return calibration.fmr_at(model_id, threshold, cache_dir)
    except ConfigError:
        return None


def resolve_threshold(
    model_id: str,
    *,
    target_fmr: float,
    threshold: float | None,
    threshold_fmr: float | None,
    allow_unsafe: bool,
    cache_dir: Path | None = None,
) -> Threshold:
    """The threshold a service runs with.

    An explicit ``threshold`` wins; its FMR is the calibration table's when there is
    one, else ``threshold_fmr`` as stated in the configuration. Without an explicit
    threshold, the calibration table turns ``target_fmr`` into one.

    Raises:
        ConfigError: No threshold can be found, the FMR of an explicit one is unknown,
            or the FMR exceeds :data:`MAX_SAFE_FMR` without ``allow_unsafe``.
    """
    result: Threshold
    if threshold is not None:
        measured = fmr_at(model_id, threshold, cache_dir)
        fmr = measured if measured is not None else threshold_fmr
        if fmr is None:
            raise ConfigError(
                f"[gallery] threshold = {threshold} has no known false-match rate for model "
                f"{model_id}: set threshold_fmr to the rate measured for it"
            )
        result = Threshold(float(threshold), float(fmr),
                           "calibration" if measured is not None else "config")
    else:
        table, _ = calibration.find_table(model_id, cache_dir)
        chosen = calibration.resolve_threshold(table, target_fmr, allow_unsafe=allow_unsafe)
        result = Threshold(chosen.value, chosen.fmr, "calibration")
    if not (math.isfinite(result.value) and -1.0 <= result.value <= 1.0):
        raise ConfigError(f"similarity threshold {result.value} is not within [-1, 1]")
    if result.fmr > MAX_SAFE_FMR * (1 + 1e-9):
        if not allow_unsafe:
            raise ConfigError(
                f"similarity threshold {result.value:.4f} has a false-match rate of "
                f"{result.fmr:g}, above the safe limit {MAX_SAFE_FMR:g}; raise the threshold, "
                "or set [gallery] allow_unsafe_threshold = true to accept it"
            )
        if result.source == "config":  # the calibration module warns about its own
            logger.warning(
                "running with an unsafe threshold %.4f (false-match rate %g > %g): every "
                "match is a weak lead", result.value, result.fmr, MAX_SAFE_FMR,
            )
    return result

"""Calibration building: measure a model's similarity → FMR table from impostor scores.

What ``facegate calibrate`` does. The table itself, its files and every use of it
(threshold resolution, FMR lookups) live in :mod:`device.service.thresholds`; a unit
only reads tables, so this module stays in the laboratory.

The points sit on measured impostor scores (every one of the top :data:`EXACT_TOP`,
then about :data:`POINTS_PER_DECADE` per decade of FMR), where the measured FMR is
exact; between them the table interpolates ``log(FMR)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from device.errors import ConfigError
from device.service.thresholds import CalibrationTable

logger = logging.getLogger(__name__)

#: Target FMRs a summary reports.
SUMMARY_FMRS: Final = (1e-2, 1e-3, 1e-4, 1e-5)
#: Points per decade of FMR kept beyond the first :data:`EXACT_TOP` impostor scores.
POINTS_PER_DECADE: Final = 60
#: The highest impostor scores, each kept as its own point (the rare-error tail).
EXACT_TOP: Final = 100


def build_table(
    impostor_scores: npt.ArrayLike,
    *,
    model_id: str,
    source: str = "",
    created_at: str | None = None,
) -> CalibrationTable:
    """Measure the table from impostor similarities.

    Args:
        impostor_scores: Similarities of pairs of different people.
        model_id: The embedder that made them.
        source: What they were measured on.
        created_at: ISO time; now when None.

    Raises:
        ConfigError: No scores, or a score is not finite.
    """
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64).ravel())
    n = int(imp.size)
    if n == 0:
        raise ConfigError(f"cannot calibrate {model_id}: no impostor comparisons")
    if not np.isfinite(imp).all():
        raise ConfigError(f"cannot calibrate {model_id}: a similarity is not finite")
    decades = math.log10(n) if n > 1 else 0.0
    ranks = np.concatenate([
        np.arange(1, min(n, EXACT_TOP) + 1),
        np.round(np.logspace(0.0, decades, max(2, math.ceil(decades * POINTS_PER_DECADE))
                             )).astype(np.int64),
        [n],
    ])
    ranks = np.unique(np.clip(ranks, 1, n))
    thresholds = np.unique(imp[n - ranks])  # the rank-th highest score, ascending
    at_or_above = n - np.searchsorted(imp, thresholds, side="left")
    return CalibrationTable(
        model_id=model_id,
        similarities=tuple(float(v) for v in thresholds),
        fmrs=tuple(float(v) for v in at_or_above / n),
        impostors=n,
        source=source,
        created_at=created_at or datetime.now(UTC).isoformat(timespec="seconds"),
    )


@dataclass(frozen=True)
class SummaryRow:
    """One target FMR and the threshold that gives it.

    Attributes:
        target_fmr: The false-match rate asked for.
        threshold: Similarity threshold, ``None`` when the table cannot resolve it.
        impostors_above: Impostor comparisons at or above the threshold (the evidence
            behind the estimate; a handful means a noisy one).
    """

    target_fmr: float
    threshold: float | None
    impostors_above: int | None

    def to_json(self) -> dict[str, object]:
        return {"target_fmr": self.target_fmr, "threshold": self.threshold,
                "impostors_above": self.impostors_above}


def summarise(table: CalibrationTable, fmrs: Sequence[float] = SUMMARY_FMRS
              ) -> tuple[SummaryRow, ...]:
    """The threshold at each target FMR, ``None`` where the table cannot resolve it."""
    rows = []
    for f in fmrs:
        if f < table.fmrs[-1] * (1 - 1e-9):
            rows.append(SummaryRow(f, None, None))
        else:
            t = table.threshold_for(f)
            rows.append(SummaryRow(f, t, table.impostors_above(t)))
    return tuple(rows)


def save_table(table: CalibrationTable, path: Path) -> Path:
    """Write a table atomically (temporary file, fsync, rename).

    Raises:
        ConfigError: The file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table.to_json(), indent=1) + "\n"
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write calibration table {path}: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write calibration table {path}: {exc}") from exc
    logger.info("wrote calibration table of %s (%d points, %d impostor comparisons) to %s",
                table.model_id, len(table.similarities), table.impostors, path)
    return path

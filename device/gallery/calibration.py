"""Match thresholds from error rates: a per-model calibration table (similarity → FMR).

A face *matches* an identity when their cosine similarity is **at or above** the
threshold (as in :mod:`device.service.decision`). The false-match rate of a threshold ``t``
is the share of impostor comparisons (two different people) whose similarity is
``>= t``. A :class:`CalibrationTable` records that curve for one embedder, measured
on impostor pairs: ``facegate calibrate`` measures it from a pairs file or from every
cross-identity pair of a folder tree, and stores it *with the model*:

1. ``<model cache>/<model_id>.calibration.json`` (next to the model file; written by
   ``facegate calibrate``, atomically), else
2. the table shipped with facegate, ``models/calibration/<model_id>.calibration.json``
   (``device/calibration/`` inside the wheel).

A table holds only numbers: ``(similarity, FMR)`` points and the number of impostor
comparisons behind them, never an embedding or an image.

Honest resolution
    ``N`` impostor comparisons cannot tell an FMR below ``1 / N`` from zero, so the
    table never claims one: :meth:`CalibrationTable.threshold_for` refuses a target
    finer than ``1 / N`` and :meth:`CalibrationTable.fmr_at` returns ``1 / N`` (an upper
    bound, see :meth:`CalibrationTable.fmr_is_upper_bound`) above the highest
    impostor score.

Interpolation
    The points sit on measured impostor scores (every one of the top 100, then about
    :data:`POINTS_PER_DECADE` per decade of FMR), where the measured FMR is exact;
    between two points ``log(FMR)`` is interpolated linearly in the similarity, which
    keeps :meth:`~CalibrationTable.fmr_at` monotone and makes
    :meth:`~CalibrationTable.threshold_for` its inverse.

Safety floor
    A threshold whose FMR is above :data:`MAX_SAFE_FMR` (1e-3) is refused by
    :func:`resolve_threshold` unless ``allow_unsafe_threshold`` is set, and then it
    logs a loud warning (the service's ``[gallery]`` section carries ``target_fmr`` and
    ``allow_unsafe_threshold``; :mod:`device.service.thresholds` calls this module's
    :func:`threshold_for` and :func:`fmr_at`). At every gallery load
    :func:`log_gallery_threshold` logs the threshold and the expected false-positive
    identification rate for the gallery's size, :func:`expected_fpir`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from device.errors import ConfigError
from device.vision.models import default_cache_dir

logger = logging.getLogger(__name__)

#: The ``format`` field of a calibration file.
FORMAT: Final = "facegate-calibration/1"
#: File name suffix: ``<model_id>.calibration.json``.
SUFFIX: Final = ".calibration.json"
#: The highest false-match rate a threshold may have without ``allow_unsafe_threshold``.
MAX_SAFE_FMR: Final = 1e-3
#: ``target_fmr`` when the configuration does not say.
DEFAULT_TARGET_FMR: Final = 1e-4
#: Target FMRs a summary reports.
SUMMARY_FMRS: Final = (1e-2, 1e-3, 1e-4, 1e-5)
#: Points per decade of FMR kept beyond the first :data:`EXACT_TOP` impostor scores.
POINTS_PER_DECADE: Final = 60
#: The highest impostor scores, each kept as its own point (the rare-error tail).
EXACT_TOP: Final = 100


def _repo_calibration_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "models" / "calibration"


def table_path(model_id: str, cache_dir: Path | None = None) -> Path:
    """Where ``facegate calibrate`` stores a model's table: beside the model file."""
    return (cache_dir or default_cache_dir()) / f"{model_id}{SUFFIX}"


def shipped_table_path(model_id: str) -> Path | None:
    """The table shipped with facegate for ``model_id``, if there is one."""
    name = f"{model_id}{SUFFIX}"
    packaged = resources.files("device").joinpath("calibration", name)
    if packaged.is_file():
        return Path(str(packaged))
    repo = _repo_calibration_dir() / name
    return repo if repo.is_file() else None


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


@dataclass(frozen=True)
class CalibrationTable:
    """Similarity thresholds and their measured false-match rates, for one model.

    Attributes:
        model_id: The embedder the scores came from.
        similarities: Thresholds, strictly ascending.
        fmrs: ``fmrs[i]`` = share of impostor comparisons with similarity ``>=
            similarities[i]``; non-increasing, the first is 1.
        impostors: Number of impostor comparisons measured.
        source: What was measured (data set, pairing), for people.
        created_at: ISO 8601 time of the measurement.

    Raises:
        ConfigError: Inconsistent values (lengths, order, ranges).
    """

    model_id: str
    similarities: tuple[float, ...]
    fmrs: tuple[float, ...]
    impostors: int
    source: str = ""
    created_at: str = ""

    def __post_init__(self) -> None:
        s = np.asarray(self.similarities, dtype=np.float64)
        f = np.asarray(self.fmrs, dtype=np.float64)
        where = f"calibration table of {self.model_id!r}"
        if not self.model_id:
            raise ConfigError("calibration table: model_id is empty")
        if s.ndim != 1 or s.shape != f.shape or s.size < 1:
            raise ConfigError(f"{where}: needs as many FMRs as similarities, at least one")
        if not (np.isfinite(s).all() and np.isfinite(f).all()):
            raise ConfigError(f"{where}: values must be finite")
        if (np.diff(s) <= 0).any():
            raise ConfigError(f"{where}: similarities must be strictly ascending")
        if (np.diff(f) > 0).any():
            raise ConfigError(f"{where}: FMRs must not increase with the similarity")
        if not isinstance(self.impostors, int) or self.impostors < 1:
            raise ConfigError(f"{where}: impostors must be a positive count")
        if (f <= 0).any() or (f > 1).any() or f[-1] < self.resolution * (1 - 1e-9):
            raise ConfigError(f"{where}: FMRs must lie in [1/impostors, 1]")
        if s[0] < -1.0 - 1e-6 or s[-1] > 1.0 + 1e-6:
            raise ConfigError(f"{where}: similarities must lie in [-1, 1]")

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def from_scores(
        cls,
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
        return cls(
            model_id=model_id,
            similarities=tuple(float(v) for v in thresholds),
            fmrs=tuple(float(v) for v in at_or_above / n),
            impostors=n,
            source=source,
            created_at=created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        )

    # ---- queries ----------------------------------------------------------------------

    @property
    def resolution(self) -> float:
        """The smallest FMR the table can claim: ``1 / impostors``."""
        return 1.0 / self.impostors

    def fmr_is_upper_bound(self, similarity: float) -> bool:
        """True above the highest impostor score: the FMR there is only known to be
        below :attr:`resolution`."""
        return float(similarity) > self.similarities[-1]

    def fmr_at(self, similarity: float) -> float:
        """The false-match rate of ``similarity`` as a threshold (interpolated, monotone).

        Returns 1 below the lowest impostor score and :attr:`resolution` (an upper
        bound) above the highest.

        Raises:
            ConfigError: ``similarity`` is not finite.
        """
        s = float(similarity)
        if not math.isfinite(s):
            raise ConfigError(f"similarity {similarity!r} is not finite")
        sims, fmrs = self.similarities, self.fmrs
        if s <= sims[0]:
            return fmrs[0]
        if s >= sims[-1]:
            return fmrs[-1]
        j = int(np.searchsorted(np.asarray(sims), s, side="right"))  # sims[j-1] <= s < sims[j]
        lo, hi = sims[j - 1], sims[j]
        lf, hf = math.log(fmrs[j - 1]), math.log(fmrs[j])
        return math.exp(lf + (hf - lf) * (s - lo) / (hi - lo))

    def threshold_for(self, target_fmr: float) -> float:
        """The lowest similarity threshold whose (interpolated) FMR is ``target_fmr``.

        Raises:
            ConfigError: ``target_fmr`` is not in ``(0, 1]``, or is finer than the
                table's :attr:`resolution` (the message says how to get a finer one).
        """
        t = float(target_fmr)
        if not (math.isfinite(t) and 0.0 < t <= 1.0):
            raise ConfigError(f"target FMR must be in (0, 1], got {target_fmr!r}")
        if t < self.resolution * (1 - 1e-9):
            raise ConfigError(
                f"target FMR {t:g} is finer than the calibration table of {self.model_id} can "
                f"resolve: {self.impostors} impostor comparisons measure FMRs down to "
                f"{self.resolution:.2g}. Calibrate on more identities (facegate calibrate "
                "--identities DIR) or choose a larger target_fmr"
            )
        sims, fmrs = self.similarities, self.fmrs
        j = next((i for i, f in enumerate(fmrs) if f <= t * (1 + 1e-12)), None)
        if j is None:  # the top impostor scores tie: the table stops above 1/N
            raise ConfigError(
                f"target FMR {t:g} is finer than the calibration table of {self.model_id} "
                f"resolves (its smallest measured FMR is {fmrs[-1]:.2g})"
            )
        if j == 0 or fmrs[j] == t:
            return sims[j]
        lf, hf = math.log(fmrs[j - 1]), math.log(fmrs[j])
        return sims[j - 1] + (sims[j] - sims[j - 1]) * (math.log(t) - lf) / (hf - lf)

    def impostors_above(self, threshold: float) -> int:
        """Impostor comparisons at or above ``threshold`` (from the interpolated FMR)."""
        return round(self.fmr_at(threshold) * self.impostors)

    def summary(self, fmrs: Sequence[float] = SUMMARY_FMRS) -> tuple[SummaryRow, ...]:
        """The threshold at each target FMR, ``None`` where the table cannot resolve it."""
        rows = []
        for f in fmrs:
            if f < self.fmrs[-1] * (1 - 1e-9):
                rows.append(SummaryRow(f, None, None))
            else:
                t = self.threshold_for(f)
                rows.append(SummaryRow(f, t, self.impostors_above(t)))
        return tuple(rows)

    # ---- serialisation ----------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "model_id": self.model_id,
            "source": self.source,
            "created_at": self.created_at,
            "impostors": self.impostors,
            "rule": "a pair matches when similarity >= threshold; fmr = share of impostor "
                    "comparisons with similarity >= the point's similarity",
            "points": [[s, f] for s, f in zip(self.similarities, self.fmrs, strict=True)],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "calibration table"
                  ) -> CalibrationTable:
        """Parse :meth:`to_json` output.

        Raises:
            ConfigError: Not a calibration table, or inconsistent values.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ConfigError(f"{where}: not a facegate calibration table (format {FORMAT})")
        try:
            points = [(float(s), float(f)) for s, f in data["points"]]
            impostors = data["impostors"]
            if isinstance(impostors, bool) or not isinstance(impostors, int):
                raise TypeError("impostors must be an integer")
            return cls(
                model_id=str(data["model_id"]),
                similarities=tuple(p[0] for p in points),
                fmrs=tuple(p[1] for p in points),
                impostors=impostors,
                source=str(data.get("source", "")),
                created_at=str(data.get("created_at", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: malformed calibration table: {exc}") from exc
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc


# ---------------------------------------------------------------------- files


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


def load_table(path: Path) -> CalibrationTable:
    """Read a table file.

    Raises:
        ConfigError: Missing, unreadable or malformed.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"calibration table {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read calibration table {path}: {exc}") from exc
    return CalibrationTable.from_json(data, str(path))


def find_table(model_id: str, cache_dir: Path | None = None) -> tuple[CalibrationTable, Path]:
    """The table for ``model_id``: the one in the model cache, else the shipped one.

    Raises:
        ConfigError: Neither exists, one is malformed, or it is another model's.
    """
    local = table_path(model_id, cache_dir)
    path = local if local.is_file() else shipped_table_path(model_id)
    if path is None:
        raise ConfigError(
            f"no calibration table for model {model_id}: looked for {local} and "
            f"models/calibration/{model_id}{SUFFIX}; measure one with `facegate calibrate "
            "--identities DIR` (a folder per person) or `--pairs CSV --root DIR`"
        )
    table = load_table(path)
    if table.model_id != model_id:
        raise ConfigError(f"calibration table {path} is for model {table.model_id!r}, "
                          f"not {model_id!r}")
    return table, path


def threshold_for(model_id: str, target_fmr: float, cache_dir: Path | None = None) -> float:
    """The similarity threshold of ``model_id`` whose FMR is ``target_fmr``.

    Raises:
        ConfigError: No usable table, or the target is finer than it resolves.
    """
    return find_table(model_id, cache_dir)[0].threshold_for(target_fmr)


def fmr_at(model_id: str, similarity: float, cache_dir: Path | None = None) -> float:
    """The calibrated false-match rate of ``similarity`` as a threshold for ``model_id``.

    Raises:
        ConfigError: No usable table.
    """
    return find_table(model_id, cache_dir)[0].fmr_at(similarity)


# ------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class MatchThreshold:
    """The threshold in force and what it means.

    Attributes:
        value: Similarity at or above which a candidate is a match.
        fmr: Its false-match rate according to the table.
        target_fmr: The rate asked for.
        model_id: The embedder it applies to.
        impostors: Impostor comparisons behind the table.
        unsafe: True when ``fmr`` exceeds :data:`MAX_SAFE_FMR` (allowed explicitly).
    """

    value: float
    fmr: float
    target_fmr: float
    model_id: str
    impostors: int
    unsafe: bool = False

    def to_json(self) -> dict[str, object]:
        return {"value": round(self.value, 6), "fmr": self.fmr, "target_fmr": self.target_fmr,
                "model_id": self.model_id, "impostors": self.impostors, "unsafe": self.unsafe}


def resolve_threshold(table: CalibrationTable, target_fmr: float = DEFAULT_TARGET_FMR, *,
                      allow_unsafe: bool = False) -> MatchThreshold:
    """Derive the threshold for ``target_fmr``, enforcing the safety floor.

    Raises:
        ConfigError: The target is finer than the table resolves, or its FMR is above
            :data:`MAX_SAFE_FMR` without ``allow_unsafe``.
    """
    value = table.threshold_for(target_fmr)
    fmr = table.fmr_at(value)
    unsafe = max(fmr, float(target_fmr)) > MAX_SAFE_FMR * (1 + 1e-9)
    if unsafe and not allow_unsafe:
        raise ConfigError(
            f"target_fmr = {target_fmr:g} gives similarity threshold {value:.4f}, whose "
            f"false-match rate {fmr:.2g} is above the safe limit {MAX_SAFE_FMR:g}; lower "
            "target_fmr, or set allow_unsafe_threshold = true to accept it knowingly"
        )
    if unsafe:
        logger.warning(
            "UNSAFE MATCH THRESHOLD: %.4f has a false-match rate of %.2g, above the safe limit "
            "%g (allow_unsafe_threshold = true). Strangers WILL be reported as enrolled people; "
            "treat every match as a weak lead", value, fmr, MAX_SAFE_FMR)
    return MatchThreshold(value=value, fmr=fmr, target_fmr=float(target_fmr),
                          model_id=table.model_id, impostors=table.impostors, unsafe=unsafe)


def expected_fpir(fmr: float, n: int) -> float:
    """Expected false-positive identification rate: ``1 - (1 - fmr) ** n``.

    The chance that a stranger matches at least one of ``n`` gallery faces, each
    comparison an independent trial at rate ``fmr`` (an approximation: faces of one
    person are correlated, so it overstates the risk a little).

    Raises:
        ValueError: ``fmr`` outside ``[0, 1]`` or ``n`` negative.
    """
    if not 0.0 <= fmr <= 1.0 or n < 0:
        raise ValueError(f"expected_fpir needs 0 <= fmr <= 1 and n >= 0, got {fmr}, {n}")
    if fmr == 1.0:
        return 1.0 if n > 0 else 0.0
    return float(-math.expm1(n * math.log1p(-fmr)))


def log_expected_fpir(value: float, fmr: float, identities: int, faces: int, *,
                      unsafe: bool = False, what: str = "") -> float:
    """Log a threshold and the expected FPIR for a gallery just loaded (any caller).

    ``n`` is the number of faces: a search compares the probe with every one of them.

    Args:
        value: The similarity threshold.
        fmr: Its false-match rate.
        identities: Identities in the gallery.
        faces: Faces in the gallery.
        unsafe: Log at WARNING (an FMR above :data:`MAX_SAFE_FMR` was allowed).
        what: Extra words for the message (target, model).

    Returns:
        The expected FPIR.
    """
    fpir = expected_fpir(min(max(fmr, 0.0), 1.0), faces)
    log = logger.warning if unsafe else logger.info
    log("gallery loaded: %d identities, %d faces; match threshold %.4f (FMR %.2g%s%s); expected "
        "false-positive identification rate 1-(1-FMR)^%d = %.2g", identities, faces, value, fmr,
        ", UNSAFE" if unsafe else "", f", {what}" if what else "", faces, fpir)
    return fpir


def log_gallery_threshold(threshold: MatchThreshold, identities: int, faces: int) -> float:
    """:func:`log_expected_fpir` for a :class:`MatchThreshold`.

    Returns:
        The expected FPIR.
    """
    return log_expected_fpir(threshold.value, threshold.fmr, identities, faces,
                             unsafe=threshold.unsafe,
                             what=f"target {threshold.target_fmr:g}, model {threshold.model_id}")

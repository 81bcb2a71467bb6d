"""The one threshold model: a per-model calibration table and the threshold in force.

``facegate identify``, ``facegate eval identify`` and the running service all get their
match threshold from :func:`resolve_threshold`, so they cannot disagree.

The rule
    A face *matches* an identity when their cosine similarity is **at or above** the
    threshold (:meth:`Threshold.matches`; :mod:`device.service.decision` votes by
    :func:`meets`). The false-match rate (FMR) of a threshold ``t`` is the share of
    impostor comparisons (two different people) whose similarity is ``>= t``.

The table
    A :class:`CalibrationTable` records that curve for one embedder, measured on
    impostor pairs by ``facegate calibrate`` (:mod:`device.lab.calibration`). It lives
    *with the model*: ``<model cache>/<model_id>.calibration.json``, else the table
    shipped with facegate, ``models/calibration/<model_id>.calibration.json``
    (``device/calibration/`` inside the wheel). It holds only numbers:
    ``(similarity, FMR)`` points and the number of impostor comparisons behind them.

Honest resolution
    ``N`` impostor comparisons cannot tell an FMR below ``1 / N`` from zero, so the
    table never claims one: :meth:`CalibrationTable.threshold_for` refuses a target
    finer than ``1 / N`` and :meth:`CalibrationTable.fmr_at` returns ``1 / N`` (an upper
    bound, :meth:`CalibrationTable.fmr_is_upper_bound`) above the highest impostor
    score. Between two points ``log(FMR)`` is interpolated linearly in the similarity,
    which keeps :meth:`~CalibrationTable.fmr_at` monotone and makes
    :meth:`~CalibrationTable.threshold_for` its inverse.

Two FMRs
    The *threshold FMR* (:attr:`Threshold.fmr`) is the rate of the threshold in force;
    the *FMR at a similarity* (:meth:`Threshold.fmr_at`) is the rate a threshold placed
    at one candidate's similarity would have: how surprising that score is for a
    stranger. Output names them apart.

The policy
    A :class:`ThresholdPolicy` states a target FMR, or an explicit threshold (whose FMR
    is the table's, else the ``threshold_fmr`` stated with it). Either way a threshold
    whose FMR, or whose target, is above :data:`MAX_SAFE_FMR` is refused unless
    ``allow_unsafe`` is set; then it is logged as a loud warning. At every gallery
    load :func:`log_expected_fpir` logs the threshold and the expected false-positive
    identification rate for the gallery's size (:func:`expected_fpir`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from device.errors import ConfigError
from device.vision.models import default_cache_dir

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOW_UNSAFE_IN_CONFIG", "DEFAULT_TARGET_FMR", "FORMAT", "MAX_SAFE_FMR", "SUFFIX",
    "CalibrationTable", "Threshold", "ThresholdPolicy", "expected_fpir", "find_table",
    "fmr_text",
    "load_table", "log_expected_fpir", "meets", "resolve_threshold", "shipped_table_path",
    "table_path",
]

#: The ``format`` field of a calibration file.
FORMAT: Final = "facegate-calibration/1"
#: File name suffix: ``<model_id>.calibration.json``.
SUFFIX: Final = ".calibration.json"
#: The highest false-match rate a threshold may have without ``allow_unsafe_threshold``.
MAX_SAFE_FMR: Final = 1e-3
#: ``target_fmr`` when the configuration does not say.
DEFAULT_TARGET_FMR: Final = 1e-4
#: How a unit's configuration accepts an unsafe threshold (said in refusals).
ALLOW_UNSAFE_IN_CONFIG: Final = "set [gallery] allow_unsafe_threshold = true"
#: Relative slack when comparing rates with :data:`MAX_SAFE_FMR`.
_EPS: Final = 1e-9


def meets(similarity: float, threshold: float) -> bool:
    """The match rule: ``similarity`` reaches ``threshold`` (at or above it)."""
    return float(similarity) >= float(threshold)


def is_unsafe(fmr: float) -> bool:
    """True when ``fmr`` is above :data:`MAX_SAFE_FMR`."""
    return float(fmr) > MAX_SAFE_FMR * (1 + _EPS)


def fmr_text(fmr: float | None, upper_bound: bool = False) -> str:
    """An FMR as every output prints it: ``1.2e-04``, ``<7.6e-08`` for an upper bound,
    ``unknown (no calibration table)`` without one."""
    if fmr is None:
        return "unknown (no calibration table)"
    return f"{'<' if upper_bound else ''}{fmr:.1e}"


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


def table_exists(model_id: str, cache_dir: Path | None = None) -> bool:
    """True when ``model_id`` has a table (in the model cache or shipped)."""
    return table_path(model_id, cache_dir).is_file() or shipped_table_path(model_id) is not None


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


# ------------------------------------------------------------------- thresholds


@dataclass(frozen=True, slots=True)
class ThresholdPolicy:
    """How a threshold is chosen: what ``[gallery]`` and ``identify``'s options state.

    Attributes:
        target_fmr: False-match rate the threshold is derived for (through the table),
            when no explicit ``threshold`` is given.
        threshold: An explicit similarity threshold; overrides ``target_fmr``.
        threshold_fmr: The FMR measured for ``threshold``, used when the model has no
            calibration table (the table's wins when there is one).
        allow_unsafe: Accept a threshold whose FMR is above :data:`MAX_SAFE_FMR`.
    """

    target_fmr: float = DEFAULT_TARGET_FMR
    threshold: float | None = None
    threshold_fmr: float | None = None
    allow_unsafe: bool = False


@dataclass(frozen=True, slots=True)
class Threshold:
    """The similarity threshold in force and what it means.

    Attributes:
        value: Cosine similarity at or above which a face matches an identity.
        fmr: The threshold FMR: the false-match rate of ``value`` (in every match event).
        source: ``calibration`` (from the model's table) or ``config`` (an explicit
            threshold with its stated ``threshold_fmr``, no table).
        model_id: The embedder it applies to.
        target_fmr: The rate asked for; None for an explicit threshold.
        unsafe: ``fmr`` (or the target) is above :data:`MAX_SAFE_FMR`, allowed explicitly.
        table: The model's calibration table, when it has one.
        table_file: Where the table was read from.
    """

    value: float
    fmr: float
    source: Literal["calibration", "config"]
    model_id: str
    target_fmr: float | None = None
    unsafe: bool = False
    table: CalibrationTable | None = field(default=None, repr=False, compare=False)
    table_file: Path | None = None

    def matches(self, similarity: float) -> bool:
        """The decision for one comparison (:func:`meets`)."""
        return meets(similarity, self.value)

    def fmr_at(self, similarity: float) -> tuple[float, bool] | None:
        """The FMR at ``similarity`` and whether it is only an upper bound; None without
        a table."""
        if self.table is None:
            return None
        return self.table.fmr_at(similarity), self.table.fmr_is_upper_bound(similarity)

    def to_json(self) -> dict[str, object]:
        return {"value": round(self.value, 6), "fmr": self.fmr, "source": self.source,
                "target_fmr": self.target_fmr, "model_id": self.model_id,
                "impostors": None if self.table is None else self.table.impostors,
                "unsafe": self.unsafe,
                "table": None if self.table_file is None else str(self.table_file)}


def resolve_threshold(
    model_id: str,
    policy: ThresholdPolicy,
    *,
    cache_dir: Path | None = None,
    table: CalibrationTable | None = None,
    allow_unsafe_hint: str = ALLOW_UNSAFE_IN_CONFIG,
) -> Threshold:
    """The threshold ``policy`` gives for ``model_id``: identify's and the service's.

    Args:
        model_id: The embedder the gallery holds.
        policy: Target FMR or explicit threshold, and whether unsafe is allowed.
        cache_dir: Model cache to find the table in (default: the standard one).
        table: Use this table instead of looking one up (it must be ``model_id``'s).
        allow_unsafe_hint: How the caller's user allows an unsafe threshold (a config
            key or a command-line flag), said when one is refused.

    Raises:
        ConfigError: No threshold can be found (no table, a malformed one, a target
            finer than it resolves), the FMR of an explicit one is unknown, or the FMR
            or target is above :data:`MAX_SAFE_FMR` without ``allow_unsafe``.
    """
    path: Path | None = None
    if table is None and (policy.threshold is None or table_exists(model_id, cache_dir)):
        table, path = find_table(model_id, cache_dir)  # a malformed table is an error
    if table is not None and table.model_id != model_id:
        raise ConfigError(f"the calibration table is for model {table.model_id!r}, "
                          f"not {model_id!r}")
    where = f" (table {path})" if path is not None else ""
    source: Literal["calibration", "config"] = "calibration"
    if policy.threshold is not None:
        value = float(policy.threshold)
        if not (math.isfinite(value) and -1.0 <= value <= 1.0):
            raise ConfigError(f"similarity threshold {policy.threshold} is not within [-1, 1]")
        if table is not None:
            fmr = table.fmr_at(value)
        elif policy.threshold_fmr is not None:
            fmr, source = float(policy.threshold_fmr), "config"
        else:
            raise ConfigError(
                f"[gallery] threshold = {value} has no known false-match rate for model "
                f"{model_id} (no calibration table): set threshold_fmr to the rate measured "
                "for it"
            )
        target: float | None = None
        asked = f"similarity threshold {value:.4f}"
        lower = "raise the threshold"
    else:
        assert table is not None
        target = float(policy.target_fmr)
        try:
            value = table.threshold_for(target)
        except ConfigError as exc:
            raise ConfigError(f"{exc}{where}") from exc
        fmr = table.fmr_at(value)
        asked = f"target_fmr = {target:g} gives similarity threshold {value:.4f}, which"
        lower = "lower the target FMR"
    unsafe = is_unsafe(max(fmr, target or 0.0))
    if unsafe and not policy.allow_unsafe:
        raise ConfigError(
            f"{asked} has a false-match rate of {max(fmr, target or 0.0):.2g}, above the safe "
            f"limit {MAX_SAFE_FMR:g}: strangers would be matched. {lower.capitalize()}, or "
            f"{allow_unsafe_hint} to accept it knowingly{where}"
        )
    if unsafe:
        logger.warning(
            "UNSAFE MATCH THRESHOLD: %.4f has a false-match rate of %.2g, above the safe limit "
            "%g (allowed explicitly). Strangers WILL be reported as enrolled people; treat "
            "every match as a weak lead", value, max(fmr, target or 0.0), MAX_SAFE_FMR)
    return Threshold(value=value, fmr=float(fmr), source=source, model_id=model_id,
                     target_fmr=target, unsafe=unsafe, table=table, table_file=path)


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


def log_expected_fpir(threshold: Threshold, identities: int, faces: int,
                      what: str = "") -> float:
    """Log the threshold and the expected FPIR for a gallery just loaded.

    ``n`` is the number of faces: a search compares the probe with every one of them.
    Logged at WARNING when the threshold is unsafe.

    Args:
        threshold: The threshold in force.
        identities: Identities in the gallery.
        faces: Faces in the gallery.
        what: Extra words for the message (e.g. the gallery version).

    Returns:
        The expected FPIR.
    """
    fpir = expected_fpir(min(max(threshold.fmr, 0.0), 1.0), faces)
    log = logger.warning if threshold.unsafe else logger.info
    origin = (f"target {threshold.target_fmr:g}" if threshold.target_fmr is not None
              else f"explicit, FMR from {threshold.source}")
    log("gallery loaded: %d identities, %d faces; match threshold %.4f (threshold FMR %.2g%s, "
        "%s, model %s%s); expected false-positive identification rate 1-(1-FMR)^%d = %.2g",
        identities, faces, threshold.value, threshold.fmr, ", UNSAFE" if threshold.unsafe else "",
        origin, threshold.model_id, f", {what}" if what else "", faces, fpir)
    return fpir

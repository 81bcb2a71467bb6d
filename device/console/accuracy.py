"""Accuracy in the field: what reviewers judged beside what the threshold predicts.

For each unit and each identity, the observed rate is the share of reviewed matches
judged ``not_this_person`` among those judged either way (``cannot_tell`` is left out
of both counts). The prediction is the false-positive identification rate of the
unit's threshold and gallery, ``FPIR = 1 - (1 - FMR)^N``: FMR the threshold FMR the unit
sent with each match, N the identities of its gallery (its retained gallery state) when
the match arrived; a group's prediction is the mean over its matches.

The alarm is a one-sided exact binomial test: with ``n`` judged matches, ``k`` of them
wrong and prediction ``p``, it fires when ``P(X >= k | n, p) < 0.01``: more wrong
matches than the prediction explains by chance, the sign of a look-alike, a bad
enrolment or a drifted camera.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from device.service.thresholds import expected_fpir

ALARM_P: Final = 0.01


def binomial_sf(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``, exact (summed in log space)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
             + i * log_p + (n - i) * log_q for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


@dataclass(frozen=True, slots=True)
class Accuracy:
    """One group's observed and predicted rates.

    Attributes:
        key: The unit or identity id.
        judged: Matches judged confirmed or not_this_person.
        wrong: Of those, judged not_this_person.
        unsure: Judged cannot_tell (not counted in ``judged``).
        predicted: Mean predicted FPIR over the judged matches.
        p_value: ``P(X >= wrong)`` under the prediction.
    """

    key: str
    judged: int
    wrong: int
    unsure: int
    predicted: float
    p_value: float

    @property
    def observed(self) -> float | None:
        return self.wrong / self.judged if self.judged else None

    @property
    def alarm(self) -> bool:
        return self.judged > 0 and self.p_value < ALARM_P


def _prediction(row: Mapping[str, Any]) -> float:
    fmr = row.get("false_match_rate")
    identities = row.get("gallery_identities")
    if fmr is None or identities is None:
        return 0.0 if fmr is None else float(fmr)
    return expected_fpir(float(fmr), int(identities))


def summarise(rows: Iterable[Mapping[str, Any]], by: str) -> list[Accuracy]:
    """Group judged matches (``unit``, ``identity_id``, ``verdict``...) by ``by``."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row[by]), []).append(row)
    out = []
    for key, items in sorted(groups.items()):
        judged = [r for r in items if r["verdict"] in ("confirmed", "not_this_person")]
        wrong = sum(1 for r in judged if r["verdict"] == "not_this_person")
        predicted = (sum(_prediction(r) for r in judged) / len(judged)) if judged else 0.0
        out.append(Accuracy(key, len(judged), wrong, len(items) - len(judged), predicted,
                            binomial_sf(wrong, len(judged), predicted)))
    return out


def plot_svg(rows: Sequence[Mapping[str, Any]], *, width: int = 640, height: int = 200) -> str:
    """An SVG line chart: the cumulative observed rate against the prediction over time."""
    judged = [r for r in rows if r["verdict"] in ("confirmed", "not_this_person")]
    pad = 32
    frame = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="observed against predicted false-match share">'
             f'<rect x="{pad}" y="8" width="{width - pad - 8}" height="{height - pad - 8}" '
             'fill="none" stroke="#999"/>')
    if not judged:
        return frame + (f'<text x="{pad + 8}" y="{height // 2}" font-size="12">'
                        "no reviewed matches yet</text></svg>")
    t0, t1 = float(judged[0]["occurred_at"]), float(judged[-1]["occurred_at"])
    span = max(t1 - t0, 1.0)
    observed, predicted = [], []
    wrong, total_pred = 0, 0.0
    for i, row in enumerate(judged, start=1):
        wrong += row["verdict"] == "not_this_person"
        total_pred += _prediction(row)
        observed.append((float(row["occurred_at"]), wrong / i))
        predicted.append((float(row["occurred_at"]), total_pred / i))
    top = max(0.05, *(v for _, v in observed), *(v for _, v in predicted))

    def points(series: list[tuple[float, float]]) -> str:
        xs = [pad + (t - t0) / span * (width - pad - 8) for t, _ in series]
        ys = [8 + (1 - v / top) * (height - pad - 8) for _, v in series]
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))

    return (frame
            + f'<polyline fill="none" stroke="#c0392b" stroke-width="2" '
              f'points="{points(observed)}"/>'
            + f'<polyline fill="none" stroke="#2c7fb8" stroke-dasharray="4 3" '
              f'points="{points(predicted)}"/>'
            + f'<text x="{pad}" y="{height - 10}" font-size="11">observed (red) and predicted '
              f'(blue, dashed) share judged not this person; top of axis {top:.3f}</text>'
            + "</svg>")

"""UTC timestamps as payloads and logs carry them: one formatter, one parser.

Every time a unit writes into a payload or a record is UTC text ending in ``Z``,
fixed width for a given precision, so it sorts as it compares:

* events on the wire use milliseconds (``2024-05-01T12:00:00.123Z``);
* the audit log uses microseconds (``2024-05-01T12:00:00.123456Z``), the width its
  hash chain has always hashed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

Digits = Literal[0, 3, 6]


def format_utc(when: float | datetime, *, digits: Digits = 3) -> str:
    """``when`` (epoch seconds or an aware datetime) as ``YYYY-MM-DDTHH:MM:SS[.f]Z``.

    Fractions are truncated, never rounded up, so the text never lies in the future.

    Args:
        when: Seconds since the epoch, or a timezone-aware datetime.
        digits: Digits of the fraction: 0, 3 (milliseconds) or 6 (microseconds).

    Raises:
        ValueError: ``when`` is a naive datetime, or ``digits`` is not 0, 3 or 6.
    """
    if digits not in (0, 3, 6):
        raise ValueError(f"a timestamp has 0, 3 or 6 fraction digits, not {digits}")
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("timestamps must be timezone-aware")
        moment = when.astimezone(UTC)
    else:
        moment = datetime.fromtimestamp(when, tz=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    return text + "Z"


def parse_utc(text: str, *, naive_is_utc: bool = False) -> datetime:
    """Parse a timestamp into an aware UTC datetime.

    Args:
        text: RFC 3339 text ending in ``Z`` (what :func:`format_utc` writes).
        naive_is_utc: Also accept any ISO-8601 date or time, as a person types it on a
            command line; one without a zone is taken as UTC.

    Raises:
        ValueError: ``text`` is not such a timestamp; the message says why.
    """
    if not naive_is_utc and not text.endswith("Z"):
        raise ValueError(f"timestamp {text!r} is not UTC (must end in Z)")
    iso = text[:-1] + "+00:00" if text.endswith("Z") else text
    try:
        when = datetime.fromisoformat(iso)
    except ValueError as exc:
        raise ValueError(f"timestamp {text!r} is not RFC 3339: {exc}") from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)

"""The topic tree of one unit: ``facegate/<unit>/...``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from device.errors import PublishError
from device.events.schema import GALLERY_STATE_SCHEMA, HEALTH_SCHEMA, is_valid_id

ROOT: Final = "facegate"

#: Retained state topics (below ``facegate/<unit>/``) and the schema their payload
#: must match; None means the privacy guard only (the audit module owns that format).
STATE_TOPICS: Final[dict[str, str | None]] = {
    "health": HEALTH_SCHEMA,
    "gallery/state": GALLERY_STATE_SCHEMA,
    "audit/head": None,
}

ONLINE: Final = "online"
OFFLINE: Final = "offline"


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names of one unit.

    Raises:
        PublishError: On construction, when the unit id is not one safe topic level.
    """

    unit: str

    def __post_init__(self) -> None:
        if not is_valid_id(self.unit):
            raise PublishError(f"unit id {self.unit!r} is not a valid topic level")

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.unit}"

    @property
    def status(self) -> str:
        """Retained ``online``; the last will sets it to ``offline``."""
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def gallery_state(self) -> str:
        return f"{self.base}/gallery/state"

    @property
    def audit_head(self) -> str:
        return f"{self.base}/audit/head"

    def match(self, camera: str) -> str:
        """``facegate/<unit>/<camera>/match``.

        Raises:
            PublishError: ``camera`` is not a valid topic level.
        """
        if not is_valid_id(camera):
            raise PublishError(f"camera id {camera!r} is not a valid topic level")
        return f"{self.base}/{camera}/match"

    def track_end(self, camera: str) -> str:
        """``facegate/<unit>/<camera>/track_end``.

        Raises:
            PublishError: ``camera`` is not a valid topic level.
        """
        if not is_valid_id(camera):
            raise PublishError(f"camera id {camera!r} is not a valid topic level")
        return f"{self.base}/{camera}/track_end"

    def state(self, suffix: str) -> str:
        """The retained state topic ``facegate/<unit>/<suffix>``.

        Raises:
            PublishError: ``suffix`` is not one of :data:`STATE_TOPICS`.
        """
        if suffix not in STATE_TOPICS:
            raise PublishError(f"unknown state topic {suffix!r}; known: {sorted(STATE_TOPICS)}")
        return f"{self.base}/{suffix}"

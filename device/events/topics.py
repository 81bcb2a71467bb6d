"""Every MQTT topic a unit publishes or subscribes to, in one place.

Per unit (``facegate/<unit>/...``)::

    status                        retained online/offline (the last will says offline)
    <camera>/match                match events
    <camera>/track_end            track-end updates
    health                        retained health
    gallery/state                 retained gallery state (and the last refused bundle)
    audit/head                    retained audit head
    review                        signed review verdicts of a console (subscribed, QoS 1)
    review/ack                    retained acknowledgement of the latest verdict
    gallery/manifest              per-unit gallery manifest override (subscribed)
    gallery/v<N>/chunk/<i>        its payload chunks (subscribed)

For the fleet: ``facegate/fleet/gallery/manifest`` and ``facegate/fleet/gallery/v<N>/chunk/<i>``.
Home Assistant: ``<prefix>/status`` (its birth message, subscribed) and
``<prefix>/sensor/facegate_<unit>/<camera>_last_match/config`` (discovery, retained).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from device.errors import ConfigError, PublishError
from device.events.schema import (
    GALLERY_STATE_SCHEMA,
    HEALTH_SCHEMA,
    REVIEW_ACK_SCHEMA,
    is_valid_id,
)

ROOT: Final = "facegate"
#: The topic level that addresses every unit (gallery bundles for the fleet).
FLEET: Final = "fleet"

#: Retained state topics (below ``facegate/<unit>/``) and the schema their payload
#: must match; None means the privacy guard only (the audit module owns that format).
STATE_TOPICS: Final[dict[str, str | None]] = {
    "health": HEALTH_SCHEMA,
    "gallery/state": GALLERY_STATE_SCHEMA,
    "audit/head": None,
    "review/ack": REVIEW_ACK_SCHEMA,
}

ONLINE: Final = "online"
OFFLINE: Final = "offline"

_CHUNK_RE: Final = re.compile(
    rf"{ROOT}/([A-Za-z0-9][A-Za-z0-9_-]{{0,63}})/gallery/v(\d{{1,16}})/chunk/(\d{{1,7}})"
)


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
    def everything(self) -> str:
        """``facegate/<unit>/#``: a subscription to all of the unit's topics."""
        return f"{self.base}/#"

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

    @property
    def review(self) -> str:
        """A console's signed review verdicts to the unit (QoS 1, not retained)."""
        return f"{self.base}/review"

    @property
    def review_ack(self) -> str:
        """The unit's retained acknowledgement of the latest verdict."""
        return f"{self.base}/review/ack"

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


# ------------------------------------------------------------------ gallery sync


def gallery_base(unit: str | None = None) -> str:
    """``facegate/fleet/gallery`` or ``facegate/<unit>/gallery``.

    Raises:
        ConfigError: ``unit`` is not a valid topic level, or is ``fleet``.
    """
    if unit is None:
        return f"{ROOT}/{FLEET}/gallery"
    if not is_valid_id(unit) or unit == FLEET:
        raise ConfigError(f"unit id {unit!r} cannot be used as a topic level here")
    return f"{ROOT}/{unit}/gallery"


def manifest_topic(unit: str | None = None) -> str:
    """The manifest topic of the fleet (``unit`` None) or of one unit.

    Raises:
        ConfigError: As :func:`gallery_base`.
    """
    return f"{gallery_base(unit)}/manifest"


def chunk_topic(base: str, version: int, index: int) -> str:
    """``<base>/v<version>/chunk/<index>``."""
    return f"{base}/v{version}/chunk/{index}"


def parse_chunk_topic(topic: str) -> tuple[str, int, int] | None:
    """``(base, version, index)`` of a chunk topic; None for anything else."""
    match = _CHUNK_RE.fullmatch(topic)
    if match is None:
        return None
    return f"{ROOT}/{match.group(1)}/gallery", int(match.group(2)), int(match.group(3))


# ------------------------------------------------------------------ Home Assistant


def ha_birth_topic(prefix: str) -> str:
    """Where Home Assistant announces ``online`` after it starts: ``<prefix>/status``."""
    return f"{prefix}/status"


def ha_sensor_config_topic(prefix: str, unit: str, camera: str) -> str:
    """The retained discovery config of one camera's last-match sensor."""
    return f"{prefix}/sensor/facegate_{unit}/{camera}_last_match/config"

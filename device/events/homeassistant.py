"""Home Assistant MQTT discovery: one sensor per camera, available while the unit is.

Each camera gets a sensor whose state is the label of the last match and whose
attributes are the decision's numbers, read straight from the camera's match topic;
its availability is the unit's status topic (``online`` / ``offline``, retained, with
``offline`` as last will). The configs are published retained on every connect and
again whenever Home Assistant announces ``online`` on ``<prefix>/status`` (its birth
message after a restart).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

from device.events.topics import (
    OFFLINE,
    ONLINE,
    Topics,
    ha_birth_topic,
    ha_sensor_config_topic,
)

logger = logging.getLogger(__name__)

#: Home Assistant's birth/will payloads are ``online``/``offline``; anything longer
#: than this on the status topic is not from Home Assistant.
MAX_BIRTH_BYTES: Final = 32

_ATTRIBUTES_TEMPLATE: Final = (
    "{{ {'identity_id': value_json.identity_id, 'similarity': value_json.similarity, "
    "'false_match_rate': value_json.false_match_rate, "
    "'review_required': value_json.review_required, "
    "'decided_at': value_json.decided_at, 'event_id': value_json.event_id} | tojson }}"
)


def parse_birth(payload: bytes | bytearray) -> str | None:
    """``"online"``/``"offline"`` from a Home Assistant status message, else None.

    Never raises: a huge, binary or otherwise unexpected payload is logged and
    yields None.
    """
    if len(payload) > MAX_BIRTH_BYTES:
        logger.warning("ignored a %d-byte message on the Home Assistant status topic", len(payload))
        return None
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        logger.warning("ignored a non-UTF-8 message on the Home Assistant status topic")
        return None
    if text not in (ONLINE, OFFLINE):
        logger.warning("ignored unexpected Home Assistant status %r", text[:MAX_BIRTH_BYTES])
        return None
    return text


@dataclass(frozen=True, slots=True)
class Discovery:
    """The discovery messages of one unit.

    Attributes:
        prefix: Home Assistant's discovery prefix (``homeassistant``).
        topics: The unit's topics.
        cameras: Camera ids, one sensor each.
        sw_version: Reported in the device block.
    """

    prefix: str
    topics: Topics
    cameras: tuple[str, ...]
    sw_version: str = ""

    @property
    def birth_topic(self) -> str:
        """Where Home Assistant announces ``online`` after it starts."""
        return ha_birth_topic(self.prefix)

    def config_topic(self, camera: str) -> str:
        return ha_sensor_config_topic(self.prefix, self.topics.unit, camera)

    def device(self) -> dict[str, Any]:
        block: dict[str, Any] = {
            "identifiers": [f"facegate_{self.topics.unit}"],
            "name": f"facegate {self.topics.unit}",
            "manufacturer": "facegate",
            "model": "facegate field unit",
        }
        if self.sw_version:
            block["sw_version"] = self.sw_version
        return block

    def sensor_config(self, camera: str) -> dict[str, Any]:
        """The retained config payload of ``camera``'s last-match sensor."""
        match_topic = self.topics.match(camera)
        return {
            "name": f"{camera} last match",
            "unique_id": f"facegate_{self.topics.unit}_{camera}_last_match",
            "state_topic": match_topic,
            "value_template": "{{ value_json.label }}",
            "json_attributes_topic": match_topic,
            "json_attributes_template": _ATTRIBUTES_TEMPLATE,
            "availability_topic": self.topics.status,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "icon": "mdi:face-recognition",
            "qos": 1,
            "device": self.device(),
        }

    def messages(self) -> list[tuple[str, dict[str, Any]]]:
        """``(topic, payload)`` of every config, in camera order."""
        return [(self.config_topic(c), self.sensor_config(c)) for c in self.cameras]

"""The [sync] section and the MQTT topic helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.config import validate_mapping
from device.errors import ConfigError
from device.sync.config import SyncConfig, make_sync
from device.sync.keys import generate_key
from device.sync.mqtt import chunk_topic, gallery_base, manifest_topic, parse_chunk_topic


def test_every_field_is_described_and_typos_are_refused() -> None:
    for name, info in SyncConfig.model_fields.items():
        assert info.description, name
    assert SyncConfig().threshold == 1 and not SyncConfig().allow_insecure_http
    with pytest.raises(ConfigError, match="thresold"):
        validate_mapping({"thresold": 2}, SyncConfig, "config.toml")
    with pytest.raises(ConfigError, match="max_manifest_bytes"):
        validate_mapping({"max_manifest_bytes": 10 * 1024 * 1024}, SyncConfig, "config.toml")


def test_topics() -> None:
    assert manifest_topic() == "facegate/fleet/gallery/manifest"
    assert manifest_topic("unit-7") == "facegate/unit-7/gallery/manifest"
    topic = chunk_topic(gallery_base("unit-7"), 12, 3)
    assert topic == "facegate/unit-7/gallery/v12/chunk/3"
    assert parse_chunk_topic(topic) == ("facegate/unit-7/gallery", 12, 3)
    for bad in ("facegate/unit-7/gallery/v12/chunk/x", "facegate/+/gallery/v1/chunk/0",
                "facegate/unit-7/gallery/v1/chunk/0/extra", "other/unit/gallery/v1/chunk/0"):
        assert parse_chunk_topic(bad) is None
    with pytest.raises(ConfigError):
        gallery_base("fleet")  # a unit called "fleet" would read the fleet's topics
    with pytest.raises(ConfigError):
        gallery_base("a/b")


def test_make_sync_carries_the_section_into_the_policy(tmp_path: Path) -> None:
    generate_key(tmp_path / "trusted", "a")
    (tmp_path / "trusted" / "a.key").unlink()
    config = SyncConfig(trusted_keys=str(tmp_path / "trusted"), max_payload_bytes=4096,
                        allow_insecure_http=True, scrub_old_versions=False)
    sync = make_sync(config, tmp_path / "gallery.db", unit_id="u1", model_id="m", dim=8)
    assert (sync.policy.max_payload_bytes, sync.policy.allow_insecure_http) == (4096, True)
    assert (sync.policy.unit_id, sync.layout.scrub, len(sync.trusted)) == ("u1", False, 1)
    with pytest.raises(ConfigError, match="threshold 2"):
        make_sync(SyncConfig(trusted_keys=str(tmp_path / "trusted"), threshold=2),
                  tmp_path / "gallery.db", unit_id="u1", model_id="m", dim=8)

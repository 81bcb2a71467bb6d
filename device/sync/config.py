"""The ``[sync]`` configuration section (who to trust, how much to accept) and the
factory that turns it into the unit's :class:`~device.sync.apply.GallerySync`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from device.audit import AuditLog
from device.config import Section
from device.sync.apply import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    GallerySync,
    SwitchListener,
    SyncPolicy,
)
from device.sync.keys import TrustedKeys
from device.sync.manifest import MAX_MANIFEST_BYTES


class SyncConfig(Section):
    """Over-the-air gallery updates."""

    enabled: bool = Field(default=True, description="Receive gallery bundles over MQTT.")
    trusted_keys: str = Field(
        default="trusted-keys",
        min_length=1,
        description=(
            "Directory of trusted public keys (one file per key), or the name of a "
            "systemd directory credential in $CREDENTIALS_DIRECTORY."
        ),
    )
    threshold: int = Field(
        default=1, ge=1, le=16,
        description="Distinct trusted keys that must sign a manifest.",
    )
    max_manifest_bytes: int = Field(
        default=MAX_MANIFEST_BYTES, ge=1024, le=MAX_MANIFEST_BYTES,
        description="Largest manifest accepted, bytes; a larger one is refused unread.",
    )
    max_payload_bytes: int = Field(
        default=DEFAULT_MAX_PAYLOAD_BYTES, ge=1024, le=4 * 1024**3,
        description="Largest payload accepted, bytes; checked before downloading.",
    )
    unit_override: bool = Field(
        default=True,
        description="Also follow the per-unit manifest topic facegate/<unit>/gallery/manifest.",
    )
    prefer_url: bool = Field(
        default=True,
        description="Download from the manifest's HTTPS URL when it names one (else MQTT chunks).",
    )
    allow_insecure_http: bool = Field(
        default=False,
        description="Accept http:// payload URLs. For tests on 127.0.0.1 only; never in the field.",
    )
    http_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Socket timeout of a payload download, seconds."
    )
    chunk_window: int = Field(
        default=8, ge=1, le=256,
        description="MQTT chunks subscribed at once (bounds memory and broker queues).",
    )
    retry_min_s: float = Field(
        default=5.0, gt=0, le=3600,
        description="First delay before retrying a failed download or a busy gallery, seconds.",
    )
    retry_max_s: float = Field(
        default=600.0, gt=0, le=86400,
        description="Longest retry delay, seconds (the delay doubles per failure).",
    )
    scrub_old_versions: bool = Field(
        default=True,
        description="Overwrite a superseded gallery file with zeros before deleting it.",
    )


def make_sync(
    config: SyncConfig,
    gallery: Path,
    *,
    unit_id: str,
    model_id: str,
    dim: int,
    audit: AuditLog | None = None,
    on_switched: SwitchListener | None = None,
    env: Mapping[str, str] | None = None,
) -> GallerySync:
    """The unit's :class:`GallerySync`, configured from the ``[sync]`` section.

    Args:
        config: The section.
        gallery: The live gallery path.
        unit_id: This unit's id.
        model_id: The embedder the unit runs.
        dim: Its embedding dimension.
        audit: The audit log, if any.
        on_switched: The pipeline's index reload (e.g. ``LiveGallery.on_switched``).
        env: Environment for ``$CREDENTIALS_DIRECTORY`` (default ``os.environ``).

    Raises:
        ConfigError: The trusted keys are missing or fewer than the threshold.
    """
    policy = SyncPolicy(unit_id=unit_id, model_id=model_id, dim=dim,
                        threshold=config.threshold,
                        max_manifest_bytes=config.max_manifest_bytes,
                        max_payload_bytes=config.max_payload_bytes,
                        allow_insecure_http=config.allow_insecure_http,
                        http_timeout_s=config.http_timeout_s)
    return GallerySync(gallery, TrustedKeys.load(config.trusted_keys, env), policy,
                       audit=audit, on_switched=on_switched,
                       scrub=config.scrub_old_versions)

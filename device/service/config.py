"""The service's configuration file: every section of a unit, in one TOML document.

``facegate run --config FILE`` loads it with :func:`load_config` (unknown keys are
refused; an error names every bad key with its line). Each backend and stage keeps
its own section next to its code; :class:`FacegateConfig` composes them::

    unit_id = "door-1"                      # one source of truth (MQTT topics, events)
    state_dir = "/var/lib/facegate"         # gallery, outbox, audit log, health file
    threads = 2

    [[cameras]]                             # device.camera: SourceConfig, by type
    [detector]                              # device.vision.detect: DetectorConfig
    [embedder]                              # device.vision.embed: EmbedderConfig
    [quality]                               # device.vision.quality: QualityConfig
    [tracking]                              # device.vision.track: TrackerConfig
    [decision]                              # device.service.decision: DecisionConfig
    [gallery]                               # GalleryConfig + threshold policy
    [pipeline]                              # queue size and policy, embedding budget
    [health]                                # health interval, file, temperature
    [mqtt]                                  # device.events: MqttConfig (without unit_id)
    [audit]                                 # device.audit: AuditConfig
    [retention]                             # device.service.retention: RetentionConfig
    [sync]                                  # device.sync: over-the-air galleries
    [review]                                # device.service.review: ReviewConfig

Secrets are never in this file: ``mqtt.password_file`` and ``mqtt.key_file`` name
files, or credentials in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``).

Derived values have one source of truth: ``unit_id`` and ``health.interval_s`` are
copied into the MQTT section (setting them under ``[mqtt]`` is refused), and the
outbox, audit log, gallery and health file default to files in ``state_dir``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from device.audit import AuditConfig
from device.camera import SourceConfig
from device.config import Section, load_toml
from device.events.config import OUTBOX_FILENAME, MqttConfig
from device.events.schema import is_valid_id
from device.gallery.records import GalleryConfig
from device.paths import default_state_dir
from device.service.decision import DecisionConfig
from device.service.retention import RetentionConfig
from device.service.review import ReviewConfig
from device.service.template import template_threshold
from device.service.thresholds import (
    ALLOW_UNSAFE_IN_CONFIG,
    DEFAULT_TARGET_FMR,
    MAX_SAFE_FMR,
    Threshold,
    ThresholdPolicy,
    is_unsafe,
    resolve_threshold,
)
from device.sync.config import SyncConfig
from device.vision.blazeface import BlazeFaceConfig
from device.vision.detect import DetectorConfig
from device.vision.dlib_tflite import DlibTFLiteEmbedderConfig
from device.vision.embed import EmbedderConfig
from device.vision.quality import QualityConfig
from device.vision.track import TrackerConfig

GALLERY_FILENAME = "gallery.db"
AUDIT_FILENAME = "audit.db"
HEALTH_FILENAME = "health.json"
PENDING_FILENAME = "pending-decision.json"

#: Keys of ``[mqtt]`` that come from elsewhere in the file.
_DERIVED_MQTT_KEYS = {
    "unit_id": "set unit_id once, at the top level of the file",
    "health_interval_s": "set the health interval once, as [health] interval_s",
}


class ServiceGalleryConfig(GalleryConfig):
    """The gallery the service searches, and how similar is similar enough."""

    target_fmr: float = Field(
        DEFAULT_TARGET_FMR, gt=0, le=1,
        description="Target false-match rate; the similarity threshold is the embedder's "
        "calibrated threshold for it (when no explicit threshold is set).",
    )
    threshold: float | None = Field(
        None, ge=-1, le=1,
        description="Explicit cosine-similarity threshold (a face votes for an identity at "
        "or above it); overrides target_fmr. Needs threshold_fmr until the model has a "
        "calibration table.",
    )
    threshold_fmr: float | None = Field(
        None, ge=0, le=1,
        description="The false-match rate measured for the explicit threshold (e.g. by "
        "`facegate eval pairs`); reported in every match event.",
    )
    allow_unsafe_threshold: bool = Field(
        False,
        description=f"Accept a threshold whose false-match rate is above {MAX_SAFE_FMR:g} "
        "(every match becomes a weak lead).",
    )
    precision: Literal["float32", "int8"] = Field(
        "float32",
        description="Search index precision: float32 (exact) or int8 (4x smaller, "
        "approximate; for galleries of many thousands of faces).",
    )

    @model_validator(mode="after")
    def _check_policy(self) -> ServiceGalleryConfig:
        if self.threshold_fmr is not None and self.threshold is None:
            raise ValueError("threshold_fmr goes with an explicit threshold")
        # Refused before any model loads; resolve_threshold applies the same rule to the
        # threshold the target gives.
        if self.threshold is None and is_unsafe(self.target_fmr) and not (
            self.allow_unsafe_threshold
        ):
            raise ValueError(
                f"target_fmr {self.target_fmr:g} is above the safe limit {MAX_SAFE_FMR:g}; "
                f"{ALLOW_UNSAFE_IN_CONFIG} to accept it"
            )
        return self

    @property
    def policy(self) -> ThresholdPolicy:
        """The threshold policy of this section (what ``resolve_threshold`` takes)."""
        return ThresholdPolicy(target_fmr=self.target_fmr, threshold=self.threshold,
                               threshold_fmr=self.threshold_fmr,
                               allow_unsafe=self.allow_unsafe_threshold)


class PipelineConfig(Section):
    """Between capture and decision: the frame queue and the embedding budget."""

    queue_size: int = Field(
        4, ge=1, le=256,
        description="Frames waiting for inference, all cameras together.",
    )
    queue_policy: Literal["drop_oldest", "block"] = Field(
        "drop_oldest",
        description="When the queue is full: drop the oldest frame and count it (live "
        "cameras), or make capture wait (file replay and benchmarks: every frame is "
        "processed).",
    )
    max_embeddings_per_track: int = Field(
        8, ge=1, le=1000,
        description="Faces of one track embedded at most; a track that has not matched "
        "by then is left alone (its faces are not embedded again).",
    )
    min_quality_gain: float = Field(
        0.02, ge=0, le=1,
        description="After a track is confirmed, embed a new best face only when its "
        "quality score (0-1) beats the weakest face behind the track's last n votes by "
        "this much (quality jitters between frames; a new vote needs a better face).",
    )
    embed_after_match: bool = Field(
        False,
        description="Keep embedding a track's new best faces after it matched (to catch "
        "a second identity on one track); off saves the embedder's time.",
    )
    watchdog_tick_s: float = Field(
        0.5, gt=0, le=10,
        description="How long the frame loop waits for a frame before pinging the "
        "systemd watchdog anyway (it pings only while it is alive).",
    )
    drain_timeout_s: float = Field(
        5.0, ge=0, le=300,
        description="On shutdown: time to process frames still queued and to deliver "
        "events still in the outbox before closing.",
    )


class HealthConfig(Section):
    """What the service reports about itself, and how often."""

    interval_s: float = Field(
        30.0, gt=0, le=3600,
        description="Period of the retained health message on MQTT and of the local "
        "health file.",
    )
    file: Path | None = Field(
        None,
        description="Health snapshot that `facegate status` reads (written atomically); "
        "default health.json in state_dir.",
    )
    temperature_file: Path | None = Field(
        None,
        description="File with the SoC temperature in millidegrees C; default: the "
        "cpu-thermal zone (Raspberry Pi) or the first thermal zone under "
        "/sys/class/thermal. Unreadable: no temperature is reported.",
    )
    stall_after_s: float = Field(
        10.0, gt=0,
        description="A running camera that delivered no frame for this long is 'stalled'.",
    )
    latency_samples: int = Field(
        2048, ge=16, le=1_000_000,
        description="Latest samples per stage kept for the p50/p95 figures.",
    )
    rate_window_s: float = Field(
        10.0, gt=0, le=3600, description="Window of the fps figures, seconds."
    )


class FacegateConfig(Section):
    """The whole configuration of one unit (``facegate run --config FILE``)."""

    unit_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="This unit's id: one MQTT topic level (facegate/<unit>/...) and the "
        "unit of every event. Letters, digits, '_' and '-'; at most 64.",
    )
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Directory of the unit's durable state (gallery, outbox, audit log, "
        "health file); default $STATE_DIRECTORY under systemd, else "
        "$XDG_STATE_HOME/facegate.",
    )
    threads: int = Field(
        2, ge=1, le=16,
        description="CPU threads for the detector and embedder interpreters, unless their "
        "own num_threads is set.",
    )
    model_dir: Path | None = Field(
        None,
        description="Model cache holding built models (dlib-resnet-v1); default "
        "$FACEGATE_MODEL_DIR or ~/.cache/facegate/models.",
    )
    cameras: list[SourceConfig] = Field(
        min_length=1, max_length=16,
        description="The cameras, one [[cameras]] table each, chosen by type (image, "
        "video, v4l2, rtsp, picamera2); camera_id must be unique.",
    )
    detector: DetectorConfig = Field(
        default_factory=BlazeFaceConfig, description="Face detector backend, by type."
    )
    embedder: EmbedderConfig = Field(
        default_factory=DlibTFLiteEmbedderConfig, description="Face embedder backend, by type."
    )
    quality: QualityConfig = Field(
        default_factory=QualityConfig,
        description="Quality gate for live faces (the 'live' preset by default).",
    )
    tracking: TrackerConfig = Field(
        default_factory=TrackerConfig, description="Per-camera face tracking."
    )
    decision: DecisionConfig = Field(
        default_factory=DecisionConfig,
        description="Track-level decisions (k of n votes, rate limit, unknown counts).",
    )
    gallery: ServiceGalleryConfig = Field(
        default_factory=ServiceGalleryConfig,
        description="Gallery file, threshold policy and search precision.",
    )
    pipeline: PipelineConfig = Field(
        default_factory=PipelineConfig, description="Frame queue and embedding budget."
    )
    health: HealthConfig = Field(
        default_factory=HealthConfig, description="Health reporting."
    )
    mqtt: MqttConfig = Field(
        description="Broker, credentials (as files) and outbox; unit_id and the health "
        "interval come from the top level and [health]."
    )
    audit: AuditConfig = Field(
        default_factory=AuditConfig, description="The hash-chained audit log."
    )
    retention: RetentionConfig = Field(
        default_factory=RetentionConfig,
        description="Purge of expired identities (with a share guard), outbox retention; "
        "the audit log's window is [audit] retention_days.",
    )
    sync: SyncConfig | None = Field(
        None,
        description="Over-the-air gallery updates (signed bundles over MQTT); absent: the "
        "gallery changes only by local enrolment.",
    )
    review: ReviewConfig | None = Field(
        None,
        description="Signed review verdicts of a console, recorded in the audit log and "
        "acknowledged; absent: the unit does not subscribe to them.",
    )

    @field_validator("cameras")
    @classmethod
    def _unique_cameras(cls, cameras: list[SourceConfig]) -> list[SourceConfig]:
        seen: dict[str, int] = {}
        for index, camera in enumerate(cameras):
            if camera.camera_id in seen:
                raise ValueError(
                    f"camera_id {camera.camera_id!r} of cameras[{index}] is already used by "
                    f"cameras[{seen[camera.camera_id]}]"
                )
            if not is_valid_id(camera.camera_id):
                raise ValueError(
                    f"camera_id {camera.camera_id!r} of cameras[{index}] cannot be an MQTT "
                    "topic level (letters, digits, '_' and '-' only)"
                )
            seen[camera.camera_id] = index
        return cameras

    @model_validator(mode="after")
    def _review_within_retention(self) -> FacegateConfig:
        # A verdict older than the audit window could be replayed once its first
        # record was pruned; the age limit must end first.
        if self.review is not None and self.review.max_age_days >= self.audit.retention_days:
            raise ValueError(
                f"[review] max_age_days ({self.review.max_age_days:g}) must be shorter than "
                f"[audit] retention_days ({self.audit.retention_days})"
            )
        return self

    @field_validator("mqtt", mode="before")
    @classmethod
    def _derive_mqtt(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, dict):
            return value
        for key, why in _DERIVED_MQTT_KEYS.items():
            if key in value:
                raise ValueError(f"{key} is not set under [mqtt]: {why}")
        data = dict(value)
        data["unit_id"] = info.data.get("unit_id", "unset")
        health = info.data.get("health")
        if isinstance(health, HealthConfig):
            data["health_interval_s"] = health.interval_s
        if "outbox_path" not in data and isinstance(info.data.get("state_dir"), Path):
            data["outbox_path"] = info.data["state_dir"] / OUTBOX_FILENAME
        return data

    # ---- resolved paths ----------------------------------------------------------

    @property
    def gallery_path(self) -> Path:
        """The gallery file: ``[gallery] path`` or ``gallery.db`` in ``state_dir``."""
        return self.gallery.path or self.state_dir / GALLERY_FILENAME

    @property
    def audit_path(self) -> Path:
        """The audit log: ``[audit] path`` or ``audit.db`` in ``state_dir``."""
        return self.audit.path or self.state_dir / AUDIT_FILENAME

    @property
    def health_path(self) -> Path:
        """The health snapshot: ``[health] file`` or ``health.json`` in ``state_dir``."""
        return self.health.file or self.state_dir / HEALTH_FILENAME

    @property
    def pending_path(self) -> Path:
        """The one-decision journal that makes audit + outbox recoverable after a crash."""
        return self.state_dir / PENDING_FILENAME

    @property
    def camera_ids(self) -> tuple[str, ...]:
        return tuple(c.camera_id for c in self.cameras)

    def stage_threads(self, section: Section) -> int:
        """``num_threads`` of a detector/embedder section, or the top-level ``threads``."""
        if "num_threads" in section.model_fields_set:
            return int(getattr(section, "num_threads"))  # noqa: B009 - not every section has it
        return self.threads

    def match_threshold(self, model_id: str) -> Threshold:
        """The threshold the service runs with for ``model_id`` (``[gallery]``'s policy,
        the table in :attr:`model_dir`).

        Raises:
            ConfigError: As :func:`~device.service.thresholds.resolve_threshold`.
        """
        if self.decision.template == "mean":
            return template_threshold(model_id, self.decision.n, self.gallery.policy,
                                      cache_dir=self.model_dir)
        return resolve_threshold(model_id, self.gallery.policy, cache_dir=self.model_dir)


def load_config(path: str | Path) -> tuple[FacegateConfig, str]:
    """Load and validate a service configuration file.

    Returns:
        The configuration and the sha256 of the file's bytes (for the audit log).

    Raises:
        ConfigError: The file is missing, not TOML, or invalid; every bad key is named
            with its line.
    """
    config = load_toml(path, FacegateConfig)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return config, digest

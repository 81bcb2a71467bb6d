"""The typed values the gallery store takes and returns (all frozen)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import Field

from device.config import Section
from device.types import Embedding, FloatArray

#: Faces per identity unless configured otherwise.
DEFAULT_MAX_FACES_PER_IDENTITY = 20
#: The largest per-identity face cap a configuration may ask for.
MAX_FACES_PER_IDENTITY_LIMIT = 100


class GalleryConfig(Section):
    """Where the gallery lives and how much it may hold."""

    path: Path | None = Field(
        default=None,
        description="Gallery database file; None means gallery.db in the unit's state directory.",
    )
    max_faces_per_identity: int = Field(
        default=DEFAULT_MAX_FACES_PER_IDENTITY,
        ge=1,
        le=MAX_FACES_PER_IDENTITY_LIMIT,
        description="Most faces one identity may have; enrollment beyond it is refused.",
    )
    busy_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="How long a write waits for another process's write to finish.",
    )


def iso_time(ts: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC; None stays None."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass(frozen=True)
class GalleryMetadata:
    """What a gallery file is.

    Attributes:
        gallery_id: Random id given when the file was created.
        version: Content version as published (set by sync, :meth:`GalleryStore.bump_version`).
        revision: Local change counter, +1 on every committed write; a search index
            reloads when it changes.
        model_id: The embedder every face was made with.
        dim: Embedding dimension.
        created_at: Creation time, seconds since the epoch.
        updated_at: Time of the last committed write.
        schema_version: The file's schema version.
    """

    gallery_id: str
    version: int
    revision: int
    model_id: str
    dim: int
    created_at: float
    updated_at: float
    schema_version: int

    def to_json(self) -> dict[str, object]:
        return {
            "gallery_id": self.gallery_id,
            "version": self.version,
            "revision": self.revision,
            "model_id": self.model_id,
            "dim": self.dim,
            "created_at": iso_time(self.created_at),
            "updated_at": iso_time(self.updated_at),
            "schema_version": self.schema_version,
        }


@dataclass(frozen=True)
class Identity:
    """An enrolled person.

    Attributes:
        id: Stable id (text); match events and the audit log refer to it.
        label: Display name.
        external_ref: Id of the person in the system that requested enrollment.
        notes: Free text for reviewers.
        enrolled_by: Who enrolled the person.
        legal_basis: Why the unit may hold this person's biometric data.
        consent_ref: Reference to the consent record, where consent is the basis.
        created_at: Enrollment time, seconds since the epoch.
        expires_at: When retention must delete the identity; None for no limit.
        face_count: Number of faces stored for the identity.
    """

    id: str
    label: str
    external_ref: str | None
    notes: str | None
    enrolled_by: str | None
    legal_basis: str | None
    consent_ref: str | None
    created_at: float
    expires_at: float | None
    face_count: int

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "label": self.label,
            "external_ref": self.external_ref,
            "notes": self.notes,
            "enrolled_by": self.enrolled_by,
            "legal_basis": self.legal_basis,
            "consent_ref": self.consent_ref,
            "created_at": iso_time(self.created_at),
            "expires_at": iso_time(self.expires_at),
            "face_count": self.face_count,
        }


@dataclass(frozen=True)
class FaceRecord:
    """One stored face of an identity.

    Attributes:
        id: Row id, local to this gallery file.
        identity_id: The identity the face belongs to.
        model_id: The embedder that made it.
        quality: Quality score the enrollment gave it.
        image_sha256: sha256 (hex) of the source image file.
        created_at: When it was stored.
        embedding: Read-only ``float32`` unit vector.
    """

    id: int
    identity_id: str
    model_id: str
    quality: float
    image_sha256: str
    created_at: float
    embedding: FloatArray = field(repr=False, compare=False)

    def to_json(self) -> dict[str, object]:
        """Everything but the embedding, which never leaves the library as text."""
        return {
            "id": self.id,
            "identity_id": self.identity_id,
            "model_id": self.model_id,
            "quality": self.quality,
            "image_sha256": self.image_sha256,
            "created_at": iso_time(self.created_at),
        }


@dataclass(frozen=True)
class NewIdentity:
    """The person-level fields of an enrollment.

    Attributes:
        label: Display name (1–200 characters, no control characters).
        id: Wanted id (letters, digits, ``.``, ``_``, ``:``, ``-``; up to 64); a
            random 16-hex-digit id when None. Sync passes the central system's ids.
        external_ref: See :class:`Identity`.
        notes: See :class:`Identity`.
        enrolled_by: See :class:`Identity`.
        legal_basis: See :class:`Identity`.
        consent_ref: See :class:`Identity`.
        expires_at: See :class:`Identity`.
    """

    label: str
    id: str | None = None
    external_ref: str | None = None
    notes: str | None = None
    enrolled_by: str | None = None
    legal_basis: str | None = None
    consent_ref: str | None = None
    expires_at: float | None = None


@dataclass(frozen=True)
class NewFace:
    """One face to store.

    Attributes:
        embedding: The embedder's output; its ``model_id`` must be the gallery's.
        quality: The quality gate's score (any finite number).
        image_sha256: sha256 (hex) of the source image file.
    """

    embedding: Embedding
    quality: float
    image_sha256: str


@dataclass(frozen=True)
class EnrollmentBatch:
    """An identity and its faces, written together or not at all."""

    identity: NewIdentity
    faces: tuple[NewFace, ...]


class GalleryMatrix(NamedTuple):
    """Every face of a gallery as one matrix, for the search index.

    Row *i* of ``matrix`` is face ``face_ids[i]`` of identity ``identity_ids[i]``.
    All three come from one snapshot and are read-only.
    """

    face_ids: npt.NDArray[np.int64]
    identity_ids: tuple[str, ...]
    matrix: FloatArray


@dataclass(frozen=True)
class DeleteReport:
    """What a delete or purge removed.

    Attributes:
        identity_ids: The identities deleted.
        faces: Number of faces deleted with them.
        erased: True when the file was also rebuilt with ``VACUUM``.
    """

    identity_ids: tuple[str, ...]
    faces: int
    erased: bool

    def to_json(self) -> dict[str, object]:
        return {"identity_ids": list(self.identity_ids), "faces": self.faces,
                "erased": self.erased}


@dataclass(frozen=True)
class TransferReport:
    """The result of an export or import.

    Attributes:
        path: The export file.
        identities: Identities written or read.
        faces: Faces written or read.
        content_sha256: sha256 of the file's content lines (after the header).
    """

    path: Path
    identities: int
    faces: int
    content_sha256: str

    def to_json(self) -> dict[str, object]:
        return {"path": str(self.path), "identities": self.identities, "faces": self.faces,
                "content_sha256": self.content_sha256}

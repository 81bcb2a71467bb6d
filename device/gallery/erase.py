"""Erasing an identity from every store on the unit: the one place it is orchestrated.

An erasure has three steps, always in this order:

1. **Gallery.** The identity and its faces are deleted (``secure_delete``, WAL
   truncated; with ``erase`` the file is rebuilt with ``VACUUM``), and the store
   checks that no deleted embedding's bytes remain in any of its files.
2. **Outbox.** Its pending events (which carry the label) are erased, file and WAL.
3. **Audit log.** One ``delete`` record keeps the fact (id, faces removed, events
   erased, who, why), never the label and never biometric data.

``facegate gallery delete`` runs all three through :func:`erase_identity`; the
service's retention, which deletes expired identities under its share guard, runs
step 1 itself and steps 2–3 through :func:`finish_erasure`. Both run in the one
writer of the outbox and the audit log: the CLI only while it holds the state
directory's lock (:mod:`device.statelock`), so never behind a running service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from device.gallery.records import DeleteReport
from device.gallery.store import GalleryStore


class PendingEvents(Protocol):
    """The outbox's erasure (:meth:`device.events.outbox.Outbox.delete_for_identity`)."""

    def delete_for_identity(self, identity_id: str) -> int: ...


class DeletionLog(Protocol):
    """The audit log's record of a deletion (:meth:`device.audit.AuditLog.record_delete`)."""

    def record_delete(self, identity_id: str, *, gallery_version: int | str, reason: str,
                      samples_removed: int, actor: str,
                      details: Mapping[str, object] | None = None) -> object: ...


@dataclass(frozen=True)
class Erasure:
    """What one identity's erasure did.

    Attributes:
        identity_id: The identity.
        faces: Faces deleted with it.
        gallery_version: The gallery's version afterwards.
        file_rebuilt: The gallery file was rebuilt (``VACUUM``).
        outbox_erased: Pending events erased; None when no outbox was given.
        audited: Whether the audit log recorded it.
    """

    identity_id: str
    faces: int
    gallery_version: int
    file_rebuilt: bool
    outbox_erased: int | None
    audited: bool


def finish_erasure(identity_id: str, *, faces: int, gallery_version: int, file_rebuilt: bool,
                   outbox: PendingEvents | None, audit: DeletionLog | None, reason: str,
                   actor: str, details: Mapping[str, object] | None = None) -> Erasure:
    """Steps 2 and 3 for an identity already deleted from the gallery.

    Args:
        identity_id: The deleted identity.
        faces: How many faces went with it.
        gallery_version: The gallery's version after the deletion.
        file_rebuilt: Whether the gallery file was rebuilt.
        outbox: The outbox, or None when there is none (nothing to erase there).
        audit: The audit log, or None (the deletion is then not recorded).
        reason: Why (``cli``, ``expired``).
        actor: Who (``cli:<user>``, ``retention``).
        details: More facts for the audit record (e.g. ``expires_at``).

    Raises:
        PublishError: The outbox erasure failed or is incomplete.
        AuditError: The audit record cannot be written.
    """
    erased = outbox.delete_for_identity(identity_id) if outbox is not None else None
    if audit is not None:
        audit.record_delete(
            identity_id, gallery_version=gallery_version, reason=reason,
            samples_removed=faces, actor=actor,
            details={"erase": file_rebuilt, "outbox_erased": erased, **(details or {})},
        )
    return Erasure(identity_id, faces, gallery_version, file_rebuilt, erased,
                   audit is not None)


def erase_identity(store: GalleryStore, identity_id: str, *, erase: bool,
                   outbox: PendingEvents | None, audit: DeletionLog | None, reason: str,
                   actor: str) -> tuple[DeleteReport, Erasure]:
    """All three steps for one identity.

    Args:
        store: The open gallery.
        identity_id: The identity.
        erase: Also rebuild the gallery file (``VACUUM``).
        outbox: The outbox whose pending events of the identity are erased, or None.
        audit: The audit log, or None.
        reason: Why (audit record).
        actor: Who (audit record).

    Raises:
        GalleryError: No such identity, or deleted bytes remain in the gallery files.
        PublishError: As :func:`finish_erasure`.
        AuditError: As :func:`finish_erasure`.
    """
    report = store.delete_identity(identity_id, erase=erase)
    version = store.metadata().version
    done = finish_erasure(identity_id, faces=report.faces, gallery_version=version,
                          file_rebuilt=report.erased, outbox=outbox, audit=audit,
                          reason=reason, actor=actor)
    return report, done

"""Retention: expired identities, stale outbox events and old audit records go away.

:class:`RetentionJob` runs once at service start, before the first frame is matched,
and then every ``[retention] purge_interval_s`` inside the service (the service is the
one writer of its databases; a timer in another process would be a second one). One
run:

1. **Gallery.** Every identity whose ``expires_at`` has passed is deleted with its
   embeddings (``secure_delete``, WAL truncated, file rebuilt with ``VACUUM``), then
   erased like ``gallery delete --erase`` erases (:mod:`device.gallery.erase`): its
   pending events leave the outbox, and one audit ``delete`` record per identity
   keeps the fact (id, faces removed, expiry; never the label or any biometric
   data). The service's housekeeping reloads the running index right after a purge.
2. **Share guard.** A Raspberry Pi without a real-time clock can boot years in the
   future; every identity would then look expired. A run that would delete more than
   ``max_purge_share`` of the gallery (and more than ``purge_always_allowed``
   identities, so a small gallery can still expire people one at a time) deletes
   nothing, logs why, records a ``retention_refused`` audit record, and returns the
   reason, which the service puts in its health report. The clock is then suspect,
   so the run also leaves the outbox and the audit log alone: pruning them by age
   with a wrong clock would destroy evidence.
3. **Outbox.** Events still unsent after ``outbox_max_age_s`` are deleted (counted as
   ``purged`` in the outbox, audited as a ``retention_purge`` of ``outbox``).
4. **Audit log.** Records older than ``[audit] retention_days`` are pruned; the
   pruning checkpoint keeps the rest verifiable.

The job never raises for a failed step: it logs the error, reports it in
:attr:`RetentionReport.errors`, and the next run tries again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Protocol

from pydantic import Field

from device.audit import AuditConfig, AuditKind, AuditLog
from device.config import Section
from device.errors import DeviceError
from device.gallery.erase import PendingEvents, finish_erasure
from device.gallery.records import iso_time
from device.gallery.store import GalleryStore

logger = logging.getLogger(__name__)

ACTOR = "retention"


class RetentionConfig(Section):
    """The ``[retention]`` section: how long things are kept, and the purge guard."""

    purge_interval_s: Annotated[float, Field(gt=0, le=7 * 86400)] = Field(
        3600.0,
        description="Seconds between retention runs inside the service (one also runs at "
        "start, before matching): expired identities, stale outbox events, old audit records.",
    )
    max_purge_share: Annotated[float, Field(ge=0, le=1)] = Field(
        0.2,
        description="Largest share (0-1) of the gallery's identities one run may purge. A "
        "run that would purge more (a clock that jumped ahead) purges nothing, says why in "
        "the log, the audit log and health, and leaves the outbox and audit log alone.",
    )
    purge_always_allowed: Annotated[int, Field(ge=0, le=1000)] = Field(
        1,
        description="A run may always purge this many identities, whatever the share, so "
        "a small gallery can still expire people (1 of 3 is 33 %).",
    )
    outbox_max_age_s: Annotated[float, Field(gt=0)] = Field(
        7 * 86400.0,
        description="Events not acknowledged by the broker after this many seconds are "
        "deleted from the outbox (counted as purged).",
    )


class OutboxLike(PendingEvents, Protocol):
    """What the job needs of the outbox (:class:`device.events.outbox.Outbox`)."""

    def purge_older_than(self, seconds: float) -> int:
        """Delete events stored more than ``seconds`` ago; returns how many."""
        ...


@dataclass(frozen=True)
class RetentionReport:
    """What one retention run did.

    Attributes:
        at: When it ran (the job's clock, seconds since the epoch).
        purged: Identities deleted because they expired.
        outbox_erased: Pending events of those identities erased from the outbox.
        outbox_purged: Outbox events deleted for age.
        audit_pruned: Audit records pruned (behind a checkpoint).
        refused: Why the gallery purge was refused (share guard), or ``None``.
        errors: Steps that failed, with the error; the next run retries them.
    """

    at: float
    purged: tuple[str, ...] = ()
    outbox_erased: int = 0
    outbox_purged: int = 0
    audit_pruned: int = 0
    refused: str | None = None
    errors: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        """``refused``, ``error`` or ``ok``."""
        if self.refused:
            return "refused"
        return "error" if self.errors else "ok"

    def to_json(self) -> dict[str, object]:
        """The health report's ``retention`` object (ids are not included: counts only)."""
        return {
            "status": self.status,
            "last_run_at": iso_time(self.at),
            "purged": len(self.purged),
            "outbox_erased": self.outbox_erased,
            "outbox_purged": self.outbox_purged,
            "audit_pruned": self.audit_pruned,
            "reason": self.refused or ("; ".join(self.errors)[:500] if self.errors else None),
        }


def allowed_purge(total: int, share: float, always: int) -> int:
    """How many of ``total`` identities one run may purge."""
    return max(math.floor(share * total + 1e-9), always)


class RetentionJob:
    """One unit's retention, run by the service (or a test) with :meth:`run`.

    Args:
        config: The ``[retention]`` section.
        audit_config: The ``[audit]`` section (``retention_days``).
        gallery_path: The gallery file (or the sync's symlink to it); a missing file
            is skipped.
        audit: The audit log (the job records into it and prunes it).
        outbox: The outbox, or ``None`` when the caller has none.
        clock: Seconds since the epoch; injectable for tests.
    """

    def __init__(
        self,
        config: RetentionConfig,
        audit_config: AuditConfig,
        *,
        gallery_path: Path,
        audit: AuditLog,
        outbox: OutboxLike | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.audit_config = audit_config
        self.gallery_path = gallery_path
        self.audit = audit
        self.outbox = outbox
        self._clock = clock
        self._last_refusal: tuple[int, int] | None = None
        self.last: RetentionReport | None = None

    def run(self) -> RetentionReport:
        """Run every retention step once; never raises for a failed step.

        Returns:
            What was done, refused or failed (also kept as :attr:`last`).
        """
        now = self._clock()
        errors: list[str] = []
        purged: tuple[str, ...] = ()
        erased = outbox_purged = pruned = 0
        refused: str | None = None
        try:
            purged, erased, refused = self._purge_gallery(now)
        except DeviceError as exc:
            logger.error("retention: expired identities not purged: %s", exc)
            errors.append(f"gallery: {exc}")
        if refused is None:
            if self.outbox is not None:
                try:
                    outbox_purged = self._purge_outbox(now)
                except DeviceError as exc:
                    logger.error("retention: outbox not purged: %s", exc)
                    errors.append(f"outbox: {exc}")
            try:
                pruned = self._prune_audit(now)
            except DeviceError as exc:
                logger.error("retention: audit log not pruned: %s", exc)
                errors.append(f"audit: {exc}")
        report = RetentionReport(now, purged, erased, outbox_purged, pruned, refused,
                                 tuple(errors))
        self.last = report
        logger.info("retention run: %d identities purged, %d outbox events erased with them, "
                    "%d stale outbox events, %d audit records pruned (%s)", len(purged),
                    erased, outbox_purged, pruned, report.status)
        return report

    # ---- the steps -----------------------------------------------------------------

    def _purge_gallery(self, now: float) -> tuple[tuple[str, ...], int, str | None]:
        path = self.gallery_path.resolve()
        if not path.is_file():
            return (), 0, None
        with GalleryStore(path) as store:
            expired = {i.id: i for i in store.expired(now)}
            if not expired:
                self._last_refusal = None
                return (), 0, None
            total, _ = store.counts()
            cfg = self.config
            allowed = allowed_purge(total, cfg.max_purge_share, cfg.purge_always_allowed)
            if len(expired) > allowed:
                return (), 0, self._refuse(len(expired), total, allowed, now)
            self._last_refusal = None
            # A share just above `allowed`: the store's own guard applies the same limit
            # even if an identity expired between the two reads.
            report = store.delete_expired(now, min(1.0, (allowed + 0.5) / total))
            version = store.metadata().version
        erased = 0
        for identity_id in report.identity_ids:
            ident = expired.get(identity_id)
            done = finish_erasure(
                identity_id, faces=ident.face_count if ident else 0, gallery_version=version,
                file_rebuilt=report.erased, outbox=self.outbox, audit=self.audit,
                reason="expired", actor=ACTOR,
                details={"expires_at": iso_time(ident.expires_at if ident else None)},
            )
            erased += done.outbox_erased or 0
        logger.info("retention: purged %d expired identities (%d faces) from %s",
                    len(report.identity_ids), report.faces, path)
        return report.identity_ids, erased, None

    def _refuse(self, expired: int, total: int, allowed: int, now: float) -> str:
        share = self.config.max_purge_share
        reason = (
            f"refused to purge {expired} of {total} identities ({expired / total:.0%}) at "
            f"once: the limit is {allowed} (max_purge_share {share:g}, purge_always_allowed "
            f"{self.config.purge_always_allowed}); the clock says {iso_time(now)} - check it "
            "(a unit without a real-time clock may boot with a wrong time) or raise "
            "[retention] max_purge_share; nothing was purged"
        )
        logger.warning("retention: %s", reason)
        if self._last_refusal != (expired, total):
            self.audit.append(
                AuditKind.RETENTION_REFUSED,
                {"target": "gallery", "expired": expired, "identities": total,
                 "allowed": allowed, "max_purge_share": share, "clock": iso_time(now),
                 "reason": reason},
                actor=ACTOR,
            )
            self._last_refusal = (expired, total)
        return reason

    def _purge_outbox(self, now: float) -> int:
        assert self.outbox is not None
        seconds = self.config.outbox_max_age_s
        removed = self.outbox.purge_older_than(seconds)
        if removed:
            self.audit.record_retention_purge(
                "outbox", cutoff=datetime.fromtimestamp(now - seconds, UTC), count=removed,
                actor=ACTOR,
            )
        return removed

    def _prune_audit(self, now: float) -> int:
        cutoff = datetime.fromtimestamp(now, UTC) - timedelta(
            days=self.audit_config.retention_days)
        result = self.audit.prune(cutoff, actor=ACTOR)
        if result is None:
            return 0
        logger.info("retention: pruned audit records %d-%d (before %s)", result.pruned_from,
                    result.pruned_through, cutoff.isoformat())
        return result.count

"""Where decisions go: an audit record and an outbox row per match, crash-safe.

A match decision must end up in two SQLite files — the audit log (one
``match_decision`` record per published event) and the outbox (the event itself) —
and SQLite cannot commit two WAL databases atomically. :class:`DecisionSink` makes
the pair recoverable with a one-event journal:

1. the event (its payload and the audit fields) is written to
   ``<state_dir>/pending/<event_id>.json`` (write, fsync, rename, fsync the folder);
2. the audit record is appended (durable on return);
3. the event is committed to the outbox (durable on return);
4. the journal file is removed.

At start, :meth:`DecisionSink.recover` finishes every journal file left by a crash:
it appends the audit record when the log does not have it yet and commits the event
to the outbox when it is not waiting there. An event the crash interrupted after its
delivery is then sent twice — at-least-once delivery, de-duplicated on ``event_id``
— and never lost. The journal holds what the outbox holds (ids, label, box, times):
no image and no embedding.

Acknowledgements: the sink hands the publisher a callback with every match event;
the publisher calls it when the broker's PUBACK has taken the row out of the outbox,
and the sink records the frame-to-acknowledgement latency. Nothing reads the outbox
back.

Test hook: every step above is preceded by a named checkpoint (``sink.journal``,
``sink.audit``, ``sink.outbox``, ``sink.unjournal``), the environment-configured
:func:`device.checkpoint.checkpoint_from_env` by default, a no-op in production.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from device.audit import AuditKind, AuditLog, read_records
from device.checkpoint import Checkpoint, checkpoint_from_env
from device.errors import PublishError
from device.events.mqtt import AckCallback
from device.events.outbox import Outbox
from device.events.schema import MatchEvent, TrackEndEvent
from device.service.decision import TrackEnded, UnknownTrack
from device.service.stages import Match
from device.service.stats import LatencyStats
from device.service.thresholds import Threshold

logger = logging.getLogger(__name__)

#: Audit records searched for an event id during recovery (the newest ones).
RECOVERY_AUDIT_WINDOW = 1000
#: Announced tracks remembered for their track-end update (the oldest are forgotten).
MAX_ANNOUNCED = 4096


class EventPublisher(Protocol):
    """The part of :class:`~device.events.mqtt.Publisher` the sink uses."""

    @property
    def outbox(self) -> Outbox: ...

    def publish_match(self, event: MatchEvent, *, on_ack: AckCallback | None = None
                      ) -> int: ...

    def publish_track_end(self, event: TrackEndEvent) -> int: ...


@dataclass(frozen=True, slots=True)
class _Announced:
    """What a later track end needs to know about a published match."""

    event_id: str
    first_seen: float


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingJournal:
    """One JSON file per decision in flight between the audit log and the outbox.

    Args:
        folder: The journal folder (created, mode 0700).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, event_id: str) -> Path:
        return self.folder / f"{event_id}.json"

    def write(self, event_id: str, record: dict[str, Any]) -> None:
        """Durably record one decision before it is committed anywhere.

        Raises:
            PublishError: The file cannot be written.
        """
        final = self._path(event_id)
        tmp = final.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(json.dumps(record, separators=(",", ":")).encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.folder)
        except OSError as exc:
            raise PublishError(f"cannot write decision journal {final}: {exc}") from exc

    def remove(self, event_id: str) -> None:
        """Forget a decision that is safely in both files (idempotent)."""
        with contextlib.suppress(FileNotFoundError):
            self._path(event_id).unlink()

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        """Decisions a previous run left unfinished, oldest first; unreadable ones logged."""
        out: list[tuple[float, str, dict[str, Any]]] = []
        for path in self.folder.glob("*.tmp"):  # never renamed: nothing was committed
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for path in self.folder.glob("*.json"):
            try:
                record = json.loads(path.read_text("utf-8"))
                out.append((path.stat().st_mtime, path.stem, record))
            except (OSError, ValueError) as exc:
                logger.error("decision journal %s is unreadable (%s); left in place", path, exc)
        return [(event_id, record) for _, event_id, record in sorted(out)]


class DecisionSink:
    """Turns decisions into audit records and durable events; measures acknowledgements.

    Args:
        unit: Unit id of every event.
        publisher: The MQTT publisher (its outbox is the durable queue).
        audit: The audit log.
        journal: The pending-decision journal.
        threshold: The threshold in force (similarity and FMR go into events and records).
        model_id: The embedder's model id.
        latency: Where the ``publish`` and ``capture_to_ack`` samples go.
        checkpoint: Called with a name before each step of a decision (crash tests);
            by default the one ``$FACEGATE_CHECKPOINT_HOOK`` names, else a no-op.
    """

    def __init__(
        self,
        unit: str,
        publisher: EventPublisher,
        audit: AuditLog,
        journal: PendingJournal,
        *,
        threshold: Threshold,
        model_id: str,
        latency: LatencyStats,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.unit = unit
        self.publisher = publisher
        self.audit = audit
        self.journal = journal
        self.threshold = threshold
        self.model_id = model_id
        self.latency = latency
        self._cp = checkpoint if checkpoint is not None else checkpoint_from_env()
        self._announced: OrderedDict[tuple[str, int, str], _Announced] = OrderedDict()
        self._lock = threading.Lock()
        self._awaiting: OrderedDict[int, None] = OrderedDict()  # rows not acknowledged yet
        self.matches = 0
        self.track_ends = 0
        self.unknown_tracks = 0
        self.matches_by_camera: dict[str, int] = {}

    # ---- decisions -----------------------------------------------------------------

    def match(self, match: Match) -> MatchEvent:
        """Publish one match: journal, audit record, outbox, in that order.

        Raises:
            PublishError: The event is invalid or the journal/outbox cannot be written
                (the journal keeps it for the next start when it got that far).
            AuditError: The audit log cannot be written (likewise kept).
        """
        started = time.perf_counter()
        a = match.announce
        at = self.threshold.fmr_at(a.similarity)
        event = MatchEvent(
            unit=self.unit, camera=a.camera_id, track_id=a.track_id,
            identity_id=a.identity_id, label=match.label, similarity=a.similarity,
            false_match_rate=self.threshold.fmr, gallery_version=match.gallery_version,
            model_id=self.model_id, first_seen=match.first_seen, decided_at=a.timestamp,
            faces_considered=a.faces_considered, box=match.box,
            fmr_at_similarity=None if at is None else at[0],
            fmr_at_similarity_upper_bound=at is not None and at[1],
        )
        payload = event.to_payload()
        self._cp("sink.journal")
        self.journal.write(event.event_id, {
            "kind": "match", "payload": payload, "threshold": self.threshold.value,
        })
        self._cp("sink.audit")
        self._audit(event)
        self._cp("sink.outbox")
        row_of: list[int] = []
        with self._lock:  # the callback waits for it if the PUBACK beats this block
            row = self.publisher.publish_match(event,
                                               on_ack=self._acked_after(match.arrival, row_of))
            row_of.append(row)
            self._awaiting[row] = None
            while len(self._awaiting) > MAX_ANNOUNCED:  # erased or purged unsent
                self._awaiting.popitem(last=False)
        self._cp("sink.unjournal")
        self.journal.remove(event.event_id)
        self._announced[(a.camera_id, a.track_id, a.identity_id)] = _Announced(
            event.event_id, match.first_seen)
        while len(self._announced) > MAX_ANNOUNCED:  # a track that never ended
            self._announced.popitem(last=False)
        self.matches += 1
        self.matches_by_camera[a.camera_id] = self.matches_by_camera.get(a.camera_id, 0) + 1
        self.latency.add("publish", (time.perf_counter() - started) * 1000.0)
        logger.info("camera %s: track %d is %s (similarity %.3f, %d faces): event %s",
                    a.camera_id, a.track_id, a.identity_id, a.similarity,
                    a.faces_considered, event.event_id)
        return event

    def _acked_after(self, arrival: float, row_of: list[int]) -> AckCallback:
        """The callback that turns one event's PUBACK into a ``capture_to_ack`` sample."""

        def acked(at: float) -> None:
            self.latency.add("capture_to_ack", (at - arrival) * 1000.0)
            with self._lock:
                for row in row_of:
                    self._awaiting.pop(row, None)

        return acked

    def _audit(self, event: MatchEvent) -> None:
        self.audit.record_match(
            event.event_id, event.identity_id, event.similarity, self.threshold.value,
            event.gallery_version, event.camera,
        )

    def track_ended(self, ended: TrackEnded) -> TrackEndEvent | None:
        """Publish the end of an announced track (last seen, frames seen).

        Raises:
            PublishError: The outbox cannot be written.
        """
        announced = self._announced.pop((ended.camera_id, ended.track_id, ended.identity_id),
                                        None)
        if announced is None:  # announced by a previous process: nothing to follow up
            return None
        event = TrackEndEvent(
            unit=self.unit, camera=ended.camera_id, track_id=ended.track_id,
            identity_id=ended.identity_id, match_event_id=announced.event_id,
            first_seen=min(announced.first_seen, ended.last_seen), last_seen=ended.last_seen,
            frames_seen=max(ended.frames_seen, 1),
            ended_at=max(ended.timestamp, ended.last_seen),
        )
        self.publisher.publish_track_end(event)
        self.track_ends += 1
        logger.info("camera %s: track %d (%s) ended: %d frames", ended.camera_id,
                    ended.track_id, ended.identity_id, ended.frames_seen)
        return event

    def unknown(self, unknown: UnknownTrack) -> None:
        """Count a track that ended without a match: a number, nothing else."""
        self.unknown_tracks += 1
        logger.debug("camera %s: a track ended without a match", unknown.camera_id)

    # ---- recovery ------------------------------------------------------------------

    def recover(self) -> int:
        """Finish the decisions a crash left between the audit log and the outbox.

        Returns:
            How many journal entries were finished.

        Raises:
            AuditError: The audit log cannot be read or written.
            PublishError: The outbox cannot be read or written.
        """
        entries = self.journal.pending()
        if not entries:
            return 0
        _, records = read_records(self.audit.path, last=RECOVERY_AUDIT_WINDOW)
        audited = {
            str(r.payload_obj().get("event_id")) for r in records
            if r.kind == AuditKind.MATCH_DECISION.value
        }
        queued = {row.event_id for row in self.publisher.outbox.pending(limit=1_000_000)}
        for event_id, record in entries:
            try:
                event = MatchEvent.from_payload(record["payload"])
                threshold = float(record.get("threshold", self.threshold.value))
            except (KeyError, TypeError, ValueError, PublishError) as exc:
                logger.error("decision journal entry %s is malformed (%s); left in place",
                             event_id, exc)
                continue
            if event.event_id not in audited:
                self.audit.record_match(event.event_id, event.identity_id, event.similarity,
                                        threshold, event.gallery_version, event.camera)
            if event.event_id not in queued:
                self.publisher.publish_match(event)
            self.journal.remove(event_id)
            logger.warning("recovered match event %s left unfinished by the previous run",
                           event.event_id)
        return len(entries)

    # ---- acknowledgements ----------------------------------------------------------

    def awaiting(self) -> int:
        """Events queued by this process whose acknowledgement was not seen yet."""
        with self._lock:
            return len(self._awaiting)

"""The unit's end of the review loop: verify a console's verdict, audit it, acknowledge it.

A console publishes a reviewer's signed verdict on ``facegate/<unit>/review`` (QoS 1,
see :mod:`device.events.review`). The publisher's client subscribes to it with a
persistent MQTT 5 session (``[review] session_expiry_s``), so verdicts published
while the unit was offline are delivered when it returns. :class:`ReviewInbox`:

1. takes the message off paho's network thread into a bounded queue (a full queue
   drops the verdict with a warning; the console resends it with a new nonce);
2. on its own worker thread checks, in order: the schema (``malformed``), the unit
   (``wrong_unit``), the reviewer's key among the review keys — a directory separate
   from the gallery signers (``untrusted_key``) — and the signature
   (``bad_signature``), the age (``expired``: older than ``max_age_days`` or ahead of
   the unit's clock by more than ``clock_skew_s``), that this unit published the
   event (``unknown_event``: a ``match_decision`` record with its id) and that the
   nonce, or a verdict by the same reviewer on the same event, is not recorded yet
   (``replayed``);
3. appends a ``review`` record (event id, verdict, reviewer key id, nonce, issued_at;
   never a label or note) or a ``review_refused`` record (the reason, and the ids
   when they could be read) to the audit log. :class:`~device.audit.AuditLog`
   serialises every append on its one connection, so these and the decision sink's
   appends form one chain;
4. publishes the acknowledgement retained on ``facegate/<unit>/review/ack``
   through the publisher (schema and privacy policy), with the record's ``seq`` and
   hash.

The worker is the only thread that checks for replays and appends review records,
so a check and its append never interleave with another verdict's.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Protocol

import paho.mqtt.client as mqtt
from pydantic import Field

from device.audit import AuditKind, AuditLog, AuditRecord
from device.config import Section
from device.errors import AuditError, PrivacyError, PublishError
from device.events.review import (
    RefusalReason,
    ReviewAck,
    ReviewRefusedError,
    ReviewVerdict,
    parse_verdict,
)
from device.sync.keys import TrustedKeys
from device.timestamps import format_utc

logger = logging.getLogger(__name__)

#: The MQTT 5 maximum Session Expiry Interval (the session never expires).
MAX_SESSION_EXPIRY_S: Final = 0xFFFFFFFF

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ReviewConfig(Section):
    """The ``[review]`` section: verdicts of a console, back into the audit log."""

    enabled: bool = Field(True, description="Receive review verdicts over MQTT.")
    trusted_keys: str = Field(
        "review-keys", min_length=1,
        description="Directory of the reviewers' public keys (one file per key), or the name "
        "of a systemd directory credential in $CREDENTIALS_DIRECTORY. Separate from the "
        "gallery signers ([sync] trusted_keys).",
    )
    max_age_days: Annotated[float, Field(gt=0, le=3650)] = Field(
        30.0, description="A verdict issued longer ago than this is refused as expired; "
        "must be shorter than [audit] retention_days, so a replay still finds the record."
    )
    clock_skew_s: Annotated[float, Field(ge=0, le=86400)] = Field(
        300.0, description="How far in the future (by the unit's clock) a verdict's "
        "issued_at may lie before it is refused as expired."
    )
    session_expiry_s: Annotated[int, Field(ge=0, le=MAX_SESSION_EXPIRY_S)] = Field(
        30 * 86400, description="MQTT 5 session expiry of the unit's connection: the broker "
        "keeps verdicts for a unit offline up to this long (0: none are kept)."
    )
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = Field(
        64, description="Verdicts waiting for the review worker; more are dropped."
    )


class AckPublisher(Protocol):
    """The part of :class:`~device.events.mqtt.Publisher` the inbox uses."""

    def publish_state(self, suffix: str, payload: Mapping[str, Any]) -> None: ...


class ReviewInbox:
    """Verifies, audits and acknowledges review verdicts; see the module doc.

    Args:
        unit: This unit's id.
        audit: The audit log (shared with the decision sink).
        trusted: The reviewers' public keys.
        publisher: Where acknowledgements go (retained ``review/ack``); None: not sent.
        config: The ``[review]`` section.
        clock: The current time (aware); injectable for tests.
    """

    def __init__(self, unit: str, audit: AuditLog, trusted: TrustedKeys,
                 publisher: AckPublisher | None, config: ReviewConfig, *,
                 clock: Clock = _utcnow) -> None:
        self.unit = unit
        self.audit = audit
        self.trusted = trusted
        self.publisher = publisher
        self.config = config
        self._clock = clock
        self._queue: queue.Queue[bytes | None] = queue.Queue(config.queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.recorded = 0
        self.refused = 0
        self.dropped = 0

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="review", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Handle what is queued (up to ``timeout``) and stop the worker. Idempotent."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            logger.warning("review worker busy; stopping with %d verdict(s) unhandled",
                           self._queue.qsize())
        thread.join(timeout)

    # ---- intake (paho's network thread) ----------------------------------------------

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """The route callback for ``facegate/<unit>/review``: queue it, never block."""
        self.submit(bytes(message.payload))

    def submit(self, data: bytes) -> bool:
        """Queue one received verdict for the worker; False when the queue was full."""
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            logger.warning("review queue full (%d): a verdict was dropped unread",
                           self.config.queue_size)
            return False
        return True

    def _run(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            try:
                self.handle(data)
            except Exception:  # a bug must not end the loop for the life of the process
                logger.exception("review verdict handling failed; the verdict is ignored")

    # ---- checking --------------------------------------------------------------------

    def handle(self, data: bytes) -> ReviewAck | None:
        """Check one verdict, audit the outcome and publish the acknowledgement.

        Returns:
            The acknowledgement, or None when the audit log could not be written (then
            nothing is acknowledged: the unit cannot vouch for a record it lacks).
        """
        verdict: ReviewVerdict | None = None
        try:
            verdict = parse_verdict(data)
            self._check(verdict)
        except ReviewRefusedError as exc:
            return self._refuse(exc)
        try:
            record = self.audit.record_review(
                verdict.event_id, verdict=verdict.verdict, reviewer=verdict.reviewer,
                nonce=verdict.nonce, issued_at=verdict.issued_at,
            )
        except AuditError as exc:
            logger.error("review of event %s not recorded, not acknowledged: %s",
                         verdict.event_id, exc)
            return None
        with self._lock:
            self.recorded += 1
        logger.info("review of event %s recorded: %s by reviewer %s… (audit record %d)",
                    verdict.event_id, verdict.verdict, verdict.reviewer[:16], record.seq)
        return self._ack(verdict.event_id, verdict.nonce, None, record)

    def _check(self, verdict: ReviewVerdict) -> None:
        """Raise the first refusal that applies (see the module doc for the order)."""
        def refused(reason: RefusalReason, message: str) -> ReviewRefusedError:
            return ReviewRefusedError(reason, message, event_id=verdict.event_id,
                                      reviewer=verdict.reviewer, nonce=verdict.nonce)

        if verdict.unit != self.unit:
            raise refused(RefusalReason.WRONG_UNIT,
                          f"addressed to unit {verdict.unit!r}, this is {self.unit!r}")
        verdict.verify(self.trusted)
        now = self._clock()
        issued = verdict.issued()
        if now - issued > timedelta(days=self.config.max_age_days):
            raise refused(RefusalReason.EXPIRED, f"issued {verdict.issued_at}, more than "
                          f"{self.config.max_age_days:g} days ago")
        if issued - now > timedelta(seconds=self.config.clock_skew_s):
            raise refused(RefusalReason.EXPIRED, f"issued {verdict.issued_at}, in the future "
                          f"by the unit's clock ({format_utc(now)})")
        if not self.audit.find_by_event(AuditKind.MATCH_DECISION, verdict.event_id):
            raise refused(RefusalReason.UNKNOWN_EVENT,
                          f"this unit published no match event {verdict.event_id}")
        if self.audit.find_review_nonce(verdict.nonce):
            raise refused(RefusalReason.REPLAYED, f"nonce {verdict.nonce} is already recorded")
        for record in self.audit.find_by_event(AuditKind.REVIEW, verdict.event_id):
            if record.payload_obj().get("reviewer") == verdict.reviewer:
                raise refused(RefusalReason.REPLAYED,
                              f"reviewer {verdict.reviewer[:16]}… already reviewed event "
                              f"{verdict.event_id} (audit record {record.seq})")

    def _refuse(self, exc: ReviewRefusedError) -> ReviewAck | None:
        logger.warning("%s", exc)
        record: AuditRecord | None = None
        for message in (str(exc), "(message withheld by the privacy policy)"):
            try:
                record = self.audit.record_review_refused(
                    reason=str(exc.reason), message=message, event_id=exc.event_id,
                    reviewer=exc.reviewer, nonce=exc.nonce,
                )
                break
            except PrivacyError:
                continue
            except AuditError as err:
                logger.error("refused review verdict not recorded, not acknowledged: %s", err)
                return None
        if record is None:
            return None
        with self._lock:
            self.refused += 1
        return self._ack(exc.event_id, exc.nonce, exc.reason, record)

    def _ack(self, event_id: str | None, nonce: str | None, reason: RefusalReason | None,
             record: AuditRecord) -> ReviewAck:
        ack = ReviewAck(unit=self.unit, event_id=event_id, nonce=nonce,
                        outcome="recorded" if reason is None else "refused", reason=reason,
                        at=format_utc(self._clock()), audit_seq=record.seq,
                        audit_head=record.hash)
        if self.publisher is not None:
            try:
                self.publisher.publish_state("review/ack", ack.to_payload())
            except PublishError as exc:
                logger.error("review acknowledgement not published: %s", exc)
        return ack

    def counts(self) -> dict[str, int]:
        """``recorded``, ``refused`` and ``dropped`` since start."""
        with self._lock:
            return {"recorded": self.recorded, "refused": self.refused,
                    "dropped": self.dropped}


def load_inbox(unit: str, audit: AuditLog, publisher: AckPublisher | None, config: ReviewConfig,
               env: Mapping[str, str] | None = None) -> ReviewInbox:
    """An inbox trusting the keys of ``config.trusted_keys``.

    Raises:
        ConfigError: The review keys directory or credential is missing, empty or holds
            a file that is not an Ed25519 public key.
    """
    trusted = TrustedKeys.load(config.trusted_keys, env, what="review")
    return ReviewInbox(unit, audit, trusted, publisher, config)

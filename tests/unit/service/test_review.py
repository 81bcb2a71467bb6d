"""ReviewInbox against a real audit log file, without a broker: appends from the review
worker and the decision path interleave into one valid chain."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.audit import AuditLog, read_records
from device.events.review import sign_verdict
from device.service.review import ReviewConfig, ReviewInbox
from device.sync.keys import TrustedKeys

UNIT = "unit-1"


def test_review_and_match_appends_from_two_threads_form_one_chain(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    events = [str(uuid.UUID(int=i + 1, version=4)) for i in range(40)]
    with AuditLog(tmp_path / "audit.db") as log:
        for event_id in events[:20]:
            log.record_match(event_id, "id-1", 0.7, 0.6, 1, "front")
        inbox = ReviewInbox(UNIT, log, TrustedKeys.of(key.public_key()), None, ReviewConfig())
        inbox.start()

        def decisions() -> None:  # the sink's appends, meanwhile
            for event_id in events[20:]:
                log.record_match(event_id, "id-2", 0.7, 0.6, 1, "front")

        writer = threading.Thread(target=decisions)
        writer.start()
        for event_id in events[:20]:
            verdict = sign_verdict(key, unit=UNIT, event_id=event_id, verdict="confirmed",
                                   issued_at=datetime.now(UTC))
            assert inbox.submit(verdict.encode())
        writer.join()
        inbox.close(timeout=30)
        assert inbox.counts() == {"recorded": 20, "refused": 0, "dropped": 0}
        assert log.verify().ok
    kinds = [r.kind for r in read_records(tmp_path / "audit.db")[1]]
    assert kinds.count("review") == 20 and kinds.count("match_decision") == 40


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    with AuditLog(tmp_path / "audit.db") as log:
        inbox = ReviewInbox(UNIT, log, TrustedKeys.of(key.public_key()), None,
                            ReviewConfig(queue_size=2))  # not started: nothing drains
        assert inbox.submit(b"{}") and inbox.submit(b"{}")
        assert not inbox.submit(b"{}")
        assert inbox.counts()["dropped"] == 1

"""The tamper-evident audit log: append-only, hash-chained, in its own SQLite file.

Every security-relevant fact (service start/stop, config and threshold changes,
enrolments, deletions, gallery syncs, every match decision, retention purges) is
one record; each record carries the SHA-256 of the previous one and of its own
content, so editing, deleting, inserting or reordering records breaks the chain
and :func:`verify` names the first bad record. The log never holds biometric
data: payloads are checked and refused if they look like images or embeddings.

What verification can and cannot catch:

* Caught locally: any edited byte of any record (including its stored hash), a
  deleted record anywhere (a ``seq`` gap, or for the last records the head stored
  in ``meta``), an inserted record, swapped records, records transplanted from
  another log (every hash binds the log's random id).
* Caught only with a head seen outside the unit (``expect``, from the retained
  MQTT head): an attacker who can write the file and recomputes every hash after
  the point they changed, and updates the stored head, produces a log that is
  internally consistent. Truncation plus an edited stored head is the simplest
  case. Comparing with a head published earlier catches any rewrite at or before
  that head.
* Not caught by anyone: records appended by such an attacker after the newest
  head seen outside, and rewrites of records newer than it. There is no secret on
  the unit that an attacker with write access could not also read, so the chain
  is tamper-evident only up to the last externally witnessed head. Publish often.
  The same attacker can also append a forged pruning checkpoint and delete the
  oldest records: every witnessed head still matches, so this looks like routine
  retention. Off-unit exports (``facegate audit export``) are the defence; a
  monitor can also flag checkpoints that prune inside the retention window.
* Not a reason to fail: timestamps going backwards (a Pi without an RTC may boot
  with a stale clock). Timestamps are hashed, never required to be monotonic.

Submodules: :mod:`~device.audit.record` (kinds, encoding, hashing, the check
through :mod:`device.privacy`), :mod:`~device.audit.chain` (verification over rows, JSONL exports),
:mod:`~device.audit.log` (the SQLite file, writer, pruning, reading).
"""

from device.audit.chain import ExpectedHead, VerifyResult, verify_export_lines
from device.audit.log import (
    AuditConfig,
    AuditHead,
    AuditLog,
    PruneResult,
    default_audit_path,
    head_message,
    read_head,
    read_records,
    verify,
)
from device.audit.record import GENESIS_HASH, AuditKind, AuditRecord, check_payload, record_hash

__all__ = [
    "GENESIS_HASH",
    "AuditConfig",
    "AuditHead",
    "AuditKind",
    "AuditLog",
    "AuditRecord",
    "ExpectedHead",
    "PruneResult",
    "VerifyResult",
    "check_payload",
    "default_audit_path",
    "head_message",
    "read_head",
    "read_records",
    "record_hash",
    "verify",
    "verify_export_lines",
]

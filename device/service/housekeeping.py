"""The service's periodic jobs, on one thread of their own, beside the frame flow.

The frame flow is one-way — stages → sink → outbox → publisher — and nothing in it
publishes state or reloads anything. :class:`Housekeeping` owns the rest:

* **health file** every ``[health] interval_s``: the payload the publisher also
  publishes, assembled by :func:`device.service.health.health_payload`;
* **gallery check** on the same tick: a changed gallery file (``facegate gallery
  enroll``, a sync in another process) is reloaded;
* **retention** every ``[retention] purge_interval_s`` (and once at start, before
  the first frame, by the service): a purge reloads the gallery at once;
* **audit head** published retained at start, every ``[audit] head_interval_s``,
  whenever the log's head moved (checked each tick) and at stop.

Every reload of the live gallery — the periodic check, a retention purge, the
sync's switch hook — goes through :meth:`Housekeeping.reload_gallery`, one lock,
one :class:`~device.service.gallery.GalleryWatcher`. A job that fails logs the
condition once (and again only when it changes) and is retried on the next tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from device.audit import AuditHead, AuditLog
from device.errors import DeviceError
from device.service.gallery import GalleryWatcher
from device.service.health import write_health_file
from device.service.retention import RetentionJob, RetentionReport

logger = logging.getLogger(__name__)


class StatePublisher(Protocol):
    """The part of :class:`~device.events.mqtt.Publisher` housekeeping uses."""

    def publish_state(self, suffix: str, payload: Mapping[str, Any]) -> None: ...


class _Once:
    """Log a failing job's condition once, and again only when it changes."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._last: str | None = None

    def failed(self, exc: BaseException, level: int = logging.WARNING) -> None:
        text = str(exc)
        if text != self._last:
            logger.log(level, "%s: %s", self._what, text)
            self._last = text

    def ok(self) -> None:
        if self._last is not None:
            logger.info("%s: recovered", self._what)
            self._last = None


class Housekeeping:
    """Health file, gallery reloads, retention and the audit head; see the module doc.

    Args:
        unit: Unit id (in the audit head message).
        health_path: The local health file.
        health: Assembles the whole health payload (any thread).
        interval_s: Seconds between ticks (health file, gallery check, head change).
        audit: The audit log, whose head is published.
        publisher: Where the audit head goes; None: not published.
        head_interval_s: Seconds between audit head publications at most.
        watcher: Reloads the live gallery when its file changed.
        on_reloaded: Called after each gallery reload (under the reload lock).
        retention: The retention job, or None.
        purge_interval_s: Seconds between retention runs.
        clock: Monotonic clock.
    """

    def __init__(
        self,
        unit: str,
        *,
        health_path: Path,
        health: Callable[[], Mapping[str, Any]],
        interval_s: float,
        audit: AuditLog,
        publisher: StatePublisher | None,
        head_interval_s: float,
        watcher: GalleryWatcher | None = None,
        on_reloaded: Callable[[], None] | None = None,
        retention: RetentionJob | None = None,
        purge_interval_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unit = unit
        self.health_path = health_path
        self._health = health
        self.interval_s = interval_s
        self.audit = audit
        self.publisher = publisher
        self.head_interval_s = head_interval_s
        self.watcher = watcher
        self._on_reloaded = on_reloaded
        self.retention = retention
        self.purge_interval_s = purge_interval_s
        self._clock = clock
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._published_head: AuditHead | None = None
        self._next_head = 0.0
        self._next_purge = clock() + purge_interval_s
        self._health_log = _Once(f"health file {health_path} not written")
        self._head_log = _Once("audit head not published")

    # ---- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Publish the audit head, write the health file, start the periodic thread."""
        if self._thread is not None:
            return
        self.publish_audit_head()
        self.write_health()
        self._thread = threading.Thread(target=self._run, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (idempotent); the service then calls :meth:`finish`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def finish(self) -> None:
        """The last health file and audit head, after everything else stopped."""
        self.write_health()
        self.publish_audit_head()

    # ---- the jobs ------------------------------------------------------------------

    def reload_gallery(self, *, strict: bool = False) -> bool:
        """Reload the live gallery if its file changed; True when it did. Any thread.

        Args:
            strict: Raise when the changed file cannot be loaded (a sync's switch,
                which then undoes it); otherwise that is logged once per condition.

        Raises:
            GalleryError, sqlite3.Error, OSError: Only with ``strict``; the old
                gallery stays.
        """
        if self.watcher is None:
            return False
        with self._reload_lock:
            reloaded = self.watcher.check(strict=strict)
            if reloaded and self._on_reloaded is not None:
                self._on_reloaded()
        return reloaded

    def run_retention(self) -> RetentionReport | None:
        """One retention run; a purge reloads the gallery at once."""
        if self.retention is None:
            return None
        self._next_purge = self._clock() + self.purge_interval_s
        report = self.retention.run()
        if report.purged:
            self.reload_gallery()  # the watcher logs a failure once per condition
        return report

    def write_health(self) -> None:
        """Write the health file now (failures logged once per condition)."""
        try:
            write_health_file(self.health_path, self._health())
        except (OSError, DeviceError) as exc:
            self._health_log.failed(exc)
        else:
            self._health_log.ok()

    def publish_audit_head(self, *, only_if_moved: bool = False) -> None:
        """Publish the audit chain head (retained); ``only_if_moved``: only a new head."""
        if self.publisher is None:
            return
        try:
            head = self.audit.head()
            if only_if_moved and head == self._published_head:
                return
            self.publisher.publish_state("audit/head", self.audit.head_message(self.unit))
        except DeviceError as exc:
            self._head_log.failed(exc)
            return
        self._head_log.ok()
        self._published_head = head
        self._next_head = self._clock() + self.head_interval_s

    def tick(self) -> None:
        """One round of every job that is due."""
        if self.retention is not None and self._clock() >= self._next_purge:
            self.run_retention()
        self.write_health()
        self.reload_gallery()  # the watcher logs a failure once per condition
        self.publish_audit_head(only_if_moved=self._clock() < self._next_head)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # a bug must not end housekeeping for the life of the unit
                logger.exception("housekeeping round failed; retrying next interval")

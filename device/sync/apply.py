"""Applying a gallery bundle on the unit: the state machine.

``verify manifest → fetch at most length bytes → check hash → build the new gallery
beside the live one → integrity check → fsync → atomic switch → reload the index →
store the new version → report``.

Every refusal happens before the switch, so a refused bundle leaves the live
gallery's bytes and the stored version exactly as they were; the reason goes to
the state callback (and from there to ``facegate/<unit>/gallery/state``), to the
audit log when one is given, and to ``sync_state.json`` for ``facegate sync status``.

Only one apply runs at a time per gallery, across processes (an ``flock`` on
``gallery.db.sync/lock``), so the service and a ``facegate sync apply`` from a USB
stick cannot interleave.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from device import storage
from device.audit import AuditLog
from device.errors import AuditError, ConfigError, GalleryError, SyncError
from device.gallery.exchange import ExportFile, read_export
from device.gallery.integrity import integrity_check
from device.gallery.schema import connect
from device.gallery.store import GalleryStore
from device.sync.fsutil import Checkpoint, fsync_dir, fsync_file, no_checkpoint
from device.sync.keys import TrustedKeys
from device.sync.layout import (
    GALLERY_FILE,
    MANIFEST_FILE,
    GalleryLayout,
    LiveInfo,
    RecoverReport,
    Refusal,
    SyncRecord,
)
from device.sync.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest, verify
from device.sync.payload import check_full, materialize_delta
from device.sync.reasons import Reason, SyncRefusedError
from device.sync.state import GalleryState, Outcome
from device.sync.transport import PAYLOAD_NAME, PartialPayload, copy_file, fetch_http

logger = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD_BYTES: Final = 256 * 1024 * 1024
#: Refusals of unverified manifests reach the disk at most this often (seconds).
UNVERIFIED_RECORD_INTERVAL_S: Final = 60.0
_HASH_BLOCK: Final = 1 << 20

#: Produces the verified payload file, given the manifest and the staging file.
Fetch = Callable[[Manifest, PartialPayload], Path]
SwitchListener = Callable[[Path, int], None]
StateListener = Callable[[GalleryState], None]


@dataclass(frozen=True)
class SyncPolicy:
    """What this unit accepts.

    Attributes:
        unit_id: This unit's id; a manifest that names units must name it.
        model_id: The embedder the unit runs; None takes the live gallery's.
        dim: Its embedding dimension; None takes the live gallery's.
        threshold: Distinct trusted keys that must sign.
        max_manifest_bytes: Manifest size cap.
        max_payload_bytes: Payload size cap (checked against the signed length
            before anything is downloaded).
        allow_insecure_http: Accept ``http://`` payload URLs (tests only).
        http_timeout_s: Socket timeout of a payload download.
    """

    unit_id: str | None = None
    model_id: str | None = None
    dim: int | None = None
    threshold: int = 1
    max_manifest_bytes: int = MAX_MANIFEST_BYTES
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    allow_insecure_http: bool = False
    http_timeout_s: float = 30.0


@dataclass(frozen=True)
class ApplyResult:
    """The outcome of one bundle.

    Attributes:
        outcome: ``ok`` (applied), ``current`` (already live), ``refused`` or ``error``.
        version: Live version afterwards.
        previous_version: Live version before.
        digest: The bundle's digest, when its manifest could be parsed.
        reason: Refusal or error code.
        message: Sentence for a person.
        state: The state that was reported.
    """

    outcome: Outcome
    version: int
    previous_version: int
    digest: str | None
    reason: str | None
    message: str | None
    state: GalleryState

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "current")

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "version": self.version,
                "previous_version": self.previous_version, "bundle_sha256": self.digest,
                "reason": self.reason, "message": self.message,
                "identities": self.state.identities, "templates": self.state.templates}


class _AlreadyCurrentError(Exception):
    """The manifest is the one the live gallery was built from."""


class GallerySync:
    """Verifies and applies bundles to one gallery; see the module docstring.

    Args:
        gallery: The live gallery path (``<state dir>/gallery.db``).
        trusted: Public keys whose signatures count.
        policy: What the unit accepts.
        audit: Records ``sync_applied``/``sync_refused`` when given.
        on_switched: Called with ``(new gallery file, version)`` right after the
            switch; it rebuilds the search index and swaps it in, or raises and
            leaves the old one (the switch is then undone when possible).
        on_state: Called with every state report (the agent publishes them).
        clock: Seconds since the epoch.
        checkpoint: Called with a name before every step that changes the disk.
        scrub: Overwrite superseded galleries before deleting them.

    Raises:
        ConfigError: The threshold is below 1 or above the number of trusted keys.
    """

    def __init__(self, gallery: Path, trusted: TrustedKeys, policy: SyncPolicy | None = None,
                 *, audit: AuditLog | None = None, on_switched: SwitchListener | None = None,
                 on_state: StateListener | None = None, clock: Callable[[], float] = time.time,
                 checkpoint: Checkpoint = no_checkpoint, scrub: bool = True) -> None:
        self.policy = policy or SyncPolicy()
        if not 1 <= self.policy.threshold <= len(trusted):
            raise ConfigError(f"signature threshold {self.policy.threshold} needs between 1 "
                              f"and {len(trusted)} trusted keys")
        self.trusted = trusted
        self.layout = GalleryLayout(gallery, checkpoint=checkpoint, scrub=scrub)
        self.audit = audit
        self.on_switched = on_switched
        self.on_state = on_state
        self._clock = clock
        self._cp = checkpoint
        self._lock = threading.Lock()
        self._last_unverified_record = -math.inf

    # -------------------------------------------------------------- helpers

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This thread and this process are the only ones touching the gallery files."""
        with self._lock:
            self.layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.layout.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError as exc:
                    raise SyncError(f"another process is applying a bundle to "
                                    f"{self.layout.live}; try again when it is done") from exc
                yield
            finally:
                os.close(fd)

    def now(self) -> float:
        """The time used for expiry: never earlier than the newest applied manifest."""
        return max(self._clock(), self.layout.read_record().clock_floor)

    def _live(self) -> LiveInfo | None:
        try:
            return self.layout.live_info()
        except OSError as exc:
            raise SyncError(str(exc)) from exc

    def _unit_model(self, live: LiveInfo | None) -> tuple[str, int]:
        model = self.policy.model_id or (live.model_id if live else None)
        dim = self.policy.dim or (live.dim if live else None)
        if model is None or dim is None:
            unusable = self._unusable_live(live)
            why = ("no gallery yet" if unusable is None else
                   f"the live gallery {unusable} is damaged, so its model is unknown")
            raise SyncError(f"the unit's model id and dimension are unknown ({why}); "
                            "configure them (--model-id/--dim)")
        return model, dim

    # ---------------------------------------------------------------- public

    def recover(self) -> RecoverReport:
        """Repair the files after a crash (start-up); see :meth:`GalleryLayout.recover`.

        Raises:
            SyncError: Another process holds the lock, or files cannot be repaired.
        """
        with self._exclusive():
            try:
                return self.layout.recover()
            except OSError as exc:
                raise SyncError(f"gallery sync recovery failed: {exc}") from exc

    def status(self) -> GalleryState:
        """The state as last recorded, for the live gallery as it is now.

        Raises:
            SyncError: The live gallery cannot be read.
        """
        return read_status(self.layout, model_id=self.policy.model_id, clock=self._clock)

    def _verified(self, raw: bytes) -> Manifest:
        manifest = parse_manifest(raw, max_bytes=self.policy.max_manifest_bytes)
        verify(manifest, self.trusted, self.policy.threshold)
        return manifest

    def _vet(self, manifest: Manifest, live: LiveInfo | None) -> None:
        now = self.now()
        if manifest.expires <= now:
            raise SyncRefusedError(Reason.EXPIRED, f"version {manifest.version} expired at "
                                   f"{_iso(manifest.expires)}; the unit's time is {_iso(now)}")
        unit = self.policy.unit_id
        if manifest.units is not None and (unit is None or unit not in manifest.units):
            raise SyncRefusedError(Reason.WRONG_UNIT, f"the bundle is for {len(manifest.units)} "
                                   f"named unit(s), not for {unit or 'an unnamed unit'}")
        model, dim = self._unit_model(live)
        if manifest.model_id != model or manifest.dim != dim:
            raise SyncRefusedError(Reason.MODEL_MISMATCH,
                                   f"the gallery holds {manifest.model_id} embeddings of dimension "
                                   f"{manifest.dim}; this unit runs {model} (dimension {dim})")
        if manifest.payload.length > self.policy.max_payload_bytes:
            raise SyncRefusedError(Reason.TOO_LARGE, f"the payload is {manifest.payload.length} "
                                   f"bytes; the cap is {self.policy.max_payload_bytes}")
        stored = max(self.layout.read_record().floor, live.version if live else 0)
        if manifest.version <= stored:
            if live is not None and live.digest == manifest.digest:
                raise _AlreadyCurrentError()
            raise SyncRefusedError(Reason.ROLLBACK, f"version {manifest.version} is not newer than "
                                   f"the stored version {stored}")
        if manifest.kind == "delta" and (
                live is None or live.gallery_id != manifest.gallery_id
                or live.version != manifest.base_version):
            unusable = self._unusable_live(live)
            have = (f"the unit's gallery {unusable} is damaged and cannot be its base: send a "
                    "full bundle" if unusable is not None else
                    "the unit holds no gallery" if live is None else
                    f"the unit holds {live.gallery_id} version {live.version}")
            raise SyncRefusedError(Reason.DELTA_BASE, f"the delta applies to {manifest.gallery_id} "
                                   f"version {manifest.base_version}; {have}")

    def examine(self, raw: bytes) -> Manifest | ApplyResult:
        """Check a received manifest; report it when it is refused or already live.

        Returns:
            The manifest when it should be applied (fetch its payload, then call
            :meth:`apply`); otherwise the reported outcome (``refused``, ``current``
            or ``error``).

        Raises:
            SyncError: Another process is applying a bundle right now.
        """
        with self._exclusive():
            live = self._safe_live()
            try:
                manifest = self._verified(raw)
            except SyncRefusedError as exc:
                return self._refused(exc, None, live)
            return self._vetted(manifest, live)

    def _vetted(self, manifest: Manifest, live: LiveInfo | None) -> Manifest | ApplyResult:
        try:
            self._vet(manifest, live)
        except _AlreadyCurrentError:
            return self._report_current(live)
        except SyncRefusedError as exc:
            return self._refused(exc, manifest, live)
        except SyncError as exc:
            return self._failed("config", exc, manifest, live)
        return manifest

    def apply(self, manifest: Manifest, fetch: Fetch) -> ApplyResult:
        """Apply a manifest from :meth:`examine`: fetch, build, check, switch, report.

        The manifest is vetted again (the live gallery may have changed meanwhile).
        Never raises for a bad bundle: the result says what happened.

        Args:
            manifest: A verified manifest.
            fetch: Produces the verified payload (see :class:`PartialPayload`).

        Returns:
            The outcome.

        Raises:
            SyncError: Another process is applying a bundle right now.
        """
        with self._exclusive():
            live = self._safe_live()
            vetted = self._vetted(manifest, live)
            if isinstance(vetted, ApplyResult):
                return vetted
            return self._apply(manifest, fetch, live)

    def process(self, raw: bytes, fetch: Fetch) -> ApplyResult:
        """:meth:`examine` and, when it passes, :meth:`apply`.

        Raises:
            SyncError: Another process is applying a bundle right now.
        """
        examined = self.examine(raw)
        if isinstance(examined, ApplyResult):
            return examined
        return self.apply(examined, fetch)

    def report_refused(self, exc: SyncRefusedError, manifest: Manifest | None) -> ApplyResult:
        """Report a refusal found outside :meth:`apply` (e.g. a forged MQTT chunk)."""
        with self._lock:
            return self._refused(exc, manifest, self._safe_live())

    def report_error(self, kind: str, exc: Exception, manifest: Manifest | None) -> ApplyResult:
        """Report a failure found outside :meth:`apply` (e.g. a staging directory error)."""
        with self._lock:
            return self._failed(kind, exc, manifest, self._safe_live())

    def expiry(self) -> float | None:
        """When the live gallery's manifest expires (None: not from a bundle, or no gallery)."""
        live = self._safe_live()
        return None if live is None or live.manifest is None else live.manifest.expires

    def check_expiry(self) -> ApplyResult | None:
        """Report the live gallery as stale once its manifest has expired.

        Expired manifests are refused, but a broker writer who simply withholds new
        ones would otherwise freeze the unit on its current gallery unnoticed (TUF's
        freeze attack). Matching continues on it (dropping the watch list would hand
        that same writer a denial of service); the state topic says it is stale.

        Returns:
            The reported outcome, or None while the live gallery is current.
        """
        with self._lock:
            live = self._safe_live()
            if live is None or live.manifest is None or live.manifest.expires > self.now():
                return None
            detail = (f"the live gallery (version {live.version}) expired at "
                      f"{_iso(live.manifest.expires)} and no newer bundle has arrived; "
                      "matching continues on it")
            return self._failed("expired", SyncError(detail), live.manifest, live)

    def apply_dir(self, directory: Path) -> ApplyResult:
        """Apply a bundle directory (``manifest.json`` + ``payload``), e.g. from a USB stick.

        Without a ``payload`` file the manifest's URL is used.

        Raises:
            SyncError: The manifest cannot be read, or another apply is running.
        """
        raw = _read_capped(directory / MANIFEST_FILE, self.policy.max_manifest_bytes)
        payload = directory / PAYLOAD_NAME

        def fetch(manifest: Manifest, part: PartialPayload) -> Path:
            if payload.is_file() or manifest.payload.url is None:
                return copy_file(payload, part)
            return fetch_http(manifest.payload.url, part,
                              allow_insecure=self.policy.allow_insecure_http,
                              timeout_s=self.policy.http_timeout_s)

        return self.process(raw, fetch)

    def fetch_url(self, manifest: Manifest, part: PartialPayload) -> Path:
        """A :data:`Fetch` that downloads the manifest's URL.

        Raises:
            SyncRefusedError: No URL, an insecure one, or bad content.
            SyncError: The download fails (resumable).
        """
        if manifest.payload.url is None:
            raise SyncRefusedError(Reason.MALFORMED, "the manifest names no payload URL")
        return fetch_http(manifest.payload.url, part,
                          allow_insecure=self.policy.allow_insecure_http,
                          timeout_s=self.policy.http_timeout_s)

    def staging_dir(self, manifest: Manifest) -> Path:
        """The directory a manifest's download goes to (created, with the manifest in it).

        Raises:
            OSError: It cannot be created.
        """
        stage = self.layout.staging / manifest.digest
        if not (stage / MANIFEST_FILE).is_file():
            self._cp("stage.mkdir")
            self.layout.staging.mkdir(mode=0o700, parents=True, exist_ok=True)
            stage.mkdir(mode=0o700, exist_ok=True)
            self._cp("stage.manifest")
            (stage / MANIFEST_FILE).write_bytes(manifest.encode())
            self._cp("stage.fsync_dir")
            fsync_dir(stage)
            fsync_dir(stage.parent)
        return stage

    # ------------------------------------------------------------ the apply

    def _apply(self, manifest: Manifest, fetch: Fetch, live: LiveInfo | None) -> ApplyResult:
        previous = live.version if live else 0
        self._report(GalleryState.of(live, outcome="applying", status="syncing", reason=None,
                                     message=f"applying version {manifest.version}",
                                     model_id=self.policy.model_id, now=self._clock(),
                                     last_refusal=self.layout.read_record().refusal))
        build = self.layout.versions / f"v{manifest.version}.tmp"
        try:
            stage = self.staging_dir(manifest)
            part = PartialPayload(stage, manifest.payload, self._cp)
            payload = part.final if part.final.is_file() else fetch(manifest, part)
            _check_hash(payload, manifest)
            return self._install(manifest, payload, stage, build, live, previous)
        except SyncRefusedError as exc:
            self._discard(build, self.layout.staging / manifest.digest)
            return self._refused(exc, manifest, live)
        except (SyncError, GalleryError, OSError, sqlite3.Error) as exc:
            self._discard(build, None)
            kind = "download" if isinstance(exc, SyncError) else "build"
            return self._failed(kind, exc, manifest, self._safe_live())

    def _install(self, manifest: Manifest, payload: Path, stage: Path, build: Path,
                 live: LiveInfo | None, previous: int) -> ApplyResult:
        cp = self._cp
        model, dim = self._unit_model(live)
        self.layout.remove(build, "build")
        cp("build.mkdir")
        self.layout.versions.mkdir(mode=0o700, parents=True, exist_ok=True)
        build.mkdir(mode=0o700)
        if manifest.kind == "delta":
            if live is None:  # _vet refused this already; keep mypy and readers sure
                raise SyncRefusedError(Reason.DELTA_BASE, "no gallery to apply a delta to")
            full = stage / "full.jsonl"
            base = self._export_live(live, stage)
            cp("delta.materialize")
            materialize_delta(payload, manifest, base, full)
        else:
            check_full(payload, manifest)
            full = payload
        db = build / GALLERY_FILE
        cp("build.create")
        with GalleryStore(db, model_id=model, dim=dim, create=True, clock=self._clock) as store:
            cp("build.import")
            try:
                store.import_(full)
            except GalleryError as exc:
                raise SyncRefusedError(Reason.BAD_PAYLOAD, f"the gallery cannot be built: {exc}"
                                       ) from exc
            cp("build.version")
            store.bump_version(to=manifest.version)
        cp("build.gallery_id")
        _set_gallery_id(db, manifest.gallery_id)
        cp("build.check")
        _check_candidate(db, manifest, model, dim)
        cp("build.fsync_db")
        storage.make_private(db)  # biometric data, whatever the umask (created 0600 too)
        fsync_file(db)
        cp("build.manifest")
        (build / MANIFEST_FILE).write_bytes(manifest.encode())
        cp("build.fsync_manifest")
        fsync_file(build / MANIFEST_FILE)
        cp("build.fsync_dir")
        fsync_dir(build)
        final = self.layout.version_dir(manifest.version)
        self.layout.remove(final, "stale")
        cp("build.rename")
        os.replace(build, final)
        cp("build.fsync_versions")
        fsync_dir(self.layout.versions)
        old_dir = self.layout.live_dir()
        self.layout.switch(final / GALLERY_FILE)  # the commit point
        if self.on_switched is not None:
            cp("reload")
            try:
                self.on_switched(final / GALLERY_FILE, manifest.version)
            except Exception as exc:  # the pipeline's failure, reported, not swallowed
                return self._reload_failed(exc, manifest, final, old_dir)
        record = self.layout.read_record()
        record = replace(record, floor=max(record.floor, manifest.version),
                         clock_floor=max(record.clock_floor, manifest.created),
                         status="active", reason=None, message=None, updated_at=self._clock())
        self.layout.write_record(record)
        now_live = self._safe_live()
        self._audit_applied(previous, manifest, now_live)
        if old_dir is not None and old_dir != final:
            self.layout.remove(old_dir, "old")
        self.layout.remove(stage, "staging")
        logger.info("gallery version %d -> %d applied (%s, %d identities)", previous,
                    manifest.version, manifest.digest[:16], manifest.identities)
        state = GalleryState.of(now_live, outcome="ok", status="active", reason=None,
                                message=None, model_id=self.policy.model_id, now=self._clock(),
                                last_refusal=record.refusal)
        self._report(state)
        return ApplyResult("ok", manifest.version, previous, manifest.digest, None, None, state)

    def _export_live(self, live: LiveInfo, stage: Path) -> ExportFile:
        out = stage / "base.jsonl"
        self._cp("delta.export")
        with GalleryStore(live.path, read_only=True) as store:
            store.export(out, overwrite=True)
        try:
            return read_export(out)
        finally:
            out.unlink(missing_ok=True)

    def _reload_failed(self, exc: Exception, manifest: Manifest, final: Path,
                       old_dir: Path | None) -> ApplyResult:
        logger.error("the search index could not load gallery version %d: %s",
                     manifest.version, exc)
        if old_dir is not None:
            self.layout.switch(old_dir / GALLERY_FILE)
            self.layout.remove(final, "rollback")
            detail = (f"version {manifest.version} was built but the search index could not "
                      f"load it ({exc}); switched back")
        else:
            record = self.layout.read_record()
            self.layout.write_record(replace(record, floor=max(record.floor, manifest.version)))
            detail = (f"version {manifest.version} is installed but the search index could not "
                      f"load it ({exc}); restart the service")
        return self._failed("reload", SyncError(detail), manifest, self._safe_live())

    def _discard(self, build: Path, stage: Path | None) -> None:
        for path, name in ((build, "build"), (stage, "staging")):
            if path is None:
                continue
            try:
                self.layout.remove(path, name)
            except OSError as exc:
                logger.warning("cannot remove %s: %s", path, exc)

    # ------------------------------------------------------------- reporting

    def _unusable_live(self, live: LiveInfo | None) -> Path | None:
        """The live gallery file when one exists but could not be read (else None)."""
        return self.layout.live_target() if live is None else None

    def _safe_live(self) -> LiveInfo | None:
        try:
            return self.layout.live_info()
        except OSError as exc:
            logger.error("%s", exc)
            return None

    def _report(self, state: GalleryState) -> None:
        if self.on_state is None:
            return
        try:
            self.on_state(state)
        except Exception as exc:  # a reporting failure must not undo an apply
            logger.error("gallery state report failed: %s", exc)

    def _report_current(self, live: LiveInfo | None) -> ApplyResult:
        state = GalleryState.of(live, outcome="current", status="active", reason=None,
                                message=None, model_id=self.policy.model_id, now=self._clock(),
                                last_refusal=self.layout.read_record().refusal)
        self._report(state)
        version = live.version if live else 0
        return ApplyResult("current", version, version, live.digest if live else None, None,
                           None, state)

    def _may_record(self, manifest: Manifest | None) -> bool:
        """Whether a refusal may be written to disk (state file, audit log).

        Anyone who can write to the broker can send unsigned garbage as fast as the
        broker forwards it; refusals of manifests that never verified are written at
        most once per :data:`UNVERIFIED_RECORD_INTERVAL_S` (they are still logged and
        published), so they cannot wear out an SD card or flood the audit log.
        """
        if manifest is not None:
            return True
        now = self._clock()
        if now - self._last_unverified_record < UNVERIFIED_RECORD_INTERVAL_S:
            return False
        self._last_unverified_record = now
        return True

    def _remember(self, status: str, reason: str, message: str) -> bool:
        """Store the last failure; False when it repeats the stored one (a flood)."""
        record = self.layout.read_record()
        if record.message == message and record.reason == reason:
            return False
        try:
            self.layout.write_record(replace(record, status="failed", reason=reason,
                                             message=message, updated_at=self._clock()))
        except OSError as exc:
            logger.error("cannot record the sync failure: %s", exc)
        return True

    def _remember_refusal(self, refusal: Refusal) -> bool:
        """Store the last refusal (the live gallery's state stays); False when it repeats."""
        record = self.layout.read_record()
        last = record.refusal
        if last is not None and (last.reason, last.message) == (refusal.reason, refusal.message):
            return False
        try:
            self.layout.write_record(replace(record, refusal=refusal))
        except OSError as exc:
            logger.error("cannot record the sync refusal: %s", exc)
        return True

    def _refused(self, exc: SyncRefusedError, manifest: Manifest | None,
                 live: LiveInfo | None) -> ApplyResult:
        message = str(exc)
        version = live.version if live else 0
        logger.warning("gallery bundle%s refused: %s",
                       f" version {manifest.version}" if manifest else "", message)
        refusal = Refusal(exc.reason.value, message, manifest.version if manifest else None,
                          manifest.digest if manifest else None, self._clock())
        if self._may_record(manifest) and self._remember_refusal(
                refusal) and self.audit is not None:
            try:
                self.audit.record_sync_refused(
                    to_version=manifest.version if manifest else None,
                    bundle_sha256=manifest.digest if manifest else None, reason=message)
            except AuditError as err:
                logger.error("cannot audit the refusal: %s", err)
        state = replace(state_of_record(self.layout.read_record(), live,
                                        model_id=self.policy.model_id, now=self._clock()),
                        outcome="refused", last_refusal=refusal)
        self._report(state)
        return ApplyResult("refused", version, version, manifest.digest if manifest else None,
                           exc.reason.value, message, state)

    def _failed(self, kind: str, exc: Exception, manifest: Manifest | None,
                live: LiveInfo | None) -> ApplyResult:
        message = f"error ({kind}): {exc}"
        version = live.version if live else 0
        logger.error("gallery bundle%s not applied: %s",
                     f" version {manifest.version}" if manifest else "", message)
        self._remember("failed", kind, message)
        state = GalleryState.of(live, outcome="error", status="failed", reason=kind,
                                message=message, model_id=self.policy.model_id,
                                now=self._clock(),
                                last_refusal=self.layout.read_record().refusal)
        self._report(state)
        return ApplyResult("error", version, version, manifest.digest if manifest else None,
                           kind, message, state)

    def _audit_applied(self, previous: int, manifest: Manifest, live: LiveInfo | None) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record_sync_applied(
                from_version=previous, to_version=manifest.version,
                bundle_sha256=manifest.digest,
                identities=live.identities if live else manifest.identities)
        except AuditError as exc:
            logger.error("cannot audit the applied gallery: %s", exc)


# ------------------------------------------------------------- module helpers


def read_status(layout: GalleryLayout, *, model_id: str | None = None,
                clock: Callable[[], float] = time.time) -> GalleryState:
    """The last recorded sync outcome, for the live gallery as it is now (no keys needed).

    A live gallery that is damaged or unreadable is reported as ``failed`` with the
    reason in ``message`` (and version 0: nothing usable is live).
    """
    record = layout.read_record()
    try:
        live = layout.live_info()
    except OSError as exc:  # damaged or unreadable: say so; the next sync replaces it
        return GalleryState.of(None, outcome="error", status="failed", reason=None,
                               message=f"the live gallery is not usable: {exc}",
                               model_id=model_id, now=clock(), last_refusal=record.refusal)
    return state_of_record(record, live, model_id=model_id, now=record.updated_at or clock())


def state_of_record(record: SyncRecord, live: LiveInfo | None, *, model_id: str | None,
                    now: float) -> GalleryState:
    """The state of the live gallery ``live`` as ``record`` last described it."""
    outcome: Outcome = "error" if record.status == "failed" else "ok"
    status = record.status if record.status != "syncing" else "active"
    if live is not None and status == "empty":
        status = "active"
    failed = status == "failed"
    return GalleryState.of(live, outcome=outcome, status=status,
                           reason=record.reason if failed else None,
                           message=record.message if failed else None, model_id=model_id,
                           now=now, last_refusal=record.refusal)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _read_capped(path: Path, cap: int) -> bytes:
    """Read at most ``cap + 1`` bytes (the parser refuses anything over ``cap``).

    Raises:
        SyncError: The file cannot be read.
    """
    try:
        with path.open("rb") as fh:
            return fh.read(cap + 1)
    except OSError as exc:
        raise SyncError(f"cannot read {path}: {exc}") from exc


def _check_hash(payload: Path, manifest: Manifest) -> None:
    digest = hashlib.sha256()
    size = 0
    with payload.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
            size += len(block)
    if size != manifest.payload.length or digest.hexdigest() != manifest.payload.sha256:
        payload.unlink()
        raise SyncRefusedError(Reason.HASH_MISMATCH, "the staged payload is not the signed one")


def _set_gallery_id(db: Path, gallery_id: str) -> None:
    conn = connect(db, "rw", 5.0)
    try:
        with storage.atomic(conn):
            conn.execute("UPDATE metadata SET gallery_id = ? WHERE id = 1", (gallery_id,))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _check_candidate(db: Path, manifest: Manifest, model: str, dim: int) -> None:
    report = integrity_check(db, expect_model_id=model, expect_dim=dim)
    problems = list(report.problems)
    if report.ok:
        got = (report.gallery_id, report.version, report.identities, report.faces)
        want = (manifest.gallery_id, manifest.version, manifest.identities, manifest.faces)
        if got != want:
            problems.append(f"built (gallery, version, identities, faces) {got}, the manifest "
                            f"says {want}")
    wal = db.with_name(db.name + "-wal")
    if wal.exists() and wal.stat().st_size:
        problems.append("the WAL was not checkpointed")
    if problems:
        raise SyncRefusedError(Reason.BAD_PAYLOAD, "the built gallery failed its check: "
                               + "; ".join(problems))

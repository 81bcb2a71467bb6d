"""Where a synced gallery lives on disk, how it is switched, and crash recovery.

Layout, for a live gallery path ``<dir>/gallery.db``::

    <dir>/gallery.db                   symlink -> gallery.db.sync/versions/v7/gallery.db
    <dir>/gallery.db.sync/
        versions/v7/gallery.db         the live gallery (its metadata says version 7)
        versions/v7/manifest.json      the signed manifest it was built from
        versions/v8.tmp/               a gallery being built (never live)
        staging/<digest>/              a download in progress (kept to resume)
        sync_state.json                version floor, last status and message

Why it is crash safe (the A/B idea of RAUC and Mender, in one directory):

* A new gallery is built completely in ``versions/v<N>.tmp``, checked, fsynced, and
  renamed to ``versions/v<N>``; the live gallery is never written.
* The switch is one ``rename()`` of a new symlink over ``gallery.db``, followed by
  an fsync of the directory. Before it, ``gallery.db`` resolves to the old file;
  after it, to the new one. There is no state in between.
* The **version is stored in the gallery file itself** (its metadata row), so the
  live gallery and "the stored version" cannot disagree: they are the same bytes.
  ``sync_state.json`` keeps a *floor* (the highest version ever applied, against a
  gallery that is later replaced by hand) which :func:`recover` raises to the live
  version if a crash came between the switch and the floor's update.
* :func:`GalleryLayout.recover` runs at start-up: it deletes half-built versions,
  versions that are not live (an interrupted switch rolls back to the old one), a
  stray switch symlink, and finished or stale downloads, and repairs the floor.

Before the first sync ``gallery.db`` may be a plain file (enrolled locally); the
first switch replaces it with the symlink.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

from device.gallery.integrity import damaged, open_problems
from device.gallery.schema import connect, read_metadata
from device.sync.fsutil import (
    Checkpoint,
    atomic_write,
    fsync_dir,
    no_checkpoint,
    remove_tree,
)
from device.sync.manifest import Manifest, parse_manifest
from device.sync.reasons import SyncRefusedError

logger = logging.getLogger(__name__)

GALLERY_FILE: Final = "gallery.db"
MANIFEST_FILE: Final = "manifest.json"
STATE_FILE: Final = "sync_state.json"
STATE_FORMAT: Final = "facegate-sync-state/1"
_VERSION_DIR: Final = re.compile(r"v(\d+)")

Status = Literal["active", "syncing", "failed", "empty"]


@dataclass(frozen=True)
class LiveInfo:
    """What the live gallery is.

    Attributes:
        path: The resolved gallery file.
        version: Its version (metadata).
        gallery_id: Its gallery id.
        model_id: Its embedder.
        dim: Its embedding dimension.
        identities: Identities it holds.
        faces: Faces it holds.
        manifest: The manifest it was built from; None for a locally built gallery.
    """

    path: Path
    version: int
    gallery_id: str
    model_id: str
    dim: int
    identities: int
    faces: int
    manifest: Manifest | None

    @property
    def digest(self) -> str | None:
        return None if self.manifest is None else self.manifest.digest


@dataclass(frozen=True)
class Refusal:
    """The last bundle the unit refused; it says nothing about the live gallery.

    Attributes:
        reason: The refusal code.
        message: Sentence for a person (``refused (<reason>): <detail>``).
        version: The refused bundle's version, when its manifest could be read.
        bundle_sha256: Its digest, likewise.
        at: When it was refused, seconds since the epoch.
    """

    reason: str
    message: str
    version: int | None
    bundle_sha256: str | None
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, "version": self.version,
                "bundle_sha256": self.bundle_sha256, "at": self.at}

    @classmethod
    def from_json(cls, obj: Any) -> Refusal:
        """Parse; raises ValueError/TypeError/KeyError on anything unexpected."""
        if not isinstance(obj, dict):
            raise TypeError("refusal is not an object")
        version = obj["version"]
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise ValueError("bad refusal version")
        digest = obj["bundle_sha256"]
        if digest is not None and not isinstance(digest, str):
            raise ValueError("bad refusal digest")
        return cls(str(obj["reason"]), str(obj["message"]), version, digest, float(obj["at"]))


@dataclass(frozen=True)
class SyncRecord:
    """The content of ``sync_state.json``.

    Attributes:
        floor: Highest version ever applied; a manifest must exceed it.
        clock_floor: ``created`` of the newest applied manifest: the unit's clock is
            never trusted to be earlier (a Pi without a real-time clock may boot in
            1970, which would make every expired manifest look fresh).
        status: Last reported state of the live gallery.
        reason: Error code of the last failure, if the last outcome failed.
        message: Sentence for a person about the last outcome.
        updated_at: When this record was written.
        refusal: The last refused bundle, if any (it leaves ``status`` alone).
    """

    floor: int = 0
    clock_floor: float = 0.0
    status: Status = "empty"
    reason: str | None = None
    message: str | None = None
    updated_at: float = 0.0
    refusal: Refusal | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "floor": self.floor, "clock_floor": self.clock_floor,
                "status": self.status, "reason": self.reason, "message": self.message,
                "updated_at": self.updated_at,
                "refusal": None if self.refusal is None else self.refusal.to_json()}

    @classmethod
    def from_json(cls, obj: Any) -> SyncRecord:
        """Parse; raises ValueError/TypeError/KeyError on anything unexpected."""
        if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
            raise ValueError("not a sync state record")
        status = obj["status"]
        if status not in ("active", "syncing", "failed", "empty"):
            raise ValueError("bad status")
        floor = obj["floor"]
        if isinstance(floor, bool) or not isinstance(floor, int) or floor < 0:
            raise ValueError("bad floor")
        refusal = None if obj.get("refusal") is None else Refusal.from_json(obj["refusal"])
        reason, message, updated = obj.get("reason"), obj.get("message"), float(obj["updated_at"])
        if status == "failed" and refusal is None and str(message).startswith("refused ("):
            # Written before refusals had their own place: a refusal left the gallery as it was.
            refusal = Refusal(str(reason), str(message), None, None, updated)
            status, reason, message = "active", None, None
        return cls(floor, float(obj["clock_floor"]), status, reason, message, updated, refusal)


@dataclass(frozen=True)
class RecoverReport:
    """What :meth:`GalleryLayout.recover` did.

    Attributes:
        live_version: Version of the live gallery afterwards (None: no gallery).
        removed: Paths deleted.
        floor_raised: True when the floor was raised to the live version.
    """

    live_version: int | None
    removed: tuple[str, ...]
    floor_raised: bool


class GalleryLayout:
    """The files of one unit's synced gallery.

    Args:
        live: The gallery path every reader opens (``<state dir>/gallery.db``).
        checkpoint: Called with a name before every step that changes the disk.
        scrub: Overwrite superseded galleries with zeros before deleting them.
    """

    def __init__(self, live: Path, *, checkpoint: Checkpoint = no_checkpoint,
                 scrub: bool = True) -> None:
        self.live = Path(os.path.abspath(live))
        self.root = self.live.with_name(self.live.name + ".sync")
        self.versions = self.root / "versions"
        self.staging = self.root / "staging"
        self.state_file = self.root / STATE_FILE
        self.switch_link = self.live.with_name(f".{self.live.name}.switch")
        self._cp = checkpoint
        self.scrub = scrub

    # -------------------------------------------------------------- reading

    def version_dir(self, version: int) -> Path:
        return self.versions / f"v{version}"

    def live_target(self) -> Path | None:
        """The file ``live`` resolves to, or None when there is no gallery."""
        if not self.live.exists():
            return None
        return self.live.resolve()

    def live_dir(self) -> Path | None:
        """The version directory the live gallery is in; None when not a synced one."""
        target = self.live_target()
        if target is None or not self.live.is_symlink():
            return None
        if target.parent.parent != self.versions.resolve():
            return None
        return target.parent

    def live_info(self) -> LiveInfo | None:
        """Read the live gallery's metadata and counts (read-only).

        Returns:
            None when there is no gallery file.

        Raises:
            OSError: The file exists but cannot be read as a gallery (the message
                says why).
        """
        target = self.live_target()
        if target is None:
            return None
        try:
            conn = connect(target, "ro", 5.0)
        except sqlite3.Error as exc:
            raise OSError(f"cannot open live gallery {target}: {exc}") from exc
        try:
            problems = open_problems(conn, target)
            if problems:
                raise OSError(str(damaged(target, problems)))
            conn.execute("BEGIN")
            meta = read_metadata(conn)
            counts = conn.execute("SELECT (SELECT count(*) FROM identities), "
                                  "(SELECT count(*) FROM faces)").fetchone()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OSError(f"cannot read live gallery {target}: {exc}") from exc
        finally:
            conn.close()
        if meta is None:
            raise OSError(f"live gallery {target} has no metadata row")
        manifest: Manifest | None = None
        live_dir = self.live_dir()
        if live_dir is not None and (live_dir / MANIFEST_FILE).is_file():
            try:
                manifest = parse_manifest((live_dir / MANIFEST_FILE).read_bytes())
            except (OSError, SyncRefusedError) as exc:  # a damaged copy only loses the digest
                logger.warning("cannot read %s: %s", live_dir / MANIFEST_FILE, exc)
        return LiveInfo(target, meta.version, meta.gallery_id, meta.model_id, meta.dim,
                        int(counts[0]), int(counts[1]), manifest)

    def read_record(self) -> SyncRecord:
        """The sync state record; a default one when missing or unreadable."""
        try:
            return SyncRecord.from_json(json.loads(self.state_file.read_bytes()))
        except FileNotFoundError:
            return SyncRecord()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.warning("sync state %s unreadable (%s); rebuilding it from the gallery",
                           self.state_file, exc)
            return SyncRecord()

    # -------------------------------------------------------------- writing

    def write_record(self, record: SyncRecord) -> None:
        """Replace the sync state record atomically.

        Raises:
            OSError: It cannot be written.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        data = json.dumps(record.to_json(), sort_keys=True).encode() + b"\n"
        atomic_write(self.state_file, data, checkpoint=self._cp, name="state")

    def switch(self, target: Path) -> None:
        """Point ``live`` at ``target`` with one atomic rename.

        Raises:
            OSError: The symlink cannot be made or renamed.
        """
        rel = os.path.relpath(target, self.live.parent)
        self._cp("switch.clean")
        self.switch_link.unlink(missing_ok=True)
        self._cp("switch.symlink")
        os.symlink(rel, self.switch_link)
        self._cp("switch.rename")
        os.replace(self.switch_link, self.live)
        self._cp("switch.fsync_dir")
        fsync_dir(self.live.parent)
        logger.info("gallery %s now points at %s", self.live, rel)

    def remove(self, path: Path, name: str) -> None:
        """Delete a version or staging directory (scrubbed when configured).

        Raises:
            OSError: It cannot be deleted.
        """
        if not path.exists() and not path.is_symlink():
            return
        self._cp(f"{name}.remove")
        remove_tree(path, scrub=self.scrub and name != "staging")
        self._cp(f"{name}.fsync_dir")
        fsync_dir(path.parent)

    # ------------------------------------------------------------- recovery

    def recover(self) -> RecoverReport:
        """Bring the files back to "old gallery or new gallery" after a crash.

        Safe to run at every start-up and before every apply; idempotent.

        Returns:
            What it did.

        Raises:
            OSError: A file cannot be read or deleted.
        """
        removed: list[str] = []
        if self.switch_link.is_symlink() or self.switch_link.exists():
            self._cp("recover.switch_link")
            self.switch_link.unlink()
            fsync_dir(self.live.parent)
            removed.append(str(self.switch_link))
        live_dir = self.live_dir()
        if self.live.is_symlink():
            if not self.live.exists():
                logger.error("gallery %s points at a missing file; sync a new gallery", self.live)
            for suffix in ("-wal", "-shm", "-journal"):  # a replaced plain file's leftovers
                stale = self.live.with_name(self.live.name + suffix)
                if stale.exists():
                    self._cp(f"recover.stale{suffix}")
                    stale.unlink()
                    removed.append(str(stale))
        try:
            info = self.live_info() if self.live.exists() else None
        except OSError as exc:  # a damaged live gallery: the next sync replaces it
            logger.error("%s", exc)
            info = None
        live_version = None if info is None else info.version
        if self.versions.is_dir():
            for entry in sorted(self.versions.iterdir()):
                if live_dir is not None and entry.resolve() == live_dir:
                    continue
                self.remove(entry, "recover.version")
                removed.append(str(entry))
        if self.staging.is_dir():
            for entry in sorted(self.staging.iterdir()):
                if not self._staging_useful(entry, live_version):
                    self.remove(entry, "staging")
                    removed.append(str(entry))
        tmp_state = self.state_file.with_name(f".{self.state_file.name}.tmp")
        if tmp_state.exists():
            self._cp("recover.state_tmp")
            tmp_state.unlink()
            removed.append(str(tmp_state))
        record = self.read_record()
        raised = False
        if info is not None and (info.version > record.floor or not self.state_file.exists()):
            clock_floor = record.clock_floor
            if info.manifest is not None:
                clock_floor = max(clock_floor, info.manifest.created)
            record = replace(record, floor=max(record.floor, info.version),
                             clock_floor=clock_floor, status="active", reason=None,
                             message=None)
            self._cp("recover.floor")
            self.write_record(record)
            raised = True
        if removed or raised:
            logger.info("gallery sync recovery: live version %s, removed %d leftovers%s",
                        live_version, len(removed), ", floor raised" if raised else "")
        return RecoverReport(live_version, tuple(removed), raised)

    def _staging_useful(self, entry: Path, live_version: int | None) -> bool:
        """A download is worth keeping if its manifest is readable and newer than live."""
        if not entry.is_dir():
            return False
        try:
            manifest = parse_manifest((entry / MANIFEST_FILE).read_bytes())
        except (OSError, SyncRefusedError):  # anything unreadable is a leftover
            return False
        return manifest.digest == entry.name and manifest.version > (live_version or 0)

"""The operator's side: building, signing and reading bundle directories.

A bundle directory holds ``manifest.json`` (signed) and ``payload`` (the snapshot or
delta). It is created with mode 0700 and its files 0600: the payload holds
biometric data. ``facegate sync publish`` sends it over MQTT; ``facegate sync
apply`` installs it from a USB stick.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.errors import GalleryError, SyncError
from device.gallery.exchange import ExportFile
from device.sync.fsutil import atomic_write, fsync_dir
from device.sync.layout import MANIFEST_FILE
from device.sync.manifest import (
    MAX_CHUNK_SIZE,
    MAX_MANIFEST_BYTES,
    MIN_CHUNK_SIZE,
    Manifest,
    PayloadInfo,
    format_time,
    parse_manifest,
    unsigned,
)
from device.sync.payload import (
    PayloadSummary,
    check_full,
    export_gallery,
    write_delta,
    write_full,
)
from device.sync.reasons import SyncRefusedError
from device.sync.transport import PAYLOAD_NAME

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE: Final = 256 * 1024
DEFAULT_EXPIRES_S: Final = 30 * 86400


@dataclass(frozen=True)
class BuiltBundle:
    """A bundle directory just written.

    Attributes:
        directory: Where it is.
        manifest: Its signed manifest.
        summary: What its payload holds.
    """

    directory: Path
    manifest: Manifest
    summary: PayloadSummary

    def to_json(self) -> dict[str, object]:
        m = self.manifest
        return {"directory": str(self.directory), "bundle_sha256": m.digest,
                "gallery_id": m.gallery_id, "version": m.version, "kind": m.kind,
                "base_version": m.base_version, "identities": m.identities, "faces": m.faces,
                "removed": self.summary.removed, "added": self.summary.added,
                "payload_bytes": m.payload.length, "chunks": len(m.payload.chunks),
                "expires": m.body()["expires"], "signed_by": [s.keyid for s in m.signatures]}


def describe_payload(path: Path, chunk_size: int, url: str | None) -> PayloadInfo:
    """Hash a payload file whole and per chunk.

    Raises:
        OSError: The file cannot be read.
    """
    whole = hashlib.sha256()
    chunks: list[str] = []
    length = 0
    with path.open("rb") as fh:
        while block := fh.read(chunk_size):
            whole.update(block)
            chunks.append(hashlib.sha256(block).hexdigest())
            length += len(block)
    assert len(chunks) == math.ceil(length / chunk_size)
    return PayloadInfo(whole.hexdigest(), length, chunk_size, tuple(chunks), url)


@dataclass(frozen=True)
class _Base:
    export: ExportFile
    gallery_id: str
    version: int


def _read_base(path: Path, base_version: int | None, scratch: Path) -> _Base:
    if path.is_dir():
        manifest, payload = read_bundle(path)
        if manifest.kind != "full":
            raise SyncError(f"{path} is a delta bundle; a delta needs a full snapshot (or a "
                            "gallery file with --base-version) as its base")
        try:
            export = check_full(payload, manifest)
        except SyncRefusedError as exc:
            raise SyncError(f"{path}: {exc.detail}") from exc
        return _Base(export, manifest.gallery_id, manifest.version)
    export = export_gallery(path, scratch)
    version = base_version if base_version is not None else export.header.get("version")
    if not isinstance(version, int) or version < 1:
        raise SyncError(f"{path} does not say which published version it is; "
                        "pass --base-version")
    return _Base(export, str(export.header.get("gallery_id")), version)


def build_bundle(
    gallery: Path,
    out_dir: Path,
    *,
    version: int,
    keys: Sequence[Ed25519PrivateKey],
    delta_from: Path | None = None,
    base_version: int | None = None,
    gallery_id: str | None = None,
    expires_in_s: int = DEFAULT_EXPIRES_S,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    url: str | None = None,
    units: Sequence[str] | None = None,
    clock: Callable[[], float] = time.time,
) -> BuiltBundle:
    """Build and sign a bundle directory.

    Args:
        gallery: The new gallery: a ``.db`` gallery file or a ``.jsonl`` export.
        out_dir: The bundle directory to create (must not exist or be empty).
        version: The bundle's version; units accept only increasing versions.
        keys: Signing keys (at least the units' threshold of them).
        delta_from: Make a delta against this base: a full bundle directory, or a
            gallery file/export together with ``base_version``.
        base_version: The published version of a ``delta_from`` gallery file.
        gallery_id: The gallery's lineage id; default: the gallery file's id.
        expires_in_s: Seconds until units refuse the bundle.
        chunk_size: MQTT chunk size in bytes.
        url: Optional HTTPS URL the payload will be served from.
        units: Restrict the bundle to these unit ids; None for the whole fleet.
        clock: Seconds since the epoch.

    Returns:
        What was built.

    Raises:
        SyncError: Bad arguments, an unusable base, or files that cannot be written.
    """
    if not keys:
        raise SyncError("a bundle needs at least one signing key (--key)")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise SyncError(f"chunk size must be {MIN_CHUNK_SIZE}–{MAX_CHUNK_SIZE} bytes")
    if expires_in_s <= 0:
        raise SyncError("the expiry must be in the future")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SyncError(f"{out_dir} exists and is not an empty directory")
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = export_gallery(gallery, out_dir)
        gid = gallery_id or str(target.header.get("gallery_id"))
        payload = out_dir / PAYLOAD_NAME
        tmp = out_dir / f".{PAYLOAD_NAME}.tmp"
        base: _Base | None = None
        if delta_from is not None:
            base = _read_base(delta_from, base_version, out_dir)
            if base.gallery_id != gid:
                raise SyncError(f"the base is gallery {base.gallery_id}, the new one is {gid}; "
                                "a delta continues one gallery (build a full snapshot)")
            if version <= base.version:
                raise SyncError(f"version {version} must exceed the base's {base.version}")
            summary = write_delta(base.export, target, tmp, gallery_id=gid,
                                  base_version=base.version, version=version)
        else:
            summary = write_full(target, tmp, gallery_id=gid, version=version)
        os.chmod(tmp, 0o600)
        os.replace(tmp, payload)
        info = describe_payload(payload, chunk_size, url)
        created = float(int(clock()))
        body: dict[str, object] = {
            "gallery_id": gid, "version": version,
            "created": format_time(created), "expires": format_time(created + expires_in_s),
            "model_id": target.header.get("model_id"), "dim": target.header.get("dim"),
            "kind": "delta" if base else "full",
            "base_version": base.version if base else None,
            "units": sorted(set(units)) if units else None,
            "identities": summary.identities, "faces": summary.faces,
            "payload": info.to_json(),
        }
        manifest = unsigned(**body)
        for key in keys:
            manifest = manifest.sign(key)
        _write_manifest(out_dir, manifest)
        fsync_dir(out_dir)
    except SyncRefusedError as exc:
        raise SyncError(f"cannot build the bundle: {exc.detail}") from exc
    except (OSError, GalleryError) as exc:
        raise SyncError(f"cannot build the bundle in {out_dir}: {exc}") from exc
    logger.info("built %s bundle version %d (%s) in %s", manifest.kind, version,
                manifest.digest[:16], out_dir)
    return BuiltBundle(out_dir, manifest, PayloadSummary(payload, summary.identities,
                                                         summary.faces, summary.removed,
                                                         summary.added))


def _write_manifest(directory: Path, manifest: Manifest) -> None:
    data = manifest.encode()
    if len(data) > MAX_MANIFEST_BYTES:
        raise SyncError(f"the manifest would be {len(data)} bytes (cap {MAX_MANIFEST_BYTES}); "
                        "use a larger --chunk-size")
    atomic_write(directory / MANIFEST_FILE, data, mode=0o600)


def read_bundle(directory: Path) -> tuple[Manifest, Path]:
    """The manifest (parsed, not verified) and payload path of a bundle directory.

    Raises:
        SyncError: The directory is not a bundle.
    """
    path = directory / MANIFEST_FILE
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
        manifest = parse_manifest(raw)
    except OSError as exc:
        raise SyncError(f"cannot read {path}: {exc}") from exc
    except SyncRefusedError as exc:
        raise SyncError(f"{path}: {exc.detail}") from exc
    return manifest, directory / PAYLOAD_NAME


def sign_bundle(directory: Path, key: Ed25519PrivateKey) -> Manifest:
    """Add a signature to a bundle's manifest (threshold signing by several people).

    Raises:
        SyncError: The directory is not a bundle or cannot be written.
    """
    manifest, _ = read_bundle(directory)
    signed = manifest.sign(key)
    try:
        _write_manifest(directory, signed)
    except OSError as exc:
        raise SyncError(f"cannot write {directory / MANIFEST_FILE}: {exc}") from exc
    return signed

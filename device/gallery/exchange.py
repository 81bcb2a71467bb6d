"""The portable gallery export format: JSON Lines with a checksummed header.

Line 1 is a header object::

    {"format": "facegate-gallery-export", "format_version": 1, "gallery_id": …,
     "version": …, "model_id": …, "dim": …, "exported_at": …, "identities": N,
     "faces": M, "content_sha256": "<sha256 of every byte after line 1>"}

Each further line is one identity object (``id``, ``label``, ``external_ref``,
``notes``, ``enrolled_by``, ``legal_basis``, ``consent_ref``, ``created_at``,
``expires_at`` as seconds since the epoch) with a ``faces`` list; each face has
``quality``, ``image_sha256``, ``created_at`` and ``embedding``: base64 of ``dim``
little-endian float32. Keys are sorted and separators compact, so one gallery
always exports to the same content bytes.

This module only reads and writes the format; :class:`~device.gallery.store.GalleryStore`
validates the content against a gallery.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from device.errors import GalleryError

EXPORT_FORMAT = "facegate-gallery-export"
EXPORT_FORMAT_VERSION = 1


def json_line(obj: object) -> bytes:
    """One canonical JSON line (sorted keys, compact, UTF-8, no NaN)."""
    return (json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                       allow_nan=False) + "\n").encode("utf-8")


def write_export(fh: IO[bytes], header: dict[str, object],
                 records: Iterable[dict[str, object]]) -> str:
    """Write an export to a seekable binary file positioned at its start.

    Args:
        fh: Destination, opened ``w+b``.
        header: Header fields; ``format``, ``format_version`` and
            ``content_sha256`` are filled in here.
        records: One identity object per line.

    Returns:
        The content sha256 written into the header.
    """
    head: dict[str, object] = {**header, "format": EXPORT_FORMAT,
                               "format_version": EXPORT_FORMAT_VERSION,
                               "content_sha256": "0" * 64}
    placeholder = json_line(head)
    fh.write(placeholder)
    digest = hashlib.sha256()
    for record in records:
        line = json_line(record)
        digest.update(line)
        fh.write(line)
    head["content_sha256"] = digest.hexdigest()
    final = json_line(head)
    if len(final) != len(placeholder):  # pragma: no cover - both hashes are 64 hex digits
        raise AssertionError("export header changed length")
    fh.seek(0)
    fh.write(final)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportFile:
    """A parsed export whose checksum and counts agree with its header.

    Attributes:
        path: Where it was read from.
        header: The header object.
        records: ``(line number, identity object)`` pairs.
        content_sha256: sha256 of the content lines.
    """

    path: Path
    header: dict[str, Any]
    records: tuple[tuple[int, dict[str, Any]], ...]
    content_sha256: str


def _parse(line: bytes, src: Path, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GalleryError(f"{src}:{lineno}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise GalleryError(f"{src}:{lineno}: expected a JSON object")
    return obj


def read_export(path: Path) -> ExportFile:
    """Read an export file and check its format, checksum and counts.

    Args:
        path: The file.

    Returns:
        The parsed file. Its records are not yet validated against any gallery.

    Raises:
        GalleryError: If the file is unreadable, not an export, of an unknown
            format version, truncated, edited or damaged.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GalleryError(f"cannot read {path}: {exc}") from exc
    head, newline, body = raw.partition(b"\n")
    header = _parse(head, path, 1)
    if header.get("format") != EXPORT_FORMAT or not newline:
        raise GalleryError(f"{path} is not a facegate gallery export")
    if header.get("format_version") != EXPORT_FORMAT_VERSION:
        raise GalleryError(
            f"{path}: export format version {header.get('format_version')!r} is not supported "
            f"(this firmware reads version {EXPORT_FORMAT_VERSION})"
        )
    sha = hashlib.sha256(body).hexdigest()
    if sha != header.get("content_sha256"):
        raise GalleryError(
            f"{path} is damaged, truncated or was edited: its content sha256 is {sha}, "
            f"the header says {header.get('content_sha256')!r}"
        )
    lines = body.split(b"\n")
    if lines[-1] != b"":
        raise GalleryError(f"{path}: the last line has no newline")
    records = tuple((n, _parse(line, path, n)) for n, line in enumerate(lines[:-1], start=2))
    faces = 0
    for lineno, record in records:
        if not isinstance(record.get("faces"), list):
            raise GalleryError(f"{path}:{lineno}: identity has no 'faces' list")
        faces += len(record["faces"])
    if len(records) != header.get("identities") or faces != header.get("faces"):
        raise GalleryError(
            f"{path} holds {len(records)} identities and {faces} faces; its header says "
            f"{header.get('identities')!r} and {header.get('faces')!r}"
        )
    return ExportFile(path, header, records, sha)

"""Bundle payloads: a full snapshot or a delta, both JSON Lines.

**Full snapshot**: exactly the gallery store's export format
(:mod:`device.gallery.exchange`), with the header's ``gallery_id`` and ``version``
set to the manifest's. A unit builds its new gallery from it with
:meth:`GalleryStore.import_`, which validates every identity and embedding.

**Delta** against a base version: a header line ::

    {"format": "facegate-gallery-delta", "format_version": 1, "gallery_id": …,
     "base_version": 6, "version": 7, "model_id": …, "dim": …, "remove": R,
     "add": A, "content_sha256": "<sha256 of every byte after line 1>"}

then ``R`` lines ``{"op": "remove", "id": …}`` and ``A`` lines
``{"op": "add", "identity": {…an export identity record…}}``. A changed identity
is a remove and an add. The unit materialises a delta into a full snapshot (its
live gallery's export, minus the removes, plus the adds) and builds from that, so
both kinds go through one build-and-check path and the result never carries
deleted rows in free pages.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from device.errors import GalleryError
from device.gallery.exchange import ExportFile, json_line, read_export, write_export
from device.gallery.store import GalleryStore
from device.sync.manifest import Manifest
from device.sync.reasons import Reason, SyncRefusedError

DELTA_FORMAT: Final = "facegate-gallery-delta"
DELTA_FORMAT_VERSION: Final = 1


@dataclass(frozen=True)
class PayloadSummary:
    """What a written payload holds.

    Attributes:
        path: The payload file.
        identities: Identities in the resulting gallery.
        faces: Faces in the resulting gallery.
        removed: Identities a delta removes (0 for a full snapshot).
        added: Identities a delta adds (all of them for a full snapshot).
    """

    path: Path
    identities: int
    faces: int
    removed: int
    added: int


def export_gallery(source: Path, into: Path) -> ExportFile:
    """Read a gallery given as a database file or as an export file.

    Args:
        source: A gallery ``.db`` (exported to a temporary file in ``into``) or a
            ``.jsonl`` export.
        into: Directory for the temporary export.

    Returns:
        The parsed export.

    Raises:
        GalleryError: The gallery cannot be opened or the export is damaged.
    """
    if source.suffix == ".jsonl":
        return read_export(source)
    with tempfile.TemporaryDirectory(dir=into, prefix=".export-") as tmp:
        out = Path(tmp) / "gallery.jsonl"
        with GalleryStore(source, read_only=True) as store:  # never changes the source
            store.export(out)
        return read_export(out)


def _faces_of(records: Iterable[dict[str, Any]]) -> int:
    return sum(len(r["faces"]) for r in records)


def write_full(export: ExportFile, out: Path, *, gallery_id: str, version: int
               ) -> PayloadSummary:
    """Write a full-snapshot payload.

    Raises:
        OSError: The file cannot be written.
    """
    records = [r for _, r in export.records]
    header = {**export.header, "gallery_id": gallery_id, "version": version}
    for key in ("format", "format_version", "content_sha256"):
        header.pop(key, None)
    with out.open("w+b") as fh:
        write_export(fh, header, records)
    return PayloadSummary(out, len(records), _faces_of(records), 0, len(records))


def write_delta(base: ExportFile, target: ExportFile, out: Path, *, gallery_id: str,
                base_version: int, version: int) -> PayloadSummary:
    """Write a delta payload that turns ``base`` into ``target``.

    Raises:
        GalleryError: The two galleries are of different models or dimensions.
        OSError: The file cannot be written.
    """
    for key in ("model_id", "dim"):
        if base.header.get(key) != target.header.get(key):
            raise GalleryError(f"the base gallery's {key} {base.header.get(key)!r} differs "
                               f"from the new gallery's {target.header.get(key)!r}; "
                               "build a full snapshot")
    old = {r["id"]: r for _, r in base.records}
    new = {r["id"]: r for _, r in target.records}
    removes = sorted(i for i in old if i not in new or json_line(old[i]) != json_line(new[i]))
    adds = sorted(i for i in new if i not in old or json_line(old[i]) != json_line(new[i]))
    lines = [json_line({"op": "remove", "id": i}) for i in removes]
    lines += [json_line({"op": "add", "identity": new[i]}) for i in adds]
    digest = hashlib.sha256(b"".join(lines)).hexdigest()
    header = {"format": DELTA_FORMAT, "format_version": DELTA_FORMAT_VERSION,
              "gallery_id": gallery_id, "base_version": base_version, "version": version,
              "model_id": target.header["model_id"], "dim": target.header["dim"],
              "remove": len(removes), "add": len(adds), "content_sha256": digest}
    with out.open("wb") as fh:
        fh.write(json_line(header))
        for line in lines:
            fh.write(line)
    return PayloadSummary(out, len(new), _faces_of(new.values()), len(removes), len(adds))


# --------------------------------------------------------------------- unit side


def _bad(detail: str) -> SyncRefusedError:
    return SyncRefusedError(Reason.BAD_PAYLOAD, detail)


def check_full(path: Path, manifest: Manifest) -> ExportFile:
    """Parse a full-snapshot payload and check its header against the manifest.

    Raises:
        SyncRefusedError: ``bad_payload`` when it is damaged or disagrees with the manifest.
    """
    try:
        export = read_export(path)
    except GalleryError as exc:
        raise _bad(f"the snapshot is not a valid gallery export: {exc}") from exc
    _check_header(export.header, manifest, "snapshot")
    return export


def _check_header(header: dict[str, Any], manifest: Manifest, what: str) -> None:
    want: dict[str, object] = {"gallery_id": manifest.gallery_id, "version": manifest.version,
                               "model_id": manifest.model_id, "dim": manifest.dim}
    for key, value in want.items():
        if header.get(key) != value:
            raise _bad(f"the {what}'s {key} disagrees with the signed manifest")


def _parse_line(line: bytes, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _bad(f"delta line {lineno} is not JSON") from exc
    if not isinstance(obj, dict):
        raise _bad(f"delta line {lineno} is not an object")
    return obj


def _delta_lines(path: Path, manifest: Manifest) -> Iterator[tuple[int, dict[str, Any]]]:
    raw = path.read_bytes()
    head, newline, body = raw.partition(b"\n")
    header = _parse_line(head, 1)
    if header.get("format") != DELTA_FORMAT or not newline:
        raise _bad("the payload is not a facegate gallery delta")
    if header.get("format_version") != DELTA_FORMAT_VERSION:
        raise _bad("unsupported delta format version")
    _check_header(header, manifest, "delta")
    if header.get("base_version") != manifest.base_version:
        raise _bad("the delta's base_version disagrees with the signed manifest")
    if hashlib.sha256(body).hexdigest() != header.get("content_sha256"):
        raise _bad("the delta's content does not match its header's sha256")
    lines = body.split(b"\n")
    if lines[-1] != b"":
        raise _bad("the delta's last line has no newline")
    n_remove = n_add = 0
    for lineno, line in enumerate(lines[:-1], start=2):
        record = _parse_line(line, lineno)
        if record.get("op") == "remove":
            n_remove += 1
        elif record.get("op") == "add":
            n_add += 1
        yield lineno, record
    if (n_remove, n_add) != (header.get("remove"), header.get("add")):
        raise _bad("the delta's counts disagree with its header")


def materialize_delta(payload: Path, manifest: Manifest, base_export: ExportFile,
                      out: Path) -> None:
    """Apply a delta to the live gallery's export, writing a full snapshot to ``out``.

    Raises:
        SyncRefusedError: ``bad_payload`` when the delta is damaged, removes an identity
            the base lacks or adds one it already has.
        OSError: ``out`` cannot be written.
    """
    records = {r["id"]: r for _, r in base_export.records}
    for lineno, line in _delta_lines(payload, manifest):
        op = line.get("op")
        if op == "remove":
            ident = line.get("id")
            if not isinstance(ident, str) or ident not in records:
                raise _bad(f"delta line {lineno} removes an identity the base does not hold")
            del records[ident]
        elif op == "add":
            record = line.get("identity")
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise _bad(f"delta line {lineno} adds something that is not an identity")
            if not isinstance(record.get("faces"), list):
                raise _bad(f"delta line {lineno} adds an identity without a faces list")
            if record["id"] in records:
                raise _bad(f"delta line {lineno} adds an identity the base already holds")
            records[record["id"]] = record
        else:
            raise _bad(f"delta line {lineno} has an unknown op")
    ordered = [records[k] for k in sorted(records)]
    header = {"gallery_id": manifest.gallery_id, "version": manifest.version,
              "model_id": manifest.model_id, "dim": manifest.dim,
              "exported_at": base_export.header.get("exported_at", 0),
              "identities": len(ordered), "faces": _faces_of(ordered)}
    with out.open("w+b") as fh:
        write_export(fh, header, ordered)

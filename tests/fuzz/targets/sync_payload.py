"""A bundle's payload (full snapshot or delta, JSON Lines) through the unit's apply path.

Each input is a payload; the harness signs a manifest for it (right hash, chunk
hashes, version above the live one, the header's counts) and fixes the header's
``content_sha256``, so the bytes reach ``check_full``/``materialize_delta``,
``read_export`` and ``GalleryStore.import_``. ``GallerySync.apply`` never raises
for a bad bundle (it reports a refusal or an error); anything escaping it but
:class:`SyncError` is a crash. The first byte chooses full (even) or delta (odd).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from tests.fuzz.harness import Harness

NAME = "sync_payload"
INSTRUMENT = ("device.sync", "device.gallery", "json")
MAX_LEN = 16 * 1024


def fix_header(data: bytes, **fields: object) -> bytes:
    """``data`` with ``fields`` and ``content_sha256`` (of the rest) set in its first line.

    What an operator's bundle builder does; it lets the fuzzer's mutations reach the
    records behind the header's checks.
    """
    head, newline, body = data.partition(b"\n")
    try:
        header: Any = json.loads(head)
    except (ValueError, RecursionError):
        return data
    if not isinstance(header, dict) or not newline:
        return data
    header.update(fields, content_sha256=hashlib.sha256(body).hexdigest())
    try:
        line = json.dumps(header, separators=(",", ":")).encode()
    except (ValueError, TypeError, RecursionError):
        return data
    return line + b"\n" + body


def _count(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and (
        0 <= value < 2**53) else 0


def prepare(workdir: Path) -> Harness:
    from device.errors import SyncError
    from device.sync.bundle import describe_payload
    from device.sync.layout import GalleryLayout
    from device.sync.manifest import format_time, unsigned
    from device.sync.reasons import SyncRefusedError
    from device.sync.transport import copy_file
    from tests.fuzz.targets._world import CHUNK, build
    from tests.support.gallery import DIM, MODEL, T0

    bundles = build(workdir / "world")
    sync = bundles.sync()
    layout = GalleryLayout(bundles.unit_db)
    seeds = (b"\x00" + (bundles.full.directory / "payload").read_bytes(),
             b"\x01" + (bundles.delta.directory / "payload").read_bytes())
    source = workdir / "payload.jsonl"

    def one_input(data: bytes) -> None:
        delta = bool(data[:1]) and data[0] % 2 == 1
        live = layout.live_info()
        version = (live.version if live else 0) + 1
        gallery_id = live.gallery_id if live else "fuzz"
        fields: dict[str, object] = {"version": version, "gallery_id": gallery_id}
        if delta and live:
            fields["base_version"] = live.version
        payload = fix_header(data[1:], **fields)
        if not payload:
            return
        source.write_bytes(payload)
        try:
            header = json.loads(payload.partition(b"\n")[0])
        except (ValueError, RecursionError):
            header = {}
        header = header if isinstance(header, dict) else {}
        try:
            manifest = unsigned(
                gallery_id=gallery_id, version=version,
                created=format_time(T0), expires=format_time(T0 + 86400 * 30),
                model_id=MODEL, dim=DIM, kind="delta" if delta and live else "full",
                base_version=live.version if delta and live else None, units=None,
                identities=_count(header, "identities"), faces=_count(header, "faces"),
                payload=describe_payload(source, CHUNK, None).to_json(),
            ).sign(bundles.key)
        except SyncRefusedError:
            return  # e.g. too many chunks for one manifest: not the payload parser's input
        with contextlib.suppress(SyncError):
            sync.apply(manifest, lambda m, part: copy_file(source, part))

    return Harness(seeds, one_input)

"""The signed manifest of a gallery bundle: its schema, canonical form and signatures.

A manifest is one JSON object (at most :data:`MAX_MANIFEST_BYTES`)::

    {"format": "facegate-gallery-manifest", "format_version": 1,
     "gallery_id": "hq-watchlist", "version": 7,
     "created": "2025-06-15T12:00:00Z", "expires": "2025-07-15T12:00:00Z",
     "model_id": "dlib-resnet-v1", "dim": 128,
     "kind": "full", "base_version": null,          # "delta": base_version = N
     "units": null,                                  # or ["unit-7", ...]
     "identities": 120, "faces": 360,
     "payload": {"sha256": "…", "length": 123456, "chunk_size": 262144,
                 "chunks": ["<sha256 of chunk 0>", …], "url": null},
     "signatures": [{"keyid": "<sha256 of the raw public key>", "sig": "<base64>"}]}

What is signed (Ed25519) is the manifest *without* ``signatures`` in canonical
form: keys sorted, no whitespace, UTF-8. Every field is an integer, ``null``, an
ASCII string or a list/object of those (no floats), so the canonical bytes are
unambiguous and easy to reproduce off the unit. The sha256 of those bytes is the
bundle's *digest*: its identity in logs, the audit log and the state topic.

Parsing is strict (TUF's lesson: never interpret what you have not verified, and
never verify something other than what you interpret): duplicate keys, unknown
keys, floats, ``NaN``, booleans where integers belong, and anything over the caps
are refused before a signature is looked at. A signature counts only when it is by
a *trusted* key and verifies; the same key id twice refuses the whole manifest;
the threshold counts distinct trusted keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.sync.keys import TrustedKeys, key_id
from device.sync.reasons import Reason, SyncRefusedError

MANIFEST_FORMAT: Final = "facegate-gallery-manifest"
MANIFEST_FORMAT_VERSION: Final = 1
#: Hard cap on a manifest's encoded size; nothing larger is parsed.
MAX_MANIFEST_BYTES: Final = 64 * 1024
MAX_SIGNATURES: Final = 16
MAX_UNITS: Final = 1000
MIN_CHUNK_SIZE: Final = 1024
MAX_CHUNK_SIZE: Final = 4 * 1024 * 1024
MAX_VERSION: Final = 2**53 - 1
MAX_DIM: Final = 4096
MAX_URL_CHARS: Final = 2048
#: Largest payload a manifest may describe at all (a unit's own cap is lower).
MAX_PAYLOAD_LENGTH: Final = 2**40

Kind = Literal["full", "delta"]

_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_UNIT_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_HEX64_RE: Final = re.compile(r"[0-9a-f]{64}")
_TS_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_URL_RE: Final = re.compile(r"[\x21-\x7e]+")

_BODY_KEYS: Final = frozenset({
    "format", "format_version", "gallery_id", "version", "created", "expires", "model_id",
    "dim", "kind", "base_version", "units", "identities", "faces", "payload",
})
_PAYLOAD_KEYS: Final = frozenset({"sha256", "length", "chunk_size", "chunks", "url"})
_SIGNATURE_KEYS: Final = frozenset({"keyid", "sig"})


def canonical_json(obj: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN: the bytes that are signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def format_time(epoch: float) -> str:
    """Seconds since the epoch as ``YYYY-MM-DDTHH:MM:SSZ`` (whole seconds, UTC)."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, name: str) -> float:
    """Inverse of :func:`format_time`.

    Raises:
        SyncRefusedError: ``malformed`` when ``text`` is not such a timestamp.
    """
    if not _TS_RE.fullmatch(text):
        raise SyncRefusedError(Reason.MALFORMED,
                               f"{name} is not a UTC time like 2025-06-15T12:00:00Z")
    try:
        epoch = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError as exc:
        raise SyncRefusedError(Reason.MALFORMED, f"{name} is not a valid date") from exc
    if epoch < 0:  # nothing was signed then, and format_time could not give it back
        raise SyncRefusedError(Reason.MALFORMED, f"{name} {text} is before 1970")
    return epoch


@dataclass(frozen=True)
class Signature:
    """One signature of a manifest.

    Attributes:
        keyid: sha256 (hex) of the signing key's raw public bytes.
        sig: The 64-byte Ed25519 signature over the canonical body.
    """

    keyid: str
    sig: bytes

    def to_json(self) -> dict[str, str]:
        return {"keyid": self.keyid, "sig": base64.b64encode(self.sig).decode("ascii")}


@dataclass(frozen=True)
class PayloadInfo:
    """Where the payload comes from and what it must be.

    Attributes:
        sha256: Hash of the whole payload.
        length: Exact length in bytes.
        chunk_size: Every chunk but the last has this many bytes.
        chunks: sha256 of each chunk, in order (resumable, per-chunk verified transfer).
        url: Optional URL to fetch the payload from instead of MQTT chunks.
    """

    sha256: str
    length: int
    chunk_size: int
    chunks: tuple[str, ...]
    url: str | None

    def chunk_span(self, index: int) -> tuple[int, int]:
        """``(start, end)`` byte offsets of chunk ``index``.

        Raises:
            IndexError: No such chunk.
        """
        if not 0 <= index < len(self.chunks):
            raise IndexError(f"chunk {index} of {len(self.chunks)}")
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.length)

    def to_json(self) -> dict[str, object]:
        return {"sha256": self.sha256, "length": self.length, "chunk_size": self.chunk_size,
                "chunks": list(self.chunks), "url": self.url}


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest. Signatures are *not* verified by parsing: see :func:`verify`.

    Attributes:
        gallery_id: The gallery's lineage id; a delta applies only to the same id.
        version: Strictly increasing content version.
        created: Creation time, seconds since the epoch.
        expires: After this the unit refuses the manifest.
        model_id: Embedder the gallery's embeddings come from.
        dim: Embedding dimension.
        kind: ``full`` snapshot or ``delta`` against ``base_version``.
        base_version: The version a delta applies to; None for a full snapshot.
        units: The unit ids the bundle is for; None means the whole fleet.
        identities: Identities in the resulting gallery.
        faces: Faces in the resulting gallery.
        payload: The payload's hash, length and chunks.
        signatures: The signatures, as listed.
    """

    gallery_id: str
    version: int
    created: float
    expires: float
    model_id: str
    dim: int
    kind: Kind
    base_version: int | None
    units: tuple[str, ...] | None
    identities: int
    faces: int
    payload: PayloadInfo
    signatures: tuple[Signature, ...] = ()

    def body(self) -> dict[str, Any]:
        """The signed part, as a JSON object."""
        return {
            "format": MANIFEST_FORMAT, "format_version": MANIFEST_FORMAT_VERSION,
            "gallery_id": self.gallery_id, "version": self.version,
            "created": format_time(self.created), "expires": format_time(self.expires),
            "model_id": self.model_id, "dim": self.dim, "kind": self.kind,
            "base_version": self.base_version,
            "units": None if self.units is None else list(self.units),
            "identities": self.identities, "faces": self.faces,
            "payload": self.payload.to_json(),
        }

    def signed_bytes(self) -> bytes:
        """The canonical bytes every signature covers."""
        return canonical_json(self.body())

    @property
    def digest(self) -> str:
        """sha256 (hex) of :meth:`signed_bytes`: the bundle's identity."""
        return hashlib.sha256(self.signed_bytes()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The whole manifest, signatures included."""
        return {**self.body(), "signatures": [s.to_json() for s in self.signatures]}

    def encode(self) -> bytes:
        """The manifest file's bytes: canonical JSON and a newline."""
        return canonical_json(self.to_json()) + b"\n"

    def sign(self, key: Ed25519PrivateKey) -> Manifest:
        """A copy with ``key``'s signature added (replacing an older one by the same key)."""
        keyid = key_id(key.public_key())
        sig = Signature(keyid, key.sign(self.signed_bytes()))
        others = tuple(s for s in self.signatures if s.keyid != keyid)
        return replace(self, signatures=(*others, sig))


# ------------------------------------------------------------------------ parsing


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SyncRefusedError(Reason.MALFORMED,
                                   f"key {key[:40]!r} appears twice in one object")
        out[key] = value
    return out


def _no_float(text: str) -> Any:
    raise SyncRefusedError(Reason.MALFORMED, "manifests hold no fractional numbers")


def _no_constant(text: str) -> Any:
    raise SyncRefusedError(Reason.MALFORMED, f"{text} is not allowed in a manifest")


def _keys(obj: Mapping[str, Any], want: frozenset[str], where: str) -> None:
    missing = sorted(want - obj.keys())
    extra = sorted(obj.keys() - want)
    if missing:
        raise SyncRefusedError(Reason.MALFORMED, f"{where} lacks {', '.join(missing)}")
    if extra:
        shown = ", ".join(repr(k[:40]) for k in extra[:3])
        raise SyncRefusedError(Reason.MALFORMED, f"{where} has unknown keys {shown}")


def _int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SyncRefusedError(Reason.MALFORMED, f"{name} must be an integer")
    if not lo <= value <= hi:
        raise SyncRefusedError(Reason.MALFORMED, f"{name} must be between {lo} and {hi}")
    return value


def _str(value: object, name: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise SyncRefusedError(Reason.MALFORMED,
                               f"{name} must be a string matching {pattern.pattern}")
    return value


def _payload(obj: object) -> PayloadInfo:
    if not isinstance(obj, dict):
        raise SyncRefusedError(Reason.MALFORMED, "payload must be an object")
    _keys(obj, _PAYLOAD_KEYS, "payload")
    sha = _str(obj["sha256"], "payload.sha256", _HEX64_RE)
    length = _int(obj["length"], "payload.length", 1, MAX_PAYLOAD_LENGTH)
    chunk_size = _int(obj["chunk_size"], "payload.chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
    chunks = obj["chunks"]
    if not isinstance(chunks, list):
        raise SyncRefusedError(Reason.MALFORMED, "payload.chunks must be a list")
    expected = math.ceil(length / chunk_size)
    if len(chunks) != expected:
        raise SyncRefusedError(Reason.MALFORMED, f"payload.chunks lists {len(chunks)} hashes; "
                               f"{length} bytes in chunks of {chunk_size} make {expected}")
    hashes = tuple(_str(c, f"payload.chunks[{i}]", _HEX64_RE) for i, c in enumerate(chunks))
    url = obj["url"]
    if url is not None:
        url = _str(url, "payload.url", _URL_RE)
        if len(url) > MAX_URL_CHARS or not url.startswith(("https://", "http://")):
            raise SyncRefusedError(Reason.MALFORMED, "payload.url must be an http(s) URL of "
                                   f"at most {MAX_URL_CHARS} characters")
    return PayloadInfo(sha, length, chunk_size, hashes, url)


def _signatures(obj: object) -> tuple[Signature, ...]:
    if not isinstance(obj, list):
        raise SyncRefusedError(Reason.MALFORMED, "signatures must be a list")
    if len(obj) > MAX_SIGNATURES:
        raise SyncRefusedError(Reason.TOO_LARGE, f"{len(obj)} signatures; at most {MAX_SIGNATURES}")
    out: list[Signature] = []
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise SyncRefusedError(Reason.MALFORMED, f"signatures[{i}] must be an object")
        _keys(item, _SIGNATURE_KEYS, f"signatures[{i}]")
        keyid = _str(item["keyid"], f"signatures[{i}].keyid", _HEX64_RE)
        raw = item["sig"]
        if not isinstance(raw, str) or len(raw) > 100:
            raise SyncRefusedError(Reason.MALFORMED, f"signatures[{i}].sig must be base64 text")
        try:
            sig = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SyncRefusedError(Reason.MALFORMED, f"signatures[{i}].sig is not base64") from exc
        if len(sig) != 64:
            raise SyncRefusedError(Reason.MALFORMED, f"signatures[{i}].sig is {len(sig)} bytes, "
                                   "an Ed25519 signature has 64")
        out.append(Signature(keyid, sig))
    return tuple(out)


def parse_manifest(data: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES) -> Manifest:
    """Parse and validate a manifest's bytes; signatures are checked by :func:`verify`.

    Args:
        data: The manifest as received.
        max_bytes: Size cap; larger input is refused before it is decoded.

    Returns:
        The manifest.

    Raises:
        SyncRefusedError: ``too_large`` over the cap; ``malformed`` for anything that is
            not exactly a manifest of this format.
    """
    if len(data) > max_bytes:
        raise SyncRefusedError(Reason.TOO_LARGE, f"manifest is {len(data)} bytes; the cap is "
                               f"{max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SyncRefusedError(Reason.MALFORMED,
                               f"manifest is not UTF-8 (byte {exc.start})") from exc
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_no_float,
                         parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise SyncRefusedError(Reason.MALFORMED, f"manifest is not JSON (line {exc.lineno}, "
                               f"column {exc.colno}: {exc.msg})") from exc
    except RecursionError as exc:
        raise SyncRefusedError(Reason.MALFORMED, "manifest is nested too deeply") from exc
    if not isinstance(obj, dict):
        raise SyncRefusedError(Reason.MALFORMED, "manifest must be a JSON object")
    if obj.get("format") != MANIFEST_FORMAT:
        raise SyncRefusedError(Reason.MALFORMED, f"not a {MANIFEST_FORMAT}")
    if obj.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise SyncRefusedError(Reason.MALFORMED, "manifest format_version is not "
                               f"{MANIFEST_FORMAT_VERSION}; update the firmware")
    _keys(obj, _BODY_KEYS | {"signatures"}, "manifest")
    return _from_json(obj)


def _from_json(obj: dict[str, Any]) -> Manifest:
    version = _int(obj["version"], "version", 1, MAX_VERSION)
    created = parse_time(_str(obj["created"], "created", _TS_RE), "created")
    expires = parse_time(_str(obj["expires"], "expires", _TS_RE), "expires")
    if expires <= created:
        raise SyncRefusedError(Reason.MALFORMED, "expires must be later than created")
    kind = obj["kind"]
    if kind not in ("full", "delta"):
        raise SyncRefusedError(Reason.MALFORMED, "kind must be 'full' or 'delta'")
    base = obj["base_version"]
    if kind == "full":
        if base is not None:
            raise SyncRefusedError(Reason.MALFORMED, "a full snapshot has base_version null")
    else:
        base = _int(base, "base_version", 1, version - 1)
    units_raw = obj["units"]
    units: tuple[str, ...] | None = None
    if units_raw is not None:
        if not isinstance(units_raw, list) or not 1 <= len(units_raw) <= MAX_UNITS:
            raise SyncRefusedError(Reason.MALFORMED, f"units must be null or a list of 1 to "
                                   f"{MAX_UNITS} unit ids")
        units = tuple(_str(u, f"units[{i}]", _UNIT_RE) for i, u in enumerate(units_raw))
        if len(set(units)) != len(units):
            raise SyncRefusedError(Reason.MALFORMED, "units names a unit twice")
    return Manifest(
        gallery_id=_str(obj["gallery_id"], "gallery_id", _ID_RE),
        version=version,
        created=created,
        expires=expires,
        model_id=_str(obj["model_id"], "model_id", _ID_RE),
        dim=_int(obj["dim"], "dim", 1, MAX_DIM),
        kind=kind,
        base_version=base,
        units=units,
        identities=_int(obj["identities"], "identities", 0, MAX_VERSION),
        faces=_int(obj["faces"], "faces", 0, MAX_VERSION),
        payload=_payload(obj["payload"]),
        signatures=_signatures(obj["signatures"]),
    )


# ----------------------------------------------------------------- verification


def verify(manifest: Manifest, trusted: TrustedKeys, threshold: int) -> tuple[str, ...]:
    """Check that ``threshold`` distinct trusted keys signed ``manifest``.

    Signatures by keys the unit does not trust are ignored (they neither count nor
    refuse). A signature by a trusted key that does not verify refuses the manifest:
    it was altered after signing, and saying so beats a vague "too few signatures".

    Args:
        manifest: The parsed manifest.
        trusted: The unit's trusted public keys.
        threshold: Distinct trusted keys required (at least 1).

    Returns:
        The key ids whose signatures counted, sorted.

    Raises:
        SyncRefusedError: ``duplicate_signature`` when a key id appears twice,
            ``bad_signature`` when a trusted key's signature fails, ``threshold``
            when too few distinct trusted keys signed.
        ValueError: ``threshold`` is below 1.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, not {threshold}")
    seen: set[str] = set()
    for sig in manifest.signatures:
        if sig.keyid in seen:
            raise SyncRefusedError(Reason.DUPLICATE_SIGNATURE,
                                   f"key {sig.keyid[:16]} signs twice; each key counts once")
        seen.add(sig.keyid)
    message = manifest.signed_bytes()
    good: list[str] = []
    for sig in manifest.signatures:
        public = trusted.get(sig.keyid)
        if public is None:
            continue
        try:
            public.verify(sig.sig, message)
        except InvalidSignature as exc:
            raise SyncRefusedError(Reason.BAD_SIGNATURE,
                                   f"the signature by trusted key {sig.keyid[:16]} does not "
                                   "verify; the manifest was altered after signing") from exc
        good.append(sig.keyid)
    if len(good) < threshold:
        raise SyncRefusedError(Reason.THRESHOLD,
                               f"{len(good)} distinct trusted key(s) signed; {threshold} required "
                               f"({len(manifest.signatures)} signature(s) listed)")
    return tuple(sorted(good))


def unsigned(**fields: Any) -> Manifest:
    """A manifest with no signatures yet (for the builder and tests).

    Raises:
        SyncRefusedError: A field is invalid (same rules as parsing).
    """
    body = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_FORMAT_VERSION, **fields,
            "signatures": []}
    return parse_manifest(canonical_json(body), max_bytes=MAX_MANIFEST_BYTES)

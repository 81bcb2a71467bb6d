"""The signed manifest: strict parsing, canonical bytes, signature rules; key files."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.errors import ConfigError, SyncError
from device.sync.keys import (
    TrustedKeys,
    generate_key,
    key_id,
    load_any_public,
    load_private_key,
    load_public_key,
)
from device.sync.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    Signature,
    canonical_json,
    parse_manifest,
    unsigned,
    verify,
)
from device.sync.reasons import Reason, SyncRefusedError

SHA = "ab" * 32


def key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def fields(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "gallery_id": "hq-watchlist", "version": 7, "created": "2025-06-15T12:00:00Z",
        "expires": "2025-07-15T12:00:00Z", "model_id": "dlib-resnet-v1", "dim": 128,
        "kind": "full", "base_version": None, "units": None, "identities": 3, "faces": 9,
        "payload": {"sha256": SHA, "length": 5000, "chunk_size": 2048,
                    "chunks": [SHA, SHA, SHA], "url": None},
    }
    base.update(over)
    return base


def signed(*keys: Ed25519PrivateKey, **over: Any) -> Manifest:
    manifest = unsigned(**fields(**over))
    for k in keys:
        manifest = manifest.sign(k)
    return manifest


def refused(data: bytes, reason: Reason, **kw: Any) -> SyncRefusedError:
    with pytest.raises(SyncRefusedError) as info:
        parse_manifest(data, **kw)
    assert info.value.reason is reason, info.value
    return info.value


def test_round_trip_and_canonical_bytes() -> None:
    manifest = signed(key(1), key(2))
    again = parse_manifest(manifest.encode())
    assert again == manifest
    body = json.loads(manifest.encode())
    del body["signatures"]
    assert manifest.signed_bytes() == json.dumps(
        body, sort_keys=True, separators=(",", ":")).encode()
    assert b" " not in manifest.signed_bytes()
    # Re-encoding with whitespace and another key order changes nothing that is signed.
    pretty = json.dumps(json.loads(manifest.encode()), indent=2).encode()
    assert parse_manifest(pretty).digest == manifest.digest
    assert verify(parse_manifest(pretty), TrustedKeys.of(key(1).public_key()), 1)


def test_key_id_is_sha256_of_raw_public_key() -> None:
    import hashlib

    public = key(3).public_key()
    raw = public.public_bytes_raw()
    assert key_id(public) == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(("data", "reason"), [
    (b"\xff\xfe garbage", Reason.MALFORMED),
    (b"not json", Reason.MALFORMED),
    (b"[1, 2]", Reason.MALFORMED),
    (b"{}", Reason.MALFORMED),
    (b"[" * 100_000, Reason.TOO_LARGE),
    (b"[" * 50_000, Reason.MALFORMED),
    (b" " * (MAX_MANIFEST_BYTES + 1), Reason.TOO_LARGE),
])
def test_garbage_is_refused(data: bytes, reason: Reason) -> None:
    refused(data, reason)


def test_strictness() -> None:
    good = json.loads(signed(key(1)).encode())

    def variant(**over: Any) -> bytes:
        return json.dumps({**good, **over}).encode()

    refused(variant(extra=1), Reason.MALFORMED)
    refused(variant(version=7.0), Reason.MALFORMED)           # floats never
    refused(variant(version=True), Reason.MALFORMED)          # bool is not an int
    refused(variant(version=0), Reason.MALFORMED)
    refused(variant(dim="128"), Reason.MALFORMED)
    refused(variant(kind="partial"), Reason.MALFORMED)
    refused(variant(kind="delta"), Reason.MALFORMED)          # delta needs base_version
    refused(variant(base_version=3), Reason.MALFORMED)        # full has none
    refused(variant(expires=good["created"]), Reason.MALFORMED)
    refused(variant(created="2025-06-15 12:00:00"), Reason.MALFORMED)
    refused(variant(gallery_id="../etc"), Reason.MALFORMED)
    refused(variant(units=[]), Reason.MALFORMED)
    refused(variant(units=["a", "a"]), Reason.MALFORMED)
    refused(variant(format_version=2), Reason.MALFORMED)
    refused(json.dumps(good).replace('"dim": 128', '"dim": NaN').encode(), Reason.MALFORMED)
    dup = json.dumps(good)[:-1] + ', "version": 99}'
    refused(dup.encode(), Reason.MALFORMED)                   # duplicate keys
    payload = dict(good["payload"])
    refused(variant(payload={**payload, "chunks": [SHA]}), Reason.MALFORMED)
    refused(variant(payload={**payload, "sha256": SHA.upper()}), Reason.MALFORMED)
    refused(variant(payload={**payload, "url": "ftp://x/y"}), Reason.MALFORMED)
    refused(variant(payload={**payload, "length": 0}), Reason.MALFORMED)
    sigs = good["signatures"]
    refused(variant(signatures=[{**sigs[0], "sig": "!!"}]), Reason.MALFORMED)
    refused(variant(signatures=[{**sigs[0], "sig": base64.b64encode(b"x" * 63).decode()}]),
            Reason.MALFORMED)
    refused(variant(signatures=sigs * 17), Reason.TOO_LARGE)
    assert parse_manifest(variant(units=["unit-1"])).units == ("unit-1",)
    delta = parse_manifest(signed(key(1), kind="delta", base_version=6).encode())
    assert (delta.kind, delta.base_version) == ("delta", 6)


def test_signature_rules() -> None:
    k1, k2, k3 = key(1), key(2), key(3)
    trusted = TrustedKeys.of(k1.public_key(), k2.public_key())
    assert verify(signed(k1), trusted, 1) == (key_id(k1.public_key()),)
    assert len(verify(signed(k1, k2), trusted, 2)) == 2
    # An untrusted key neither counts nor refuses.
    assert verify(signed(k3, k1), trusted, 1) == (key_id(k1.public_key()),)

    def reason_of(manifest: Manifest, threshold: int) -> Reason:
        with pytest.raises(SyncRefusedError) as info:
            verify(manifest, trusted, threshold)
        return info.value.reason

    assert reason_of(signed(k3), 1) is Reason.THRESHOLD
    assert reason_of(signed(k1, k3), 2) is Reason.THRESHOLD
    assert reason_of(signed(), 1) is Reason.THRESHOLD
    one = signed(k1)
    twice = Manifest(**{**one.__dict__, "signatures": one.signatures * 2})
    assert reason_of(twice, 2) is Reason.DUPLICATE_SIGNATURE
    # A trusted key's signature over other bytes: the manifest was altered.
    tampered = parse_manifest(one.encode().replace(b'"version":7', b'"version":8'))
    assert reason_of(tampered, 1) is Reason.BAD_SIGNATURE
    forged = Manifest(**{**one.__dict__, "signatures": (
        Signature(one.signatures[0].keyid, bytes(64)),)})
    assert reason_of(forged, 1) is Reason.BAD_SIGNATURE
    # Signing again with the same key replaces its signature instead of adding one.
    assert len(one.sign(k1).signatures) == 1
    with pytest.raises(ValueError):
        verify(one, trusted, 0)


def test_canonical_json_has_no_whitespace_and_sorted_keys() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": None, "c": "é"}]}) == (
        '{"a":[1,{"c":"é","d":null}],"b":1}'.encode())


# ------------------------------------------------------------------------ key files


def test_generate_writes_private_key_0600_and_never_overwrites(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        files = generate_key(tmp_path / "keys", "ops")
    finally:
        os.umask(old)
    assert stat.S_IMODE(files.private.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.public.stat().st_mode) == 0o644
    private = load_private_key(files.private)
    assert key_id(private.public_key()) == files.keyid == key_id(load_public_key(files.public))
    assert key_id(load_any_public(files.private)) == files.keyid
    with pytest.raises(SyncError, match="exists already"):
        generate_key(tmp_path / "keys", "ops")
    with pytest.raises(SyncError):
        generate_key(tmp_path / "keys", "../x")


def test_raw_key_files(tmp_path: Path) -> None:
    k = key(9)
    (tmp_path / "raw.key").write_bytes(k.private_bytes_raw())
    (tmp_path / "raw.pub").write_bytes(k.public_key().public_bytes_raw())
    assert key_id(load_private_key(tmp_path / "raw.key").public_key()) == key_id(k.public_key())
    assert key_id(load_public_key(tmp_path / "raw.pub")) == key_id(k.public_key())


def test_trusted_keys_directory(tmp_path: Path) -> None:
    a = generate_key(tmp_path / "ops", "a")
    b = generate_key(tmp_path / "ops", "b")
    trusted_dir = tmp_path / "trusted"
    trusted_dir.mkdir()
    (trusted_dir / "a.pub").write_bytes(a.public.read_bytes())
    (trusted_dir / "a-copy.pub").write_bytes(a.public.read_bytes())
    (trusted_dir / "b.pub").write_bytes(b.public.read_bytes())
    (trusted_dir / "README").write_text("one public key per file\n")
    trusted = TrustedKeys.load(trusted_dir)
    assert sorted(trusted) == sorted([a.keyid, b.keyid])

    # systemd passes a directory credential as <name>_<file> in $CREDENTIALS_DIRECTORY.
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "trusted-keys_a.pub").write_bytes(a.public.read_bytes())
    assert list(TrustedKeys.load("trusted-keys", {"CREDENTIALS_DIRECTORY": str(creds)})) == [
        a.keyid]

    (trusted_dir / "oops.key").write_bytes(a.private.read_bytes())
    with pytest.raises(ConfigError, match="private key"):
        TrustedKeys.load(trusted_dir)
    with pytest.raises(ConfigError, match="not found"):
        TrustedKeys.load(tmp_path / "absent", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no trusted keys"):
        TrustedKeys.load(tmp_path / "empty", {})

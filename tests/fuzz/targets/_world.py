"""The sync targets' world: a central gallery, keys, a unit and signed bundles, all seeded.

Built with the project's own tools (``GalleryStore``, ``build_bundle``, the sync
tests' keys), so seeds are real signed manifests and payloads, and byte-identical
on every run (fixed identity ids, gallery id, clocks and keys): a fixed fuzzer
seed then gives the same inputs.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.gallery.store import GalleryStore
from device.sync.apply import GallerySync, SyncPolicy
from device.sync.bundle import BuiltBundle, build_bundle
from device.sync.keys import TrustedKeys, key_id
from device.sync.manifest import canonical_json
from tests.support.gallery import DIM, MODEL, T0, FaceMaker, enroll
from tests.support.sync import NOW, UNIT, signing_key

CHUNK = 1024


@dataclass(frozen=True)
class Bundles:
    """Keys, a unit holding bundle v1, and bundles built on it.

    Attributes:
        root: Where everything is.
        keys: The signing keys (the unit trusts the first two).
        unit_db: The unit's gallery (holds version 1).
        full: Version 1, full snapshot, MQTT chunks of :data:`CHUNK` bytes.
        delta: Version 2, a delta on version 1.
        extra: Version 3, full, two signatures, restricted to the unit, with a URL.
    """

    root: Path
    keys: tuple[Ed25519PrivateKey, ...]
    unit_db: Path
    full: BuiltBundle
    delta: BuiltBundle
    extra: BuiltBundle

    @property
    def key(self) -> Ed25519PrivateKey:
        return self.keys[0]

    def trusted(self) -> TrustedKeys:
        return TrustedKeys.of(*(k.public_key() for k in self.keys[:2]))

    def sync(self) -> GallerySync:
        """The unit's sync, its clock an hour after the bundles were built."""
        return GallerySync(self.unit_db, self.trusted(),
                           SyncPolicy(unit_id=UNIT, model_id=MODEL, dim=DIM), clock=lambda: NOW)

    def manifests(self) -> tuple[bytes, ...]:
        return tuple((b.directory / "manifest.json").read_bytes()
                     for b in (self.full, self.delta, self.extra))


def _export(db: Path, out: Path) -> Path:
    with GalleryStore(db, clock=lambda: T0) as store:
        store.export(out, overwrite=True)
    return out


def build(root: Path, *, people: int = 3, faces: int = 2) -> Bundles:
    """The same bytes on every run: fixed ids, clocks, keys and embeddings."""
    keys = tuple(signing_key(i) for i in range(3))
    central = root / "central" / "gallery.db"
    maker = FaceMaker(11, dim=DIM, model_id=MODEL)
    with GalleryStore(central, model_id=MODEL, dim=DIM, create=True,
                      clock=lambda: T0) as store:
        for i in range(people):
            enroll(store, maker, f"Person {i}", n=faces, id=f"{i:016x}")
    v1 = _export(central, root / "central" / "v1.jsonl")

    def bundle(version: int, gallery: Path, name: str, **kw: Any) -> BuiltBundle:
        return build_bundle(gallery, root / "bundles" / name, version=version,
                            keys=kw.pop("keys", keys[:1]), gallery_id="fuzz-gallery",
                            chunk_size=CHUNK, clock=lambda: T0, **kw)

    full = bundle(1, v1, "v1")
    bundles = Bundles(root, keys, root / "unit" / "gallery.db", full, full, full)
    result = bundles.sync().apply_dir(full.directory)
    if result.outcome != "ok":
        raise RuntimeError(f"cannot set the fuzz world up: {result}")
    with GalleryStore(central, clock=lambda: T0) as store:
        store.delete_identity(f"{0:016x}")
        enroll(store, maker, "New 1", n=faces, id=f"{people:016x}")
    v2 = _export(central, root / "central" / "v2.jsonl")
    delta = bundle(2, v2, "v2", delta_from=full.directory)
    extra = bundle(3, v2, "v3-extra", keys=keys[:2], units=[UNIT],
                   url="https://gallery.example/v3")
    return replace(bundles, delta=delta, extra=extra)


def resign(data: bytes, key: Ed25519PrivateKey) -> bytes | None:
    """``data`` with its signatures replaced by ``key``'s over its canonical body.

    Lets the fuzzer get past signature checks to the vetting behind them. None when
    ``data`` is not a JSON object (it then goes in unchanged).
    """
    try:
        obj: Any = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    body = {k: v for k, v in obj.items() if k != "signatures"}
    try:
        message = canonical_json(body)
    except (ValueError, TypeError, RecursionError):
        return None
    sig = base64.b64encode(key.sign(message)).decode("ascii")
    obj["signatures"] = [{"keyid": key_id(key.public_key()), "sig": sig}]
    try:
        return canonical_json(obj)
    except (ValueError, TypeError, RecursionError):
        return None

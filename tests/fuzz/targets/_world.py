"""The sync targets' world: a central gallery, keys, a unit and signed bundles, all seeded.

Built with the project's own tools (:class:`tests.integration.sync_support.World`,
``build_bundle``), so seeds are real signed manifests and payloads.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.sync.bundle import BuiltBundle
from device.sync.keys import key_id
from device.sync.manifest import canonical_json
from tests.integration.sync_support import UNIT, World

CHUNK = 1024


@dataclass(frozen=True)
class Bundles:
    """A world with a full bundle v1 applied to the unit and bundles built on it.

    Attributes:
        world: The world (``world.unit_db`` holds v1).
        full: Version 1, full snapshot, MQTT chunks of :data:`CHUNK` bytes.
        delta: Version 2, a delta on version 1.
        extra: Version 3, full, two signatures, restricted to the unit, with a URL.
    """

    world: World
    full: BuiltBundle
    delta: BuiltBundle
    extra: BuiltBundle

    @property
    def key(self) -> Ed25519PrivateKey:
        return self.world.keys[0]

    def manifests(self) -> tuple[bytes, ...]:
        return tuple((b.directory / "manifest.json").read_bytes()
                     for b in (self.full, self.delta, self.extra))


def build(root: Path, *, people: int = 3, faces: int = 2) -> Bundles:
    world = World(root, people=people, faces=faces)
    full = world.bundle(1, chunk_size=CHUNK)
    result = world.sync().apply_dir(full.directory)
    if result.outcome != "ok":
        raise RuntimeError(f"cannot set the fuzz world up: {result}")
    world.edit()
    delta = world.bundle(2, delta_from=full.directory, chunk_size=CHUNK)
    extra = world.bundle(3, name="v3-extra", keys=(0, 1), units=[UNIT],
                         url="https://gallery.example/v3", chunk_size=CHUNK)
    return Bundles(world, full, delta, extra)


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

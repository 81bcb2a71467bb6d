"""The bundle manifest parser: ``parse_manifest``, ``verify`` and ``read_bundle``.

Documented errors: :class:`SyncRefusedError` (parse, verify), :class:`SyncError`
(``read_bundle``). A manifest that parses must round-trip through its encoding.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from tests.fuzz.harness import Harness

NAME = "manifest"
INSTRUMENT = ("device.sync.manifest", "device.sync.bundle", "json")
MAX_LEN = 70 * 1024


def prepare(workdir: Path) -> Harness:
    from device.errors import SyncError
    from device.sync.bundle import read_bundle
    from device.sync.manifest import parse_manifest, verify
    from device.sync.reasons import SyncRefusedError
    from tests.fuzz.targets._world import build, resign

    bundles = build(workdir / "world")
    trusted = bundles.trusted()
    seeds = bundles.manifests()
    bundle_dir = workdir / "bundle"
    bundle_dir.mkdir()

    def one_input(data: bytes) -> None:
        for raw in (data, resign(data, bundles.key)):
            if raw is None:
                continue
            try:
                manifest = parse_manifest(raw)
            except SyncRefusedError:
                continue
            if parse_manifest(manifest.encode()) != manifest:
                raise AssertionError("a parsed manifest does not round-trip")
            with contextlib.suppress(SyncRefusedError):
                verify(manifest, trusted, 1)
        (bundle_dir / "manifest.json").write_bytes(data)
        with contextlib.suppress(SyncError):
            read_bundle(bundle_dir)

    return Harness(seeds, one_input)

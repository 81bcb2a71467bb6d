"""``facegate sync apply`` and ``sync status`` on a unit whose live gallery is damaged.

The unit applied full bundles v1 and v2 (so its version floor is 2), then its live
gallery file was damaged (a page overwritten, truncated, emptied). A newer full
bundle replaces it; an older one is still refused by the floor; a delta, which
needs the damaged file as its base, is refused saying so; ``sync status`` says the
live gallery is not usable, names it and the recovery, and the floor to exceed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from device.cli import main
from device.sync.apply import read_status
from device.sync.bundle import BuiltBundle, build_bundle
from device.sync.layout import GalleryLayout
from device.vision.dlib_tflite import DLIB_MODEL_ID
from tests.support.damage import DAMAGE, PAGE, fingerprint
from tests.support.gallery import DIM, MODEL
from tests.support.sync import World, gallery_content, payload_content_sha


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@dataclass(frozen=True)
class Unit:
    world: World
    db: Path
    trusted: Path
    v1: BuiltBundle
    v2: BuiltBundle
    damaged: Path  # the file the live gallery resolves to, damaged

    def apply(self, bundle: Path, *extra: str) -> Result:
        return run("sync", "apply", str(bundle), "--db", str(self.db), "--trusted-keys",
                   str(self.trusted), "--model-id", MODEL, "--dim", str(DIM), *extra)

    def bundle(self, version: int, **kw: Any) -> BuiltBundle:
        out = self.world.root / "bundles" / f"v{version}-{len(kw)}"
        return build_bundle(self.world.central, out, version=version, keys=[self.world.keys[0]],
                            **kw)


@pytest.fixture(params=sorted(DAMAGE))
def unit(request: pytest.FixtureRequest, tmp_path: Path) -> Unit:
    world = World(tmp_path / "world", people=30, faces=2)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "central.pub").write_bytes(world.keys[0].public_key().public_bytes_raw())
    db = tmp_path / "unit" / "gallery.db"
    bundles = tmp_path / "world" / "bundles"
    v1 = build_bundle(world.central, bundles / "v1", version=1, keys=[world.keys[0]])
    world.edit()
    v2 = build_bundle(world.central, bundles / "v2", version=2, keys=[world.keys[0]])
    partial = Unit(world, db, trusted, v1, v2, db)
    for bundle in (v1, v2):
        applied = partial.apply(bundle.directory)
        assert applied.exit_code == 0, applied.output
    target = GalleryLayout(db).live_target()
    assert target is not None and target.stat().st_size >= 8 * PAGE
    DAMAGE[request.param](target)
    world.edit()  # the central gallery moves on: v3 differs from v2
    return Unit(world, db, trusted, v1, v2, target)


def test_a_newer_full_bundle_replaces_a_damaged_live_gallery(unit: Unit) -> None:
    v3 = unit.bundle(3)
    result = unit.apply(v3.directory, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["outcome"], report["version"]) == ("ok", 3), report
    layout = GalleryLayout(unit.db)
    live = layout.live_info()
    assert live is not None and live.version == 3
    assert live.path != unit.damaged and not unit.damaged.exists()  # the damaged file is gone
    assert gallery_content(unit.db) == (3, payload_content_sha(v3.directory))
    assert layout.read_record().floor == 3
    status = json.loads(run("sync", "status", "--db", str(unit.db), "--json").stdout)
    assert (status["status"], status["version"], status["floor"]) == ("active", 3, 3)


def test_the_floor_still_refuses_an_older_bundle_onto_a_damaged_gallery(unit: Unit) -> None:
    before = fingerprint(unit.damaged)
    for old in (unit.v1, unit.v2):
        result = unit.apply(old.directory, "--json")
        assert result.exit_code == 3, result.output
        report = json.loads(result.stdout)
        assert report["reason"] == "rollback", report
        assert "is not newer than the stored version 2" in report["message"]
    assert fingerprint(unit.damaged) == before
    assert GalleryLayout(unit.db).read_record().floor == 2


def test_a_delta_onto_a_damaged_base_is_refused_saying_why(unit: Unit) -> None:
    before = fingerprint(unit.damaged)
    delta = unit.bundle(3, delta_from=unit.v2.directory)
    result = unit.apply(delta.directory)
    assert result.exit_code == 3, result.output
    message = result.output
    assert "refused (delta_base)" in message, message
    assert f"the unit's gallery {unit.damaged} is damaged" in message, message
    assert "send a full bundle" in message, message
    assert fingerprint(unit.damaged) == before


def test_sync_status_says_the_live_gallery_is_not_usable(unit: Unit) -> None:
    before = fingerprint(unit.damaged)
    result = run("sync", "status", "--db", str(unit.db), "--json")
    assert result.exit_code == 2, result.output
    status = json.loads(result.stdout)
    assert (status["status"], status["version"], status["floor"]) == ("failed", 0, 2), status
    assert str(unit.damaged) in status["message"] and "not usable" in status["message"]
    assert "Recovery:" in status["message"] and "re-sync" in status["message"]
    # the recovery it names works: a newer version, not the same bundle again (refused)
    assert "a newer version than the unit's floor" in status["message"], status["message"]
    assert "refused as a rollback" in status["message"]
    retained = read_status(GalleryLayout(unit.db)).payload("unit-7")["message"]  # <= 500
    assert str(unit.damaged) in retained and "refused as a rollback" in retained, retained
    text = run("sync", "status", "--db", str(unit.db))
    assert text.exit_code == 2
    assert "state       failed" in text.stdout and "(floor 2)" in text.stdout, text.output
    assert str(unit.damaged) in text.output
    assert fingerprint(unit.damaged) == before


def test_without_a_model_option_a_damaged_gallery_is_treated_as_no_gallery(
        tmp_path: Path) -> None:
    """`sync apply DIR` with no --model-id/--config: the unit's model is the default
    embedder's, as on a unit with no gallery yet (the damaged file's cannot be read)."""
    world = World(tmp_path / "world", people=30, faces=2, model=DLIB_MODEL_ID, dim=DIM)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "central.pub").write_bytes(world.keys[0].public_key().public_bytes_raw())
    db = tmp_path / "unit" / "gallery.db"
    common = ("--db", str(db), "--trusted-keys", str(trusted))
    v1 = build_bundle(world.central, tmp_path / "v1", version=1, keys=[world.keys[0]])
    assert run("sync", "apply", str(v1.directory), *common).exit_code == 0
    target = GalleryLayout(db).live_target()
    assert target is not None
    DAMAGE["page-4"](target)
    world.edit()
    v2 = build_bundle(world.central, tmp_path / "v2", version=2, keys=[world.keys[0]])
    result = run("sync", "apply", str(v2.directory), *common)
    assert result.exit_code == 0 and "applied version 2" in result.stdout, result.output
    assert gallery_content(db) == (2, payload_content_sha(v2.directory))

"""Damaged, truncated and empty gallery files: every verb and the service refuse them,
read-only verbs never modify them, and biometric files are 0600 whatever the umask."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from device.cli import main
from device.errors import GalleryError
from device.gallery.integrity import GalleryDamagedError
from device.gallery.store import GalleryStore
from device.service.gallery import GalleryStatus, GalleryWatcher, open_gallery
from tests.support.damage import DAMAGE, PAGE, fingerprint, zero_bytes
from tests.support.gallery import DIM, MODEL, Clock, FaceMaker, enroll
from tests.support.sync import signing_key


@pytest.fixture(autouse=True)
def _empty_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "no-state"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A gallery of 40 people (about 20 pages) and one identity id in it."""
    db = tmp_path_factory.mktemp("pristine") / "gallery.db"
    maker = FaceMaker(seed=16)
    with GalleryStore(db, model_id=MODEL, dim=DIM, create=True, clock=Clock()) as store:
        first = ""
        for i in range(40):
            ident, _ = enroll(store, maker, f"Person {i:02d}", n=2)
            first = first or ident
    assert db.stat().st_size >= 8 * PAGE
    return db, first


@pytest.fixture(params=sorted(DAMAGE))
def broken(request: pytest.FixtureRequest, pristine: tuple[Path, str],
           tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    src, ident = pristine
    db = tmp_path / "gallery.db"
    shutil.copyfile(src, db)
    DAMAGE[request.param](db)
    yield db, ident, request.param


@pytest.fixture(scope="module")
def exported(pristine: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, Path]:
    """An export file of three new people (to import) and a signing key (to build a bundle)."""
    root = tmp_path_factory.mktemp("inputs")
    other = root / "other.db"
    with GalleryStore(other, model_id=MODEL, dim=DIM, create=True, clock=Clock()) as store:
        for i in range(3):
            enroll(store, FaceMaker(seed=160 + i), f"Imported {i}", n=1)
        store.export(root / "people.jsonl")
    key = root / "central.key"
    key.write_bytes(signing_key(0).private_bytes_raw())
    key.chmod(0o600)
    return root / "people.jsonl", key


def _verbs(db: Path, ident: str, photo: Path, root: Path,
           inputs: tuple[Path, Path] | None = None) -> dict[str, list[str]]:
    d = str(db)
    people, key = inputs or (root / "missing.jsonl", root / "missing.key")
    return {
        "export": ["gallery", "export", "-o", str(root / "out.jsonl"), "--db", d],
        "import": ["gallery", "import", str(people), "--db", d],
        "sync-status": ["sync", "status", "--db", d],
        "sync-build": ["sync", "build", "--gallery", d, "--version", "1", "--key", str(key),
                       "-o", str(root / "bundle")],
        "list": ["gallery", "list", "--db", d],
        "info": ["gallery", "info", "--db", d],
        "show": ["gallery", "show", ident, "--db", d],
        "check": ["gallery", "check", "--db", d],
        "delete": ["gallery", "delete", ident, "--yes", "--db", d],
        "enroll": ["gallery", "enroll", "--db", d, "--label", "New", "--threads", "1",
                   str(photo)],
        "enroll-dir": ["gallery", "enroll-dir", "--db", d, "--threads", "1", str(root)],
        "identify": ["identify", "--db", d, "--threads", "1", str(photo)],
    }


@pytest.mark.parametrize("verb", ["list", "info", "show", "check", "delete", "enroll",
                                  "enroll-dir", "identify", "export", "import", "sync-status",
                                  "sync-build"])
def test_every_verb_refuses_a_damaged_gallery_and_leaves_it_unchanged(
        broken: tuple[Path, str, str], verb: str, tmp_path: Path,
        exported: tuple[Path, Path]) -> None:
    db, ident, kind = broken
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not read: the gallery is refused first")
    root = tmp_path / "people"
    (root / "Someone").mkdir(parents=True)
    shutil.copyfile(photo, root / "Someone" / "a.jpg")
    before = fingerprint(db)
    result = CliRunner().invoke(main, _verbs(db, ident, photo, root, exported)[verb])
    assert result.exit_code == 2, (kind, verb, result.output)
    assert str(db) in result.output, result.output
    if verb == "check":
        assert "failed its integrity check" in result.output
    else:
        assert "is damaged and was not used" in result.output, result.output
        assert "Recovery: restore it from a backup" in result.output
    assert fingerprint(db) == before, f"{verb} modified a {kind} gallery"


@pytest.mark.parametrize("verb", ["list", "info", "show", "check", "identify", "export",
                                  "sync-status", "sync-build"])
def test_read_only_verbs_never_modify_a_good_gallery(
        pristine: tuple[Path, str], verb: str, tmp_path: Path,
        exported: tuple[Path, Path]) -> None:
    db = tmp_path / "gallery.db"
    shutil.copyfile(pristine[0], db)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"x")
    before = fingerprint(db)
    result = CliRunner().invoke(main, _verbs(db, pristine[1], photo, tmp_path, exported)[verb])
    if verb != "identify":  # the photo is not an image: identify fails after opening
        assert result.exit_code == 0, (verb, result.output)
    assert fingerprint(db) == before


def test_the_service_refuses_a_damaged_gallery_and_says_why(
        broken: tuple[Path, str, str]) -> None:
    db, _, kind = broken
    before = fingerprint(db)
    status = GalleryStatus(db)
    live = open_gallery(db, model_id=MODEL, dim=DIM, status=status)
    with live:
        assert len(live.current().index) == 0 and live.current().version == 0
    health = status.to_json()
    assert health["state"] == "refused" and not status.matching, kind
    error = str(health["error"])
    assert str(db) in error and "Recovery:" in error and len(error) <= 500
    with pytest.raises(GalleryDamagedError, match="is damaged and was not used"):
        open_gallery(db, model_id=MODEL, dim=DIM)  # without a status: raised
    assert fingerprint(db) == before


def test_the_service_starts_without_a_gallery_only_when_none_exists(tmp_path: Path) -> None:
    status = GalleryStatus(tmp_path / "gallery.db")
    with open_gallery(tmp_path / "gallery.db", model_id=MODEL, dim=DIM, status=status):
        assert status.to_json()["state"] == "missing" and status.matching
    assert not (tmp_path / "gallery.db").exists()


def test_a_zero_byte_file_is_not_turned_into_a_gallery_by_a_writer(tmp_path: Path) -> None:
    db = tmp_path / "z.db"
    db.write_bytes(b"")
    with pytest.raises(GalleryDamagedError, match="the file is empty"):
        GalleryStore(db, model_id=MODEL, dim=DIM, create=True)
    assert db.stat().st_size == 0


def test_watcher_warns_once_per_condition_and_informs_once_on_recovery(
        pristine: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "gallery.db"
    shutil.copyfile(pristine[0], db)
    status = GalleryStatus(db)
    live = open_gallery(db, model_id=MODEL, dim=DIM, status=status)
    watcher = GalleryWatcher(live, db, model_id=MODEL, dim=DIM, status=status)
    good = db.read_bytes()
    caplog.set_level(logging.DEBUG, logger="device.service.gallery")
    zero_bytes(db)
    for _ in range(5):
        assert not watcher.check()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "the file is empty" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert status.to_json()["warning"] and status.matching  # the loaded gallery stays
    assert len(live.current().index) == 80
    caplog.clear()
    db.write_bytes(good)
    for _ in range(3):
        watcher.check()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum("works again" in m for m in infos) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert status.to_json()["warning"] is None
    live.close()


def test_watcher_reads_an_unchanged_gallery_on_a_full_disk_without_complaint(
        small_fs: Path, pristine: tuple[Path, str], caplog: pytest.LogCaptureFixture) -> None:
    db = small_fs / "gallery.db"
    shutil.copyfile(pristine[0], db)
    status = GalleryStatus(db)
    live = open_gallery(db, model_id=MODEL, dim=DIM, status=status)
    watcher = GalleryWatcher(live, db, model_id=MODEL, dim=DIM, status=status)
    filler = small_fs / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(fd, b"\0" * PAGE)
    finally:
        os.close(fd)
    for side in ("-wal", "-shm"):
        Path(f"{db}{side}").unlink(missing_ok=True)
    caplog.set_level(logging.DEBUG, logger="device.service.gallery")
    results = [watcher.check() for _ in range(5)]  # the check opens read-only: no write
    assert results == [False] * 5
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert status.to_json()["warning"] is None
    caplog.clear()
    filler.unlink()
    watcher.check()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    live.close()


def test_gallery_files_are_0600_under_umask_022(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db = tmp_path / "new" / "gallery.db"
        with GalleryStore(db, model_id=MODEL, dim=DIM, create=True) as store:
            enroll(store, FaceMaker(seed=3), "Ada", n=1)
            for name in ("gallery.db", "gallery.db-wal", "gallery.db-shm"):
                assert (db.parent / name).stat().st_mode & 0o777 == 0o600, name
            store.export(tmp_path / "export.jsonl")
        assert (tmp_path / "export.jsonl").stat().st_mode & 0o777 == 0o600
        legacy = tmp_path / "legacy.db"
        shutil.copyfile(db, legacy)
        os.chmod(legacy, 0o644)  # made by an older firmware
        GalleryStore(legacy).close()
        assert legacy.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_a_read_only_store_refuses_writes(pristine: tuple[Path, str], tmp_path: Path) -> None:
    db = tmp_path / "gallery.db"
    shutil.copyfile(pristine[0], db)
    with GalleryStore(db, read_only=True) as store, \
            pytest.raises(GalleryError, match="opened read-only"):
        store.delete_identity(pristine[1])


def test_building_a_bundle_leaves_a_rollback_journal_gallery_as_it_was(
        pristine: tuple[Path, str], tmp_path: Path, exported: tuple[Path, Path]) -> None:
    """`sync build` reads the central gallery: it must not switch it to WAL, migrate it
    or change its mode (a writer's open would)."""
    db = tmp_path / "central.db"
    shutil.copyfile(pristine[0], db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    conn.close()
    os.chmod(db, 0o640)
    before = fingerprint(db)
    result = CliRunner().invoke(main, _verbs(db, pristine[1], tmp_path, tmp_path,
                                             exported)["sync-build"])
    assert result.exit_code == 0, result.output
    assert fingerprint(db) == before
    assert db.stat().st_mode & 0o777 == 0o640

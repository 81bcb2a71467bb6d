"""``facegate gallery …`` on real gallery files: listing, deleting for real, export and
import, integrity checks, and the default path in the state directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from device.cli import main
from device.gallery.store import GalleryStore
from tests.support.gallery import DIM, MODEL, T0, Clock, FaceMaker, blob, enroll, raw_files, where


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["gallery", *args], input=input, env=env,
                              catch_exceptions=False)


@pytest.fixture(autouse=True)
def _empty_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may find (and write to) a real unit's audit log or outbox."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "no-state"))


@pytest.fixture()
def seeded(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, list[bytes]]]]:
    """A gallery with three people; returns its path and label -> (id, embedding bytes)."""
    db = tmp_path / "gallery.db"
    maker = FaceMaker(seed=7)
    people: dict[str, tuple[str, list[bytes]]] = {}
    with GalleryStore(db, model_id=MODEL, dim=DIM, create=True, clock=Clock()) as store:
        for label, n in (("Ada Lovelace", 2), ("Bartholomew Quist", 3), ("Grace Hopper", 1)):
            ident, faces = enroll(store, maker, label, n=n, external_ref=f"ref-{n}",
                                  expires_at=T0 + 3600 if n == 1 else None)
            people[label] = (ident, [blob(f) for f in faces])
    return db, people


def test_info_and_list(seeded: tuple[Path, dict[str, tuple[str, list[bytes]]]]) -> None:
    db, people = seeded
    res = run("info", "--db", str(db), "--json")
    assert res.exit_code == 0, res.stdout
    info = json.loads(res.stdout)
    assert (info["model_id"], info["dim"], info["identities"], info["faces"]) == (
        MODEL, DIM, 3, 6)
    assert info["path"] == str(db)

    res = run("info", "--db", str(db))
    assert f"model       {MODEL} (dim {DIM})" in res.stdout

    rows = json.loads(run("list", "--db", str(db), "--json").stdout)
    assert [(r["label"], r["face_count"]) for r in rows] == [
        ("Ada Lovelace", 2), ("Bartholomew Quist", 3), ("Grace Hopper", 1)]
    assert rows[2]["expires_at"] == "2025-06-15T16:06:40+00:00"

    text = run("list", "--db", str(db)).stdout
    ada = people["Ada Lovelace"][0]
    assert any(line.startswith(ada) and line.endswith("Ada Lovelace")
               for line in text.splitlines())


def test_show_prints_faces_but_never_embeddings(
        seeded: tuple[Path, dict[str, tuple[str, list[bytes]]]]) -> None:
    db, people = seeded
    ident, _ = people["Bartholomew Quist"]
    res = run("show", ident, "--db", str(db), "--json")
    assert res.exit_code == 0, res.stdout
    shown = json.loads(res.stdout)
    assert (shown["label"], shown["external_ref"], len(shown["faces"])) == (
        "Bartholomew Quist", "ref-3", 3)
    assert "embedding" not in res.stdout
    assert all(len(f["image_sha256"]) == 64 for f in shown["faces"])
    text = run("show", ident, "--db", str(db)).stdout
    assert "faces         3" in text


def test_unknown_identity_and_missing_gallery_are_clear_errors(
        seeded: tuple[Path, dict[str, tuple[str, list[bytes]]]], tmp_path: Path) -> None:
    db, _ = seeded
    res = run("show", "nobody", "--db", str(db))
    assert res.exit_code == 2
    assert "error: no identity 'nobody'" in res.stderr
    res = run("list", "--db", str(tmp_path / "absent.db"))
    assert res.exit_code == 2
    assert "error: no gallery at" in res.stderr
    assert not (tmp_path / "absent.db").exists()


def test_delete_asks_first_and_erase_removes_the_bytes(
        seeded: tuple[Path, dict[str, tuple[str, list[bytes]]]]) -> None:
    db, people = seeded
    ident, gone = people["Bartholomew Quist"]

    res = run("delete", ident, "--db", str(db), input="n\n")
    assert res.exit_code == 1  # aborted
    assert "Delete" in res.stderr and "3 faces" in res.stderr
    assert all(where(raw_files(db), b) for b in gone)

    res = run("delete", ident, "--erase", "--yes", "--db", str(db), "--json")
    assert res.exit_code == 0, res.stdout
    assert json.loads(res.stdout) == {"identity_ids": [ident], "faces": 3, "erased": True,
                                      "label": "Bartholomew Quist", "outbox_erased": None,
                                      "audited": False}
    files = raw_files(db)
    for b in gone:
        assert where(files, b) == []
    assert where(files, b"Bartholomew Quist") == []
    for label in ("Ada Lovelace", "Grace Hopper"):
        assert where(files, label.encode()) == ["gallery.db"]
        assert all(where(files, b) == ["gallery.db"] for b in people[label][1])
    rows = json.loads(run("list", "--db", str(db), "--json").stdout)
    assert [r["label"] for r in rows] == ["Ada Lovelace", "Grace Hopper"]


def test_delete_confirmed_interactively(
        seeded: tuple[Path, dict[str, tuple[str, list[bytes]]]]) -> None:
    db, people = seeded
    ident, gone = people["Ada Lovelace"]
    res = run("delete", ident, "--db", str(db), input="y\n")
    assert res.exit_code == 0, res.stdout
    assert res.stdout == f"deleted {ident} (Ada Lovelace): 2 faces\n"
    assert all(where(raw_files(db), b) == [] for b in gone)


def test_export_then_import_into_a_new_gallery(
        seeded: tuple[Path, dict[str, tuple[str, list[bytes]]]], tmp_path: Path) -> None:
    db, _ = seeded
    out = tmp_path / "backup.jsonl"
    res = run("export", "-o", str(out), "--db", str(db), "--json")
    assert res.exit_code == 0, res.stdout
    exported = json.loads(res.stdout)
    assert (exported["identities"], exported["faces"]) == (3, 6)

    res = run("export", "-o", str(out), "--db", str(db))
    assert res.exit_code == 2 and "already exists" in res.stderr

    restored = tmp_path / "restored" / "gallery.db"
    res = run("import", str(out), "--db", str(restored), "--json")
    assert res.exit_code == 0, res.stdout
    imported = json.loads(res.stdout)
    assert imported["created"] is True
    assert imported["content_sha256"] == exported["content_sha256"]
    before = json.loads(run("list", "--db", str(db), "--json").stdout)
    after = json.loads(run("list", "--db", str(restored), "--json").stdout)
    assert after == before

    res = run("import", str(out), "--db", str(restored))  # same ids again: refused whole
    assert res.exit_code == 2
    assert "already in the gallery" in res.stderr
    assert json.loads(run("info", "--db", str(restored), "--json").stdout)["faces"] == 6


def test_import_refuses_another_model_and_creates_nothing(
        seeded: tuple[Path, dict[str, tuple[str, list[bytes]]]], tmp_path: Path) -> None:
    db, _ = seeded
    out = tmp_path / "backup.jsonl"
    assert run("export", "-o", str(out), "--db", str(db)).exit_code == 0
    other = tmp_path / "other.db"
    GalleryStore(other, model_id="dlib-resnet-v1", dim=DIM, create=True).close()
    res = run("import", str(out), "--db", str(other))
    assert res.exit_code == 2
    assert "cannot be mixed" in res.stderr

    out.write_bytes(out.read_bytes().replace(b"Ada Lovelace", b"Ada Lovelacf"))
    fresh = tmp_path / "fresh.db"
    res = run("import", str(out), "--db", str(fresh))
    assert res.exit_code == 2
    assert "damaged" in res.stderr
    assert not fresh.exists()


def test_check_passes_a_good_file_and_fails_a_damaged_one(
        seeded: tuple[Path, dict[str, tuple[str, list[bytes]]]]) -> None:
    db, _ = seeded
    res = run("check", "--db", str(db), "--model-id", MODEL, "--dim", str(DIM))
    assert res.exit_code == 0, res.stdout
    assert res.stdout.startswith(f"ok: {db}: 3 identities, 6 faces")

    res = run("check", "--db", str(db), "--dim", "512", "--json")
    assert res.exit_code == 2
    assert json.loads(res.stdout)["problems"] == ["dimension 128, expected 512"]

    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    res = run("check", "--db", str(db))
    assert res.exit_code == 2
    assert "failed its integrity check" in res.stderr


def test_default_gallery_lives_in_the_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    maker = FaceMaker(seed=3)
    with GalleryStore(state / "gallery.db", model_id=MODEL, dim=DIM, create=True) as store:
        enroll(store, maker, "Default Path")
    res = run("list", "--json", env={"STATE_DIRECTORY": str(state)})
    assert res.exit_code == 0, res.stdout
    assert [r["label"] for r in json.loads(res.stdout)] == ["Default Path"]


def test_show_takes_a_unique_label_and_lists_the_ids_of_a_shared_one(
        seeded: tuple[Path, dict[str, tuple[str, list[bytes]]]]) -> None:
    db, people = seeded
    ident, _ = people["Grace Hopper"]
    by_label = json.loads(run("show", "Grace Hopper", "--db", str(db), "--json").stdout)
    assert by_label["id"] == ident
    with GalleryStore(db) as store:  # a second "Grace Hopper" (e.g. from an import)
        twin, _ = enroll(store, FaceMaker(seed=99), "Grace Hopper", n=1)
    res = run("show", "Grace Hopper", "--db", str(db))
    assert res.exit_code == 2
    assert "2 identities are labelled 'Grace Hopper'; give an id" in res.stderr
    assert ident in res.stderr and twin in res.stderr


def test_delete_without_a_terminal_says_that_yes_confirms(
        seeded: tuple[Path, dict[str, tuple[str, list[bytes]]]]) -> None:
    """No answer (no terminal, end of input) deletes nothing and names -y."""
    db, people = seeded
    ident, gone = people["Ada Lovelace"]
    res = run("delete", ident, "--erase", "--db", str(db))  # stdin: empty
    assert res.exit_code == 1
    assert "Aborted!" not in res.stderr
    assert "not confirmed (-y/--yes confirms without asking)" in res.stderr
    assert all(where(raw_files(db), b) for b in gone)


def test_commands_writing_to_the_state_directory_say_where_it_is(
        seeded: tuple[Path, dict[str, tuple[str, list[bytes]]]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    db, people = seeded
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    (state / "gallery.db").write_bytes(db.read_bytes())
    ident, _ = people["Ada Lovelace"]
    res = run("delete", ident, "--yes")
    assert res.exit_code == 0, res.output
    assert f"facegate: state directory {state}\n" in res.stderr
    explicit = run("delete", people["Grace Hopper"][0], "--yes", "--db", str(db))
    assert "state directory" not in explicit.stderr  # nothing written there
    help_text = run("delete", "--help").stdout
    assert "$STATE_DIRECTORY" in help_text and "~/.local/state/facegate" in help_text

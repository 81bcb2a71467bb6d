"""Erasure across the unit's stores: ``facegate gallery delete ID --erase --config FILE``.

Two people are enrolled, matched (pending outbox events and audit decision records, as
the service writes them) and one is erased. Afterwards the raw bytes of the gallery,
the outbox and the audit log (each with its WAL and shared-memory file) hold neither
that person's embeddings nor their label, while the other person's are still there;
the audit log records the deletion by id and still verifies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from device.audit import AuditKind, AuditLog, read_records, verify
from device.cli import main
from device.events.outbox import Outbox
from device.gallery.store import GalleryStore
from tests.gallery_helpers import DIM, MODEL, Clock, FaceMaker, blob, enroll, raw_files

ERASED, KEPT = "Zoltan Erasmus-Quill", "Kept Person"


def _config(tmp_path: Path, state: Path) -> Path:
    path = tmp_path / "facegate.toml"
    path.write_text(
        f'unit_id = "unit-1"\nstate_dir = "{state}"\n\n'
        f'[[cameras]]\ntype = "image"\ncamera_id = "front"\npath = "{tmp_path}"\n\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
    )
    return path


def _all_files(state: Path) -> dict[str, bytes]:
    return {f"{db}:{name}": data
            for db in ("gallery.db", "outbox.sqlite3", "audit.db")
            for name, data in raw_files(state / db).items()}


def test_gallery_delete_erase_leaves_no_embedding_or_label_in_any_database_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "elsewhere"))  # only --config
    maker = FaceMaker(seed=11)
    ids: dict[str, str] = {}
    blobs: dict[str, list[bytes]] = {}
    with GalleryStore(state / "gallery.db", model_id=MODEL, dim=DIM, create=True,
                      clock=Clock()) as store:
        for label in (ERASED, KEPT):
            ids[label], faces = enroll(store, maker, label, n=3)
            blobs[label] = [blob(f) for f in faces]
    # What the service leaves behind for each: audit records and unsent events (which
    # carry the label).
    with AuditLog(state / "audit.db") as audit, Outbox(state / "outbox.sqlite3") as outbox:
        for n, label in enumerate((ERASED, KEPT, ERASED)):
            audit.record_enroll(ids[label], gallery_version=1, samples=3, actor="cli:test")
            audit.record_match(f"evt-{n}", ids[label], 0.97, 0.94, 1, "front")
            payload = {"event_id": f"evt-{n}", "identity_id": ids[label], "label": label}
            outbox.put("facegate/unit-1/front/match", json.dumps(payload).encode(),
                       identity_id=ids[label], event_id=f"evt-{n}")
    before = _all_files(state)
    assert any(ERASED.encode() in data for data in before.values())

    res = CliRunner().invoke(main, ["gallery", "delete", ids[ERASED], "--erase", "--yes",
                                    "--config", str(_config(tmp_path, state)), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["faces"], out["outbox_erased"], out["audited"]) == (3, 2, True)

    files = _all_files(state)
    assert "gallery.db:gallery.db" in files and "outbox.sqlite3:outbox.sqlite3" in files
    assert "audit.db:audit.db" in files
    hits = [name for name, data in files.items() if ERASED.encode() in data]
    assert hits == []
    for needle in blobs[ERASED]:
        assert [name for name, data in files.items() if needle in data] == []
    # The other person is untouched.
    assert [n for n, d in files.items() if KEPT.encode() in d] == [
        "gallery.db:gallery.db", "outbox.sqlite3:outbox.sqlite3"]
    for needle in blobs[KEPT]:
        assert [n for n, d in files.items() if needle in d] == ["gallery.db:gallery.db"]
    with Outbox(state / "outbox.sqlite3") as outbox:
        assert [r.identity_id for r in outbox.pending()] == [ids[KEPT]]

    # The audit log keeps the fact of the deletion, by id, and still verifies.
    _, records = read_records(state / "audit.db")
    (deleted,) = [r.payload_obj() for r in records if r.kind == AuditKind.DELETE.value]
    assert deleted["identity_id"] == ids[ERASED] and deleted["erase"] is True
    assert deleted["outbox_erased"] == 2 and deleted["samples_removed"] == 3
    assert records[-1].actor.startswith("cli:")
    assert verify(state / "audit.db").ok


def test_delete_without_an_outbox_says_so(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    db = tmp_path / "state" / "gallery.db"
    with GalleryStore(db, model_id=MODEL, dim=DIM, create=True) as store:
        ident, _ = enroll(store, FaceMaker(seed=2), "Solo")
    res = CliRunner().invoke(main, ["gallery", "delete", ident, "--erase", "--yes"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "no outbox found" in res.stderr and "not recorded" in res.stderr

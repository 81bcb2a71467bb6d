"""Erasure across the unit's stores: ``facegate gallery delete ID --erase --config FILE``.

Two people are enrolled, matched (pending outbox events and audit decision records, as
the service writes them) and one is erased. Afterwards the raw bytes of the gallery,
the outbox and the audit log (each with its WAL and shared-memory file) hold neither
that person's embeddings nor their label, while the other person's are still there;
the audit log records the deletion by id and still verifies. While the service runs
with the same state directory, the command refuses and writes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from device.audit import AuditKind, AuditLog, read_records, verify
from device.cli import main
from device.events.outbox import Outbox
from device.gallery.records import NewFace, NewIdentity
from device.gallery.store import GalleryStore
from device.ops.localbroker import LocalBroker
from device.service.pipeline import RecognitionService
from device.types import Embedding
from tests.integration.test_service_lifecycle import GatedDetector, TinyEmbedder, _frames
from tests.integration.test_service_lifecycle import _config as service_config
from tests.support.events import Collector
from tests.support.gallery import DIM, MODEL, Clock, FaceMaker, blob, enroll, raw_files

FACEGATE = str(Path(sys.executable).parent / "facegate")

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


def test_erasure_while_the_service_runs_is_refused_and_changes_nothing(
    tmp_path: Path, broker: LocalBroker
) -> None:
    """``gallery delete --erase`` in another process while ``facegate run`` holds the
    state directory: refused with the service's pid, no file written; after the service
    stopped the same command erases."""
    config = service_config(tmp_path, broker.url, _frames(tmp_path / "frames", 1000))
    config_file = tmp_path / "facegate.toml"
    config_file.write_text(
        f'unit_id = "unit-1"\nstate_dir = "{config.state_dir}"\n\n'
        f'[[cameras]]\ntype = "image"\ncamera_id = "front"\npath = "{tmp_path / "frames"}"\n\n'
        f'[mqtt]\nurl = "{broker.url}"\n'
    )
    vector = Embedding(np.eye(8, dtype=np.float32)[1], "tiny")
    with GalleryStore(config.gallery_path, model_id="tiny", dim=8, create=True) as store:
        store.add_identity_with_faces(NewIdentity(label=ERASED, id="id-a"),
                                      [NewFace(vector, 1.0, "ab" * 32)])
    command = [FACEGATE, "gallery", "delete", "id-a", "--erase", "--yes",
               "--config", str(config_file), "--json"]
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "elsewhere")}
    with Collector(broker.host, broker.port, ["facegate/unit-1/+/match"]) as collector:
        assert collector.wait_subscribed()
        with RecognitionService(config, detector=GatedDetector(blink=6),
                                embedder=TinyEmbedder()) as service:
            assert collector.wait_for(bool, 30)  # it runs, and matches the person
            refused = subprocess.run(command, env=env, capture_output=True, text=True,
                                     timeout=120, check=False)
            with GalleryStore(config.gallery_path) as store:
                still = [i.id for i in store.list_identities()]
            service.request_stop("test over")
    assert refused.returncode == 2, refused.stderr
    assert f"the service is running (pid {os.getpid()})" in refused.stderr
    assert "stop it" in refused.stderr and refused.stdout == ""
    assert still == ["id-a"]
    _, records = read_records(config.audit_path)
    assert AuditKind.DELETE.value not in [r.kind for r in records]

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["identity_ids"] == ["id-a"] and out["audited"] is True
    with GalleryStore(config.gallery_path) as store:
        assert list(store.list_identities()) == []
    _, records = read_records(config.audit_path)
    assert [r.actor[:4] for r in records if r.kind == AuditKind.DELETE.value] == ["cli:"]
    assert verify(config.audit_path).ok
    with Outbox(config.mqtt.outbox_path) as outbox:
        assert [r for r in outbox.pending() if r.identity_id == "id-a"] == []

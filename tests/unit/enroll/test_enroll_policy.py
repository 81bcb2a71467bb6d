"""Enrollment batch policy on a real gallery file, with faces made up (no models).

All or nothing by default; ``skip_rejected`` writes the accepted photos; duplicates
(inside the batch and against the gallery), taken labels and the face cap refuse an
identity; a refused batch leaves the file byte-for-byte unchanged; the audit log gets
one record per identity, without biometric data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from device.audit.log import AuditLog, read_records
from device.enroll.enroll import (
    DUPLICATE,
    UNREADABLE,
    ExaminedPhoto,
    IdentityRequest,
    PhotoResult,
    commit,
    identity_folders,
    plan,
)
from device.errors import EnrollmentError
from device.gallery.records import NewFace, NewIdentity
from device.gallery.store import GalleryStore
from device.types import Embedding
from tests.support.gallery import DIM, MODEL, FaceMaker, sha256_file


def _good(maker: FaceMaker, name: str) -> ExaminedPhoto:
    face = maker.face()
    return ExaminedPhoto(PhotoResult(Path(name), (), "", face.image_sha256, 1, face.quality),
                         face)


def _bad(name: str, reason: str = "blurred", sha: str | None = None) -> ExaminedPhoto:
    digest = sha or hashlib.sha256(name.encode()).hexdigest()
    return ExaminedPhoto(PhotoResult(Path(name), (reason,), "sharpness 0.01 < 0.08", digest, 1))


def _request(label: str, rows: list[ExaminedPhoto]) -> IdentityRequest:
    return IdentityRequest(NewIdentity(label=label), tuple(r.result.path for r in rows))


@pytest.fixture()
def store(tmp_path: Path) -> GalleryStore:
    with GalleryStore(tmp_path / "gallery.db", model_id=MODEL, dim=DIM, create=True) as s:
        yield s  # type: ignore[misc]


def _fingerprint(store: GalleryStore) -> str:
    store.checkpoint()
    return sha256_file(store.path)


def test_one_rejected_photo_refuses_the_whole_batch(store: GalleryStore) -> None:
    maker = FaceMaker(1)
    before = _fingerprint(store)
    rows = [[_good(maker, "a1.jpg"), _good(maker, "a2.jpg")],
            [_good(maker, "b1.jpg"), _bad("b2.jpg")]]
    requests = [_request("Ada", rows[0]), _request("Bob", rows[1])]
    report = commit(store, requests, rows)
    assert not report.committed
    assert report.reason is not None and "all or nothing" in report.reason
    assert report.accepted == 3 and report.rejected == 1
    assert [i.identity_id for i in report.identities] == [None, None]
    assert report.identities[1].rejected[0].reasons == ("blurred",)
    assert store.counts() == (0, 0)
    assert _fingerprint(store) == before


def test_skip_rejected_writes_the_accepted_photos(store: GalleryStore) -> None:
    maker = FaceMaker(2)
    rows = [[_good(maker, "a1.jpg"), _bad("a2.jpg")], [_bad("c1.jpg", UNREADABLE)]]
    requests = [_request("Ada", rows[0]), _request("Cy", rows[1])]
    report = commit(store, requests, rows, skip_rejected=True)
    assert report.committed
    ada, cy = report.identities
    assert ada.enrolled and len(ada.accepted) == 1
    assert not cy.enrolled and cy.problem == "no acceptable photo"
    assert store.counts() == (1, 1)
    assert store.get(ada.identity_id or "").label == "Ada"


def test_good_batch_is_one_transaction_and_audited(store: GalleryStore, tmp_path: Path) -> None:
    maker = FaceMaker(3)
    rows = [[_good(maker, f"{who}{k}.jpg") for k in range(3)] for who in ("a", "b")]
    requests = [_request("Ada", rows[0]), _request("Bob", rows[1])]
    revision = store.metadata().revision
    with AuditLog(tmp_path / "audit.db") as audit:
        report = commit(store, requests, rows, audit=audit, actor="tester")
    assert report.committed and store.counts() == (2, 6)
    assert store.metadata().revision == revision + 1  # one write for the whole batch
    records = [r for r in read_records(tmp_path / "audit.db")[1] if r.kind == "enroll"]
    payloads = [json.loads(r.payload) for r in records]
    assert [p["identity_id"] for p in payloads] == [i.identity_id for i in report.identities]
    assert all(p["samples"] == 3 for p in payloads)
    assert all(r.actor == "tester" for r in records)
    assert all(set(p) == {"identity_id", "gallery_version", "samples"} for p in payloads)


def test_duplicates_and_taken_labels(store: GalleryStore) -> None:
    maker = FaceMaker(4)
    first = [_good(maker, "a1.jpg")]
    assert commit(store, [_request("Ada", first)], [first]).committed
    before = _fingerprint(store)
    again = ExaminedPhoto(PhotoResult(Path("copy.jpg"), (), "", first[0].result.image_sha256,
                                      1, 0.9), maker.face())
    rows = [[again, _good(maker, "b2.jpg")]]
    report = commit(store, [_request("Bob", rows[0])], rows)
    assert not report.committed
    dup = report.identities[0].photos[0]
    assert dup.reasons == (DUPLICATE,) and "already enrolled" in dup.detail
    rows = [[_good(maker, "a9.jpg")]]
    report = commit(store, [_request(" Ada ", rows[0])], rows)
    assert not report.committed
    assert "already enrolled as identity" in (report.identities[0].problem or "")
    assert _fingerprint(store) == before


def test_face_cap_refuses_the_identity(tmp_path: Path) -> None:
    maker = FaceMaker(5)
    with GalleryStore(tmp_path / "g.db", model_id=MODEL, dim=DIM, create=True,
                      max_faces_per_identity=2) as store:
        rows = [[_good(maker, f"a{k}.jpg") for k in range(3)]]
        checked = plan(store, [_request("Ada", rows[0])], rows)
        assert not checked.acceptable
        assert "cap of 2" in (checked.reports[0].problem or "")


def test_plan_without_a_gallery_and_dry_run(store: GalleryStore) -> None:
    maker = FaceMaker(6)
    rows = [[_good(maker, "a1.jpg")]]
    assert plan(None, [_request("Ada", rows[0])], rows).acceptable
    report = commit(store, [_request("Ada", rows[0])], rows, dry_run=True)
    assert not report.committed and report.dry_run and store.counts() == (0, 0)


def test_store_refusal_writes_nothing(store: GalleryStore) -> None:
    vector = np.ones(DIM, np.float32) / np.sqrt(DIM)
    wrong = NewFace(Embedding(vector, "other-model"), 0.5, hashlib.sha256(b"x").hexdigest())
    rows = [[ExaminedPhoto(PhotoResult(Path("x.jpg"), (), "", wrong.image_sha256, 1, 0.5),
                           wrong)]]
    before = _fingerprint(store)
    with pytest.raises(EnrollmentError, match="other-model"):
        commit(store, [_request("X", rows[0])], rows)
    assert _fingerprint(store) == before


def test_identity_folders(tmp_path: Path) -> None:
    for who in ("bob", "ada"):
        (tmp_path / who).mkdir()
        (tmp_path / who / "1.jpg").write_bytes(b"x")
    (tmp_path / "ada" / "notes.txt").write_text("not an image")
    assert identity_folders(tmp_path) == [("ada", (tmp_path / "ada" / "1.jpg",)),
                                          ("bob", (tmp_path / "bob" / "1.jpg",))]
    (tmp_path / "loose.jpg").write_bytes(b"x")
    with pytest.raises(EnrollmentError, match="outside any identity folder"):
        identity_folders(tmp_path)
    with pytest.raises(EnrollmentError, match="not a folder"):
        identity_folders(tmp_path / "loose.jpg")

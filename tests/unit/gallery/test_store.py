"""The gallery store on real SQLite files: migrations, atomic batches, the face cap,
deletion that really removes bytes, the retention guard, export/import, integrity
checks and readers that never see half an enrollment."""

from __future__ import annotations

import base64
import sqlite3
import stat
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pydantic
import pytest

from device.errors import EnrollmentError, GalleryError
from device.gallery.exchange import write_export
from device.gallery.schema import MIGRATIONS, SCHEMA_VERSION, Migration, migrate
from device.gallery.store import (
    EnrollmentBatch,
    GalleryConfig,
    GalleryMatrix,
    GalleryStore,
    NewFace,
    NewIdentity,
    integrity_check,
)
from device.types import Embedding
from tests.support.gallery import (
    DIM,
    MODEL,
    T0,
    Clock,
    FaceMaker,
    blob,
    enroll,
    raw_files,
    sha256_file,
    where,
)


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "gallery.db"


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def store(db: Path, clock: Clock):  # type: ignore[no-untyped-def]
    with GalleryStore(db, model_id=MODEL, dim=DIM, create=True, clock=clock) as s:
        yield s


@pytest.fixture()
def maker() -> FaceMaker:
    return FaceMaker(seed=1234)


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, isolation_level=None)


# ------------------------------------------------------------------ open / create


def test_new_gallery_has_metadata_wal_and_schema(store: GalleryStore, db: Path) -> None:
    meta = store.metadata()
    assert (meta.model_id, meta.dim, meta.version, meta.revision) == (MODEL, DIM, 0, 0)
    assert meta.created_at == meta.updated_at == T0
    assert len(meta.gallery_id) == 32
    assert meta.schema_version == SCHEMA_VERSION
    conn = raw(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT version, name FROM schema_migrations").fetchall() == [
        (1, MIGRATIONS[0].name)]
    conn.close()


def test_close_is_idempotent_and_a_closed_store_refuses_work(db: Path) -> None:
    store = GalleryStore(db, model_id=MODEL, dim=DIM, create=True)
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(GalleryError, match="closed"):
        store.counts()


def test_reopen_keeps_identity_and_checks_the_callers_model(db: Path, maker: FaceMaker) -> None:
    with GalleryStore(db, model_id=MODEL, dim=DIM, create=True) as store:
        ident, _ = enroll(store, maker, "Ada")
        gallery_id = store.metadata().gallery_id
    with GalleryStore(db) as store:  # model and dim come from the file
        assert (store.model_id, store.dim) == (MODEL, DIM)
        assert store.metadata().gallery_id == gallery_id
        assert store.get(ident).label == "Ada"
    with pytest.raises(GalleryError, match=r"model 'test-embedder-v1'.*runs 'other-model'"):
        GalleryStore(db, model_id="other-model", dim=DIM)
    with pytest.raises(GalleryError, match=r"128-dimensional.*512-dimensional"):
        GalleryStore(db, model_id=MODEL, dim=512)


def test_missing_file_is_not_created_without_create(db: Path) -> None:
    with pytest.raises(GalleryError, match="no gallery at"):
        GalleryStore(db)
    assert not db.exists()
    with pytest.raises(GalleryError, match="needs a model id"):
        GalleryStore(db, create=True)


def test_a_file_that_is_not_sqlite_is_refused(db: Path) -> None:
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(GalleryError, match="cannot open gallery"):
        GalleryStore(db)


def test_face_cap_setting_is_bounded() -> None:
    assert GalleryConfig().max_faces_per_identity == 20
    assert GalleryConfig(max_faces_per_identity=100).max_faces_per_identity == 100
    with pytest.raises(pydantic.ValidationError):
        GalleryConfig(max_faces_per_identity=101)
    with pytest.raises(pydantic.ValidationError):
        GalleryConfig(colour="blue")  # type: ignore[call-arg]


def test_store_refuses_a_face_cap_above_100(db: Path) -> None:
    with pytest.raises(GalleryError, match="max_faces_per_identity"):
        GalleryStore(db, model_id=MODEL, dim=DIM, create=True, max_faces_per_identity=101)


# --------------------------------------------------------------------- migrations


def _add_photo_consent(db: object) -> None:
    from sqlite_utils import Database

    assert isinstance(db, Database)
    db.table("identities").add_column("photo_consent", int)  # inside the migration transaction


MIGRATION_2 = Migration(2, "identities.photo_consent", _add_photo_consent)


def test_a_v1_gallery_upgrades_and_keeps_its_data(db: Path, maker: FaceMaker) -> None:
    with GalleryStore(db, model_id=MODEL, dim=DIM, create=True) as store:
        ident, _ = enroll(store, maker, "Ada")
    conn = raw(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert migrate(conn, (*MIGRATIONS, MIGRATION_2), clock=lambda: T0) == (2,)
    assert migrate(conn, (*MIGRATIONS, MIGRATION_2)) == ()  # idempotent
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("SELECT version, applied_at FROM schema_migrations WHERE version = 2"
                        ).fetchone() == (2, T0)
    assert conn.execute("SELECT label, photo_consent FROM identities WHERE id = ?",
                        (ident,)).fetchone() == ("Ada", None)
    assert conn.execute("SELECT count(*) FROM faces").fetchone()[0] == 3
    conn.close()


def test_a_fresh_file_runs_every_migration_in_order(tmp_path: Path) -> None:
    conn = raw(tmp_path / "fresh.db")
    assert migrate(conn, (*MIGRATIONS, MIGRATION_2)) == (1, 2)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(identities)")}
    assert {"label", "consent_ref", "expires_at", "photo_consent"} <= columns
    conn.close()


def test_a_failing_migration_leaves_the_previous_version(db: Path) -> None:
    GalleryStore(db, model_id=MODEL, dim=DIM, create=True).close()

    def half_done(sdb: object) -> None:
        from sqlite_utils import Database

        assert isinstance(sdb, Database)
        sdb.execute("ALTER TABLE identities ADD COLUMN half INTEGER")
        sdb.execute("INSERT INTO no_such_table VALUES (1)")

    conn = raw(db)
    with pytest.raises(GalleryError, match="migration 2"):
        migrate(conn, (*MIGRATIONS, Migration(2, "broken", half_done)))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "half" not in {r[1] for r in conn.execute("PRAGMA table_info(identities)")}
    conn.close()


def test_a_gallery_from_newer_firmware_is_refused(db: Path) -> None:
    GalleryStore(db, model_id=MODEL, dim=DIM, create=True).close()
    conn = raw(db)
    migrate(conn, (*MIGRATIONS, MIGRATION_2))
    conn.close()
    with pytest.raises(GalleryError, match="newer than this firmware supports"):
        GalleryStore(db)


def test_migration_numbers_must_be_consecutive() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    with pytest.raises(ValueError, match="expected 2"):
        migrate(conn, (*MIGRATIONS, Migration(3, "gap", lambda db: None)))


# --------------------------------------------------------------------- enrollment


def test_enrollment_round_trips_every_field(store: GalleryStore, maker: FaceMaker,
                                            clock: Clock) -> None:
    faces = maker.faces(4)
    ident = store.add_identity_with_faces(
        NewIdentity(label="  Ada Lovelace ", id="crm:1815-12-10", external_ref="CRM-42",
                    notes="line one\nline two", enrolled_by="op-7", legal_basis="consent",
                    consent_ref="form-2025-031", expires_at=T0 + 86400),
        faces,
    )
    assert ident.id == "crm:1815-12-10"
    got = store.get(ident.id)
    assert got == ident
    assert (got.label, got.external_ref, got.notes, got.enrolled_by, got.legal_basis,
            got.consent_ref, got.created_at, got.expires_at, got.face_count) == (
        "Ada Lovelace", "CRM-42", "line one\nline two", "op-7", "consent", "form-2025-031",
        T0, T0 + 86400, 4)
    records = store.faces(ident.id)
    assert [r.image_sha256 for r in records] == [f.image_sha256 for f in faces]
    assert [r.quality for r in records] == [f.quality for f in faces]
    assert all(r.model_id == MODEL and r.created_at == T0 for r in records)
    for record, face in zip(records, faces, strict=True):
        assert record.embedding.tobytes() == blob(face)
    assert store.find_by_label("Ada Lovelace") == (got,)
    assert store.find_by_label("Ada") == ()
    assert store.metadata().revision == 1


def test_generated_ids_are_unique_and_labels_may_repeat(store: GalleryStore,
                                                        maker: FaceMaker) -> None:
    a, _ = enroll(store, maker, "Sam")
    b, _ = enroll(store, maker, "Sam")
    assert a != b
    assert {i.id for i in store.find_by_label("Sam")} == {a, b}
    assert [i.label for i in store.list_identities()] == ["Sam", "Sam"]


def test_embeddings_are_stored_as_unit_float32_little_endian(store: GalleryStore, db: Path,
                                                             maker: FaceMaker) -> None:
    v = maker.vector().astype(np.float64) * 7.5  # not unit length, not float32
    ident = store.add_identity_with_faces(NewIdentity(label="Scaled"), [maker.face(v)])
    conn = raw(db)
    (stored,) = conn.execute("SELECT embedding FROM faces WHERE identity_id = ?",
                             (ident.id,)).fetchone()
    conn.close()
    assert isinstance(stored, bytes) and len(stored) == DIM * 4
    vec = np.frombuffer(stored, dtype="<f4")
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-6
    np.testing.assert_allclose(vec, v / np.linalg.norm(v), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.ones(DIM - 1, dtype=np.float32), r"shape \(127,\)"),
        (np.ones((2, DIM), dtype=np.float32), r"shape \(2, 128\)"),
        (np.full(DIM, np.nan, dtype=np.float32), "NaN or infinite"),
        (np.r_[np.inf, np.ones(DIM - 1)].astype(np.float32), "NaN or infinite"),
        (np.zeros(DIM, dtype=np.float32), "zero"),
    ],
)
def test_bad_vectors_are_refused(store: GalleryStore, maker: FaceMaker, vector: np.ndarray,
                                 message: str) -> None:
    with pytest.raises(EnrollmentError, match=message):
        store.add_identity_with_faces(NewIdentity(label="Bad"), [maker.face(vector)])
    assert store.counts() == (0, 0)


def test_an_embedding_from_another_model_is_refused(store: GalleryStore,
                                                    maker: FaceMaker) -> None:
    with pytest.raises(EnrollmentError, match=r"model 'dlib-resnet'.*'test-embedder-v1'"):
        store.add_identity_with_faces(NewIdentity(label="X"),
                                      [maker.face(model_id="dlib-resnet")])


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        (NewIdentity(label="   "), "label must not be empty"),
        (NewIdentity(label="a\x1b[2Jb"), "control characters"),
        (NewIdentity(label="x" * 201), "at most 200"),
        (NewIdentity(label="ok", id="has space"), "identity id"),
        (NewIdentity(label="ok", expires_at=float("nan")), "expires_at must be finite"),
    ],
)
def test_bad_identity_fields_are_refused(store: GalleryStore, maker: FaceMaker,
                                         identity: NewIdentity, message: str) -> None:
    with pytest.raises(EnrollmentError, match=message):
        store.add_identity_with_faces(identity, maker.faces(1))


def test_faces_need_a_sha256_and_an_identity_needs_a_face(store: GalleryStore,
                                                          maker: FaceMaker) -> None:
    emb = Embedding(maker.vector(), MODEL)
    with pytest.raises(EnrollmentError, match="64 hex digits"):
        store.add_identity_with_faces(NewIdentity(label="X"), [NewFace(emb, 0.9, "abc")])
    with pytest.raises(EnrollmentError, match="at least one"):
        store.add_identity_with_faces(NewIdentity(label="X"), [])
    face = maker.face()
    with pytest.raises(EnrollmentError, match="appears twice"):
        store.add_identity_with_faces(NewIdentity(label="X"), [face, face])


def test_a_bad_third_face_leaves_the_file_byte_for_byte_unchanged(
        store: GalleryStore, db: Path, maker: FaceMaker) -> None:
    enroll(store, maker, "Ada")
    enroll(store, maker, "Grace")
    store.checkpoint()
    before = sha256_file(db)
    faces = [maker.face(), maker.face(), maker.face(np.ones(DIM + 1, dtype=np.float32)),
             maker.face()]
    with pytest.raises(EnrollmentError, match=r"face 3: embedding has shape \(129,\)"):
        store.add_identity_with_faces(NewIdentity(label="Half Written"), faces)
    store.checkpoint()
    assert sha256_file(db) == before
    assert store.find_by_label("Half Written") == ()
    assert store.counts() == (2, 6)


def test_a_batch_that_fails_inside_the_transaction_is_rolled_back_whole(
        store: GalleryStore, db: Path, maker: FaceMaker) -> None:
    taken, _ = enroll(store, maker, "Ada")
    store.checkpoint()
    before = sha256_file(db)
    batches = [
        EnrollmentBatch(NewIdentity(label="First"), tuple(maker.faces(5))),
        EnrollmentBatch(NewIdentity(label="Second", id=taken), tuple(maker.faces(2))),
    ]
    with pytest.raises(EnrollmentError, match="already in the gallery"):
        store.enroll_many(batches)
    store.checkpoint()
    assert sha256_file(db) == before
    assert store.find_by_label("First") == ()
    assert store.counts() == (1, 3)
    assert store.metadata().revision == 1


def test_add_faces_is_all_or_nothing(store: GalleryStore, maker: FaceMaker) -> None:
    ident, faces = enroll(store, maker, "Ada", n=2)
    fresh = maker.face()
    with pytest.raises(EnrollmentError, match="already has a face from image"):
        store.add_faces(ident, [fresh, faces[0]])  # fresh is inserted, then rolled back
    assert store.get(ident).face_count == 2
    added = store.add_faces(ident, [fresh])
    assert [r.image_sha256 for r in added] == [fresh.image_sha256]
    assert store.get(ident).face_count == 3
    with pytest.raises(EnrollmentError, match="no identity 'nobody'"):
        store.add_faces("nobody", [maker.face()])


def test_enroll_many_writes_several_identities_together(store: GalleryStore,
                                                        maker: FaceMaker) -> None:
    out = store.enroll_many([EnrollmentBatch(NewIdentity(label=f"P{i}"), tuple(maker.faces(2)))
                             for i in range(5)])
    assert [i.label for i in out] == [f"P{i}" for i in range(5)]
    assert store.counts() == (5, 10)
    assert store.metadata().revision == 1  # one transaction


# ----------------------------------------------------------------------- face cap


def test_default_cap_is_20_faces(store: GalleryStore, maker: FaceMaker) -> None:
    with pytest.raises(EnrollmentError, match="21 faces exceed the cap of 20"):
        store.add_identity_with_faces(NewIdentity(label="Many"), maker.faces(21))
    ident, _ = enroll(store, maker, "Twenty", n=20)
    with pytest.raises(EnrollmentError, match="has 20 faces; adding 1 would exceed the cap"):
        store.add_faces(ident, [maker.face()])
    assert store.counts() == (1, 20)


def test_cap_is_configurable(db: Path, maker: FaceMaker) -> None:
    with GalleryStore(db, model_id=MODEL, dim=DIM, create=True,
                      max_faces_per_identity=3) as store:
        ident, _ = enroll(store, maker, "Ada", n=2)
        with pytest.raises(EnrollmentError, match="cap of 3"):
            store.add_faces(ident, maker.faces(2))
        store.add_faces(ident, maker.faces(1))
        assert store.get(ident).face_count == 3
    with GalleryStore(db, max_faces_per_identity=100) as store:
        store.add_faces(ident, maker.faces(97))
        assert store.get(ident).face_count == 100


# ------------------------------------------------------------------ lookup / matrix


def test_load_matrix_rows_match_faces_and_are_read_only(store: GalleryStore,
                                                        maker: FaceMaker) -> None:
    empty = store.load_matrix()
    assert empty.matrix.shape == (0, DIM) and empty.face_ids.shape == (0,)
    a, fa = enroll(store, maker, "Ada", n=2)
    b, fb = enroll(store, maker, "Bob", n=3)
    face_ids, identity_ids, matrix = store.load_matrix()
    assert matrix.dtype == np.float32 and matrix.shape == (5, DIM)
    assert identity_ids == (a, a, b, b, b)
    assert list(face_ids) == sorted(face_ids)
    assert [row.tobytes() for row in matrix] == [blob(f) for f in fa + fb]
    assert not matrix.flags.writeable and not face_ids.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        matrix[0, 0] = 1.0


def test_unknown_identity_is_a_gallery_error(store: GalleryStore) -> None:
    with pytest.raises(GalleryError, match="no identity 'ghost'"):
        store.get("ghost")
    with pytest.raises(GalleryError, match="no identity 'ghost'"):
        store.faces("ghost")
    with pytest.raises(GalleryError, match="no identity 'ghost'"):
        store.delete_identity("ghost")


def test_version_is_explicit_and_revision_counts_writes(store: GalleryStore,
                                                        maker: FaceMaker, clock: Clock) -> None:
    assert store.bump_version() == 1
    assert store.bump_version(to=10) == 10
    with pytest.raises(GalleryError, match="must increase"):
        store.bump_version(to=10)
    clock.now = T0 + 5
    enroll(store, maker, "Ada")
    meta = store.metadata()
    assert (meta.version, meta.revision, meta.updated_at) == (10, 3, T0 + 5)


# ----------------------------------------------------------------------- deletion


def test_delete_removes_the_embedding_bytes_from_db_wal_and_shm(
        store: GalleryStore, db: Path, maker: FaceMaker) -> None:
    keep_a, faces_a = enroll(store, maker, "Keep A", n=3)
    gone, faces_gone = enroll(store, maker, "Gone Person", n=4)
    keep_b, faces_b = enroll(store, maker, "Keep B", n=2)
    store.load_matrix()  # a pooled reader connection stays open during the delete
    before = raw_files(db)
    assert all(where(before, blob(f)) for f in faces_gone)  # the scan would see them

    report = store.delete_identity(gone, erase=False)

    assert (report.identity_ids, report.faces, report.erased) == ((gone,), 4, False)
    files = raw_files(db)
    assert set(files) == {"gallery.db", "gallery.db-wal", "gallery.db-shm"}
    assert files["gallery.db-wal"] == b""  # truncated
    for face in faces_gone:
        assert where(files, blob(face)) == []
    for face in faces_a + faces_b:
        assert where(files, blob(face)) == ["gallery.db"]
    assert {i.id for i in store.list_identities()} == {keep_a, keep_b}
    assert store.load_matrix().matrix.shape == (5, DIM)


def test_erase_removes_embeddings_label_and_image_hashes_everywhere(
        store: GalleryStore, db: Path, maker: FaceMaker) -> None:
    enroll(store, maker, "Keep Ada Lovelace", n=2)
    gone, faces_gone = enroll(store, maker, "Zebulon Quixote-Marchetti", n=5,
                              external_ref="EXT-ZQM-7731", notes="seen near gate 4")
    enroll(store, maker, "Keep Grace Hopper", n=2)
    store.delete_identity(gone, erase=True)

    for closed in (False, True):  # with the store open, and again once it is closed
        if closed:
            store.close()
        files = raw_files(db)
        for face in faces_gone:
            assert where(files, blob(face)) == []
            assert where(files, face.image_sha256.encode()) == []
        for text in ("Zebulon Quixote-Marchetti", "EXT-ZQM-7731", "seen near gate 4"):
            assert where(files, text.encode()) == [], text
        assert where(files, b"Keep Ada Lovelace") == ["gallery.db"]
        assert where(files, b"Keep Grace Hopper") == ["gallery.db"]


def test_expired_lists_identities_due_at_now(store: GalleryStore, maker: FaceMaker,
                                             clock: Clock) -> None:
    soon, _ = enroll(store, maker, "Soon", expires_at=T0 + 10)
    later, _ = enroll(store, maker, "Later", expires_at=T0 + 100)
    enroll(store, maker, "Never")
    assert store.expired(T0) == ()
    assert [i.id for i in store.expired(T0 + 10)] == [soon]
    assert [i.id for i in store.expired(T0 + 1000)] == [soon, later]
    clock.now = T0 + 50
    assert [i.id for i in store.expired()] == [soon]


def test_purge_refuses_to_delete_more_than_max_share(store: GalleryStore, db: Path,
                                                     maker: FaceMaker) -> None:
    expiring = [enroll(store, maker, f"Temp {i}", expires_at=T0 + i) for i in range(3)]
    keep, _ = enroll(store, maker, "Permanent")
    revision = store.metadata().revision

    with pytest.raises(GalleryError, match=r"refusing to purge 3 of 4 identities \(75%\).*"
                                           r"limit is 50%.*Check the clock"):
        store.delete_expired(T0 + 1e9, max_share=0.5)
    assert store.counts() == (4, 12)
    assert store.metadata().revision == revision

    report = store.delete_expired(T0 + 1.5, max_share=0.5)  # two of four: at the limit
    assert set(report.identity_ids) == {expiring[0][0], expiring[1][0]}
    assert report.faces == 6 and report.erased
    files = raw_files(db)
    for _, faces in expiring[:2]:
        assert all(where(files, blob(f)) == [] for f in faces)
    assert store.delete_expired(T0 + 1.5, max_share=0.5).identity_ids == ()
    assert store.delete_expired(T0 + 2, max_share=1.0).identity_ids == (expiring[2][0],)
    assert [i.id for i in store.list_identities()] == [keep]
    with pytest.raises(GalleryError, match="between 0 and 1"):
        store.delete_expired(T0, max_share=1.5)


# ------------------------------------------------------------------ export / import


def test_export_import_round_trip(store: GalleryStore, tmp_path: Path, maker: FaceMaker,
                                  clock: Clock) -> None:
    enroll(store, maker, "Ada", external_ref="A-1", legal_basis="consent", expires_at=T0 + 9)
    enroll(store, maker, "Grace", n=5, notes="tab\there")
    out = tmp_path / "export.jsonl"
    report = store.export(out)
    assert (report.identities, report.faces) == (2, 8)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600

    with GalleryStore(tmp_path / "copy.db", model_id=MODEL, dim=DIM, create=True) as copy:
        got = copy.import_(out)
        assert (got.identities, got.faces, got.content_sha256) == (2, 8, report.content_sha256)
        assert copy.list_identities() == store.list_identities()
        def rows(m: GalleryMatrix) -> list[tuple[str, bytes]]:  # face ids are local
            return sorted(zip(m.identity_ids, (r.tobytes() for r in m.matrix), strict=True))

        assert rows(store.load_matrix()) == rows(copy.load_matrix())
        for ident in store.list_identities():
            assert [(f.image_sha256, f.quality, f.created_at) for f in store.faces(ident.id)] == [
                (f.image_sha256, f.quality, f.created_at) for f in copy.faces(ident.id)]
        again = copy.export(tmp_path / "again.jsonl")
        assert again.content_sha256 == report.content_sha256  # byte-exact content


def test_export_refuses_to_overwrite(store: GalleryStore, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    out.write_text("keep me")
    with pytest.raises(GalleryError, match="already exists"):
        store.export(out)
    assert out.read_text() == "keep me"
    store.export(out, overwrite=True)
    assert out.read_text().startswith('{"content_sha256"')


def test_import_refuses_another_model_or_dimension(store: GalleryStore, tmp_path: Path,
                                                   maker: FaceMaker) -> None:
    enroll(store, maker, "Ada")
    out = tmp_path / "export.jsonl"
    store.export(out)
    with GalleryStore(tmp_path / "other.db", model_id="other-model", dim=DIM,
                      create=True) as other:
        with pytest.raises(GalleryError, match=r"model 'test-embedder-v1'.*cannot be mixed"):
            other.import_(out)
        assert other.counts() == (0, 0)
    with (GalleryStore(tmp_path / "wide.db", model_id=MODEL, dim=512, create=True) as wide,
          pytest.raises(GalleryError, match="dim 128")):
        wide.import_(out)


def test_import_refuses_an_edited_file(store: GalleryStore, tmp_path: Path,
                                       maker: FaceMaker) -> None:
    enroll(store, maker, "Ada")
    out = tmp_path / "export.jsonl"
    store.export(out)
    data = out.read_bytes()
    out.write_bytes(data.replace(b'"label":"Ada"', b'"label":"Eve"'))
    with GalleryStore(tmp_path / "copy.db", model_id=MODEL, dim=DIM, create=True) as copy:
        with pytest.raises(GalleryError, match="damaged, truncated or was edited"):
            copy.import_(out)
        out.write_bytes(data[:-40])
        with pytest.raises(GalleryError, match="damaged, truncated"):
            copy.import_(out)


def test_import_is_all_or_nothing(store: GalleryStore, db: Path, tmp_path: Path,
                                  maker: FaceMaker) -> None:
    existing, _ = enroll(store, maker, "Already Here")
    store.checkpoint()
    before = sha256_file(db)

    def record(ident_id: str, embedding: bytes) -> dict[str, object]:
        return {"id": ident_id, "label": ident_id, "created_at": T0, "expires_at": None,
                "faces": [{"quality": 0.9, "image_sha256": "ab" * 32, "created_at": T0,
                           "embedding": base64.b64encode(embedding).decode()}]}

    good = blob(maker.face())
    cases = {
        "bad-embedding": [record("new-1", good), record("new-2", b"\x00" * (DIM * 4 - 4))],
        "nan-embedding": [record("new-1", good),
                          record("new-2", np.full(DIM, np.nan, "<f4").tobytes())],
        "conflict": [record("new-1", good), record(existing, good)],
    }
    for name, records in cases.items():
        path = tmp_path / f"{name}.jsonl"
        with path.open("w+b") as fh:
            write_export(fh, {"model_id": MODEL, "dim": DIM, "identities": len(records),
                              "faces": len(records)}, records)
        with pytest.raises(GalleryError):
            store.import_(path)
        assert store.counts() == (1, 3), name
    store.checkpoint()
    assert sha256_file(db) == before


# ------------------------------------------------------------------------ integrity


def _built(tmp_path: Path, maker: FaceMaker) -> Path:
    path = tmp_path / "candidate.db"
    with GalleryStore(path, model_id=MODEL, dim=DIM, create=True) as store:
        for i in range(6):
            enroll(store, maker, f"Person {i}", n=4)
        store.bump_version(to=7)
    return path


def test_integrity_check_passes_a_good_file(tmp_path: Path, maker: FaceMaker) -> None:
    path = _built(tmp_path, maker)
    report = integrity_check(path, expect_model_id=MODEL, expect_dim=DIM)
    assert report.ok, report.problems
    assert (report.schema_version, report.version, report.model_id, report.dim,
            report.identities, report.faces) == (SCHEMA_VERSION, 7, MODEL, DIM, 6, 24)
    report.raise_for_problems()


def test_integrity_check_reports_a_different_model_or_dim(tmp_path: Path,
                                                          maker: FaceMaker) -> None:
    path = _built(tmp_path, maker)
    report = integrity_check(path, expect_model_id="other", expect_dim=512)
    assert report.problems == ("model 'test-embedder-v1', expected 'other'",
                               "dimension 128, expected 512")
    with pytest.raises(GalleryError, match="failed its integrity check"):
        report.raise_for_problems()


def test_integrity_check_catches_blobs_of_the_wrong_length(tmp_path: Path,
                                                           maker: FaceMaker) -> None:
    path = _built(tmp_path, maker)
    conn = raw(path)
    conn.execute("UPDATE metadata SET dim = 64")  # the file now lies about its dimension
    conn.close()
    report = integrity_check(path)
    assert not report.ok
    assert report.problems == ("24 faces have embeddings that are not 256 bytes (64 float32)",)
    with pytest.raises(GalleryError, match="64-dimensional"):
        GalleryStore(path, model_id=MODEL, dim=DIM)


def test_integrity_check_catches_garbage_embeddings_and_orphans(tmp_path: Path,
                                                                maker: FaceMaker) -> None:
    path = _built(tmp_path, maker)
    conn = raw(path)
    conn.execute("UPDATE faces SET embedding = ? WHERE id = 1",
                 (np.full(DIM, 3.0, "<f4").tobytes(),))
    conn.execute("INSERT INTO faces (identity_id, embedding, model_id, quality, image_sha256, "
                 "created_at) VALUES ('ghost', ?, ?, 1, ?, 0)", (blob(maker.face()), MODEL,
                                                                 "cd" * 32))
    conn.close()
    problems = integrity_check(path).problems
    assert "1 faces belong to no identity" in problems
    assert "1 embeddings are not finite unit vectors" in problems


def test_integrity_check_catches_a_truncated_file(tmp_path: Path, maker: FaceMaker) -> None:
    path = _built(tmp_path, maker)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = integrity_check(path)
    assert not report.ok
    assert report.identities is None


def test_integrity_check_catches_a_corrupted_page(tmp_path: Path, maker: FaceMaker) -> None:
    path = _built(tmp_path, maker)
    conn = raw(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'faces'").fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    offset = (root - 1) * page_size
    data[offset: offset + 64] = b"\xa5" * 64  # smash the faces table's b-tree page header
    path.write_bytes(bytes(data))
    report = integrity_check(path)
    assert not report.ok
    assert any("malformed" in p or "integrity_check" in p for p in report.problems), report


def test_integrity_check_on_a_missing_or_foreign_file(tmp_path: Path) -> None:
    assert integrity_check(tmp_path / "nope.db").problems == (
        f"no gallery file at {tmp_path / 'nope.db'}",)
    assert not (tmp_path / "nope.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 512)
    assert not integrity_check(junk).ok
    empty_sqlite = tmp_path / "plain.db"
    sqlite3.connect(empty_sqlite).execute("CREATE TABLE t (x)").connection.close()
    assert integrity_check(empty_sqlite).problems == (
        f"schema version 0, this firmware expects {SCHEMA_VERSION}",)


# ---------------------------------------------------------------------- concurrency


def test_readers_never_see_half_an_identity_while_enrollments_commit(db: Path) -> None:
    faces_each, identities = 6, 40
    maker = FaceMaker(seed=99)
    batches = [(f"Person {i}", maker.faces(faces_each)) for i in range(identities)]
    # seen[k] is set once the reader has observed k identities: the writer commits
    # identity k+1 only after that, so the reader sees every size and keeps reading
    # while each next enrollment's transaction is open.
    seen = [threading.Event() for _ in range(identities + 1)]
    writer_done = threading.Event()
    problems: list[str] = []
    seen_sizes: set[int] = set()
    reads = 0

    with GalleryStore(db, model_id=MODEL, dim=DIM, create=True) as store:

        def reader() -> None:
            nonlocal reads
            try:
                while True:
                    last = writer_done.is_set()
                    m = store.load_matrix()
                    bad = {k: v for k, v in Counter(m.identity_ids).items() if v != faces_each}
                    if bad:
                        problems.append(f"matrix saw partial identities {bad}")
                    listed = store.list_identities()
                    if any(i.face_count != faces_each for i in listed):
                        problems.append("list_identities saw a partial identity")
                    n = len(m.identity_ids) // faces_each
                    seen_sizes.add(n)
                    reads += 1
                    for event in seen[: n + 1]:
                        event.set()
                    if last:
                        return
            except Exception as exc:  # reported by the main thread
                problems.append(repr(exc))
                for event in seen:
                    event.set()

        def writer() -> None:
            try:
                for k, (label, faces) in enumerate(batches):
                    assert seen[k].wait(timeout=60), f"reader never saw {k} identities"
                    store.add_identity_with_faces(NewIdentity(label=label), faces)
            except BaseException as exc:
                problems.append(repr(exc))
            finally:
                writer_done.set()

        threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)

        assert problems == []
        assert seen_sizes == set(range(identities + 1))
        assert reads > identities
        assert store.counts() == (identities, identities * faces_each)


def test_reads_answer_while_another_writer_holds_an_open_transaction(
        db: Path, maker: FaceMaker) -> None:
    with GalleryStore(db, model_id=MODEL, dim=DIM, create=True, busy_timeout_s=0.2) as store:
        enroll(store, maker, "Ada")
        other = raw(db)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO identities (id, label, created_at) VALUES ('half', 'Half', 0)")
        other.execute("INSERT INTO faces (identity_id, embedding, model_id, quality, "
                      "image_sha256, created_at) VALUES ('half', ?, ?, 1, ?, 0)",
                      (blob(maker.face()), MODEL, "ef" * 32))
        try:
            assert [i.label for i in store.list_identities()] == ["Ada"]
            assert store.load_matrix().matrix.shape == (3, DIM)
            with pytest.raises(EnrollmentError, match="locked by another writer"):
                enroll(store, maker, "Blocked")
        finally:
            other.execute("ROLLBACK")
            other.close()
        enroll(store, maker, "Unblocked")
        assert store.counts() == (2, 6)

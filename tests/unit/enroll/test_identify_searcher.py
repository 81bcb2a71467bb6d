"""GallerySearcher on a real gallery file with made-up faces: decisions, FMRs, and a
reader that keeps searching while enrollments commit (never half an identity)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from device.enroll.identify import GallerySearcher
from device.gallery.records import NewIdentity
from device.gallery.store import GalleryStore
from device.lab.calibration import build_table
from device.service.thresholds import (
    CalibrationTable,
    Threshold,
    ThresholdPolicy,
    resolve_threshold,
)
from tests.support.gallery import DIM, MODEL, FaceMaker

FACES_PER_IDENTITY = 4
IDENTITIES = 25


@pytest.fixture(scope="module")
def table() -> CalibrationTable:
    rng = np.random.default_rng(0)
    # Cosines of random 128-d unit vectors: about N(0, 1/sqrt(128)).
    return build_table(rng.normal(0.0, DIM ** -0.5, 400_000),
                       model_id=MODEL, source="synthetic")


def _threshold(table: CalibrationTable) -> Threshold:
    return resolve_threshold(MODEL, ThresholdPolicy(1e-4), table=table)


@pytest.fixture()
def store(tmp_path: Path) -> GalleryStore:
    with GalleryStore(tmp_path / "gallery.db", model_id=MODEL, dim=DIM, create=True) as s:
        yield s  # type: ignore[misc]


def test_decisions_and_fmr(store: GalleryStore, table: CalibrationTable,
                           caplog: pytest.LogCaptureFixture) -> None:
    maker = FaceMaker(11)
    faces = maker.faces(3)
    ada = store.add_identity_with_faces(NewIdentity(label="Ada"), faces)
    store.add_identity_with_faces(NewIdentity(label="Bob"), maker.faces(3))
    threshold = _threshold(table)
    with caplog.at_level(logging.INFO, logger="device.service.thresholds"), \
            GallerySearcher(store, threshold) as searcher:
        assert "2 identities, 6 faces" in caplog.records[-1].getMessage()
        probe = faces[0].embedding.vector + 0.02 * maker.vector()
        result = searcher.search(probe, k=2)
        assert result.decision == "match" and result.match is not None
        assert result.match.identity_id == ada.id and result.match.label == "Ada"
        assert result.match.fmr_upper_bound
        assert result.match.fmr_at_similarity == table.resolution
        second = result.candidates[1]
        assert second.label == "Bob" and not second.fmr_upper_bound
        assert second.fmr_at_similarity == pytest.approx(table.fmr_at(second.similarity))
        stranger = searcher.search(maker.vector(), k=2)
        assert stranger.decision == "unknown" and stranger.match is None
        assert all(c.similarity < threshold.value for c in stranger.candidates)


def test_model_mismatch_is_refused(store: GalleryStore) -> None:
    other = build_table([0.1, 0.2], model_id="other")
    threshold = resolve_threshold("other", ThresholdPolicy(1.0, allow_unsafe=True), table=other)
    with pytest.raises(Exception, match="other"):
        GallerySearcher(store, threshold)


def test_readers_never_see_half_an_identity(store: GalleryStore,
                                            table: CalibrationTable) -> None:
    maker = FaceMaker(12)
    batches = [maker.faces(FACES_PER_IDENTITY) for _ in range(IDENTITIES)]
    threshold = _threshold(table)
    searcher = GallerySearcher(store, threshold)
    done = threading.Event()
    observed: list[int] = []  # revisions seen by the reader
    seen_revision = threading.Condition()
    errors: list[BaseException] = []

    def reader() -> None:
        rng = np.random.default_rng(5)
        try:
            while not done.is_set():
                loaded = searcher.current()
                snap = loaded.index.snapshot()
                live = np.ones(snap.rows, dtype=bool)
                live[snap.dead] = False
                counts = Counter(snap.identity_codes[live].tolist())
                assert all(c == FACES_PER_IDENTITY for c in counts.values()), counts
                assert len(counts) == loaded.identities
                # Search for a face of a visible identity: it must come back whole.
                if snap.live:
                    k = int(rng.integers(len(batches)))
                    result = searcher.search(batches[k][0].embedding.vector, k=3)
                    assert result.candidates
                matrix = store.load_matrix()  # a reader of the file during commits
                per_identity = Counter(matrix.identity_ids)
                assert all(c == FACES_PER_IDENTITY for c in per_identity.values())
                with seen_revision:
                    observed.append(loaded.revision)
                    seen_revision.notify_all()
        except BaseException as exc:
            errors.append(exc)
            with seen_revision:
                seen_revision.notify_all()

    thread = threading.Thread(target=reader, name="reader")
    thread.start()
    try:
        for faces in batches:
            store.add_identity_with_faces(NewIdentity(label="x"), faces)
            assert searcher.refresh()
            revision = searcher.current().revision
            with seen_revision:  # let the reader look at every state (no sleeps)
                seen_revision.wait_for(lambda r=revision: bool(errors) or (
                    bool(observed) and observed[-1] >= r))
            if errors:
                break
    finally:
        done.set()
        thread.join()
        searcher.close()
    assert not errors, errors[0]
    assert searcher.current().identities == IDENTITIES
    assert len(set(observed)) >= IDENTITIES  # the reader saw every published state
    assert observed == sorted(observed)


def test_refresh_is_a_no_op_without_commits(store: GalleryStore,
                                            table: CalibrationTable) -> None:
    threshold = resolve_threshold(MODEL, ThresholdPolicy(1e-3), table=table)
    with GallerySearcher(store, threshold) as searcher:
        assert not searcher.refresh()
        empty = searcher.search(FaceMaker(1).vector())
        assert empty.candidates == () and empty.decision == "unknown"
        store.add_identity_with_faces(NewIdentity(label="Ada"), FaceMaker(2).faces(1))
        assert searcher.refresh() and searcher.current().faces == 1

"""The pipeline keeps matching during an update; the first decision after the switch
carries the new gallery version; a gallery the index cannot load is switched back."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from device.events.schema import MatchEvent, NormalisedBox
from device.gallery.live import LiveGallery
from device.gallery.search.index import Hit
from device.gallery.store import GalleryStore
from device.sync.apply import GallerySync, SyncPolicy
from tests.support.gallery import DIM, MODEL
from tests.support.sync import NOW, UNIT, World


def first_face(db: Path, label: str) -> tuple[str, np.ndarray]:
    """The id of the identity labelled ``label`` and its first face's embedding."""
    with GalleryStore(db) as store:
        ident = store.find_by_label(label)[0]
        return ident.id, np.asarray(store.faces(ident.id)[0].embedding)


def _match(hits: tuple[Hit, ...]) -> str | None:
    return hits[0].identity_id if hits and hits[0].similarity > 0.99 else None


def test_matching_continues_across_a_switch(tmp_path: Path) -> None:
    world = World(tmp_path, people=30)
    v1 = world.bundle(1)
    assert world.sync().apply_dir(v1.directory).outcome == "ok"
    with GalleryStore(world.central) as store:
        removed_id = sorted(i.id for i in store.list_identities())[0]
        removed_q = np.asarray(store.faces(removed_id)[0].embedding)
    world.edit()  # removes the identity with the smallest id, enrolls "New 1"
    new_id, new_q = first_face(world.central, "New 1")
    v2 = world.bundle(2)

    live = LiveGallery.open(world.unit_db, model_id=MODEL, dim=DIM)
    results: list[tuple[int, str | None, str | None]] = []
    errors: list[BaseException] = []
    cond = threading.Condition()
    stop = threading.Event()

    def reader() -> None:  # the pipeline's decision loop
        while not stop.is_set():
            try:
                gallery = live.current()  # one read: search and event use one version
                best = [_match(gallery.index.search_identities(q, k=1))
                        for q in (new_q, removed_q)]
            except BaseException as exc:  # any error fails the test below
                errors.append(exc)
                return
            with cond:
                results.append((gallery.version, best[0], best[1]))
                cond.notify_all()

    def more(n: int) -> None:
        with cond:
            target = len(results) + n
            assert cond.wait_for(lambda: len(results) >= target or bool(errors), 30)

    def checkpoint(name: str) -> None:
        if name in ("build.import", "switch.rename", "reload", "state.rename"):
            more(3)  # decisions keep being made at each stage of the update

    sync = GallerySync(world.unit_db, world.trusted(), SyncPolicy(unit_id=UNIT, model_id=MODEL,
                                                                  dim=DIM),
                       clock=lambda: NOW, checkpoint=checkpoint, on_switched=live.on_switched)
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        more(3)
        result = sync.apply_dir(v2.directory)
        after = live.current()  # the next decision after the apply returns
        event = MatchEvent(unit=UNIT, camera="front", track_id=1, identity_id=new_id,
                           label="New 1", similarity=0.9, false_match_rate=1e-4,
                           gallery_version=after.version, model_id=after.model_id,
                           first_seen=NOW, decided_at=NOW + 1, faces_considered=3,
                           box=NormalisedBox(0.1, 0.1, 0.2, 0.2))
        more(3)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    assert result.outcome == "ok", result
    assert event.to_payload()["gallery_version"] == 2
    versions = [v for v, _, _ in results]
    assert set(versions) == {1, 2}
    assert versions == sorted(versions), "a decision went back to the old gallery"
    # Every answer is consistent with the version it reports: the new person is
    # found only in version 2, the removed one only in version 1.
    assert all((new, old) == (None, removed_id) for v, new, old in results if v == 1)
    assert all((new, old) == (new_id, None) for v, new, old in results if v == 2)
    assert removed_id not in after.labels and after.labels[new_id] == "New 1"
    live.close()


def test_index_that_cannot_load_the_new_gallery_switches_back(tmp_path: Path) -> None:
    world = World(tmp_path)
    v1 = world.bundle(1)
    assert world.sync().apply_dir(v1.directory).outcome == "ok"
    world.edit()
    v2 = world.bundle(2)
    before = world.snapshot()
    live = LiveGallery.open(world.unit_db)

    def failing_reload(path: Path, version: int) -> None:
        raise MemoryError("no room for a second index")

    sync = world.sync()
    sync.on_switched = failing_reload
    result = sync.apply_dir(v2.directory)
    assert (result.outcome, result.reason, result.version) == ("error", "reload", 1)
    assert "switched back" in str(result.message)
    assert world.snapshot() == before
    assert live.current().version == 1
    assert sorted(p.name for p in world.layout.versions.iterdir()) == ["v1"]
    # With a working index the same bundle applies.
    sync.on_switched = live.on_switched
    assert sync.apply_dir(v2.directory).outcome == "ok"
    assert live.current().version == 2
    live.close()


def test_refresh_picks_up_a_switch_made_by_another_process(tmp_path: Path) -> None:
    world = World(tmp_path)
    assert world.sync().apply_dir(world.bundle(1).directory).outcome == "ok"
    live = LiveGallery.open(world.unit_db)
    assert not live.refresh(world.unit_db)
    world.edit()
    assert world.sync().apply_dir(world.bundle(2).directory).outcome == "ok"  # "the CLI"
    assert live.current().version == 1
    assert live.refresh(world.unit_db)
    assert live.current().version == 2 and not live.refresh(world.unit_db)
    live.close()

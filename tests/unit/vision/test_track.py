"""Tracker on synthetic trajectories: ids, confirmation, ageing, best faces, bounds."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from device.config import validate_mapping
from device.errors import ConfigError
from device.types import Detection
from device.vision.track import Tracker, TrackerConfig, TrackEvent, TrackUpdate, iou

FPS = 10.0


def det(cx: float, cy: float, size: float = 60.0, score: float = 0.9,
        nose: float = 0.0) -> Detection:
    """A face centred at ``(cx, cy)``; ``nose`` shifts the nose tip sideways (a turn)."""
    s = size
    kps = (
        (cx - 0.2 * s, cy - 0.1 * s), (cx + 0.2 * s, cy - 0.1 * s),
        (cx + nose * s, cy + 0.05 * s), (cx, cy + 0.25 * s),
        (cx - 0.45 * s, cy), (cx + 0.45 * s, cy),
    )
    return Detection((cx - s / 2, cy - s / 2, s, s), score, kps)


def run(tracker: Tracker[str], frames: Sequence[Sequence[Detection]],
        start: int = 0) -> tuple[list[dict[int, int]], list[TrackUpdate[str]]]:
    """Feed frames; per frame, map detection index → reported track id."""
    ids: list[dict[int, int]] = []
    updates: list[TrackUpdate[str]] = []
    for n, dets in enumerate(frames, start=start):
        got = tracker.update(n / FPS, dets)
        updates.extend(got)
        seen = {}
        for u in got:
            for i, d in enumerate(dets):
                if u.detection is d:
                    seen[i] = u.track_id
        ids.append(seen)
    return ids, updates


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0
    assert iou((0, 0, 0, 10), (0, 0, 0, 10)) == 0.0


def test_a_face_is_confirmed_after_min_hits_then_updated() -> None:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=3))
    ids, updates = run(tracker, [[det(100 + 4 * n, 100)] for n in range(6)])
    assert ids == [{}, {}, {0: 1}, {0: 1}, {0: 1}, {0: 1}]
    assert [u.kind for u in updates] == [TrackEvent.NEW] + [TrackEvent.UPDATED] * 3
    new = updates[0]
    assert new.camera_id == "cam" and new.first_seen == 0.0 and new.last_seen == 0.2
    assert new.frames_seen == 3 and len(new.best) == 3  # faces from the tentative frames
    assert updates[-1].frames_seen == 6 and updates[-1].last_seen == 0.5
    assert tracker.active_track_ids == (1,)


def test_min_hits_one_reports_at_once() -> None:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=1))
    updates = tracker.update(0.0, [det(100, 100)])
    assert [(u.kind, u.track_id) for u in updates] == [(TrackEvent.NEW, 1)]


def test_flicker_never_gets_an_id_and_ids_have_no_gaps() -> None:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=3))
    # A false detection seen in two frames, missed, seen again: never three in a row.
    flicker = [[det(300, 300)], [det(300, 300)], [], [det(300, 300)], [det(300, 300)], []]
    _, updates = run(tracker, flicker)
    assert updates == [] and tracker.active_track_ids == ()
    ids, _ = run(tracker, [[det(100, 100)]] * 3, start=6)
    assert ids[-1] == {0: 1}


def face_gone_for(missing: int, max_age: int = 5) -> tuple[list[dict[int, int]],
                                                           list[TrackUpdate[str]]]:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=2, max_age=max_age))
    frames: list[list[Detection]] = [[det(100 + 2 * n, 100)] for n in range(5)]
    frames += [[] for _ in range(missing)]
    frames += [[det(110 + 2 * n, 100)] for n in range(4)]
    return run(tracker, frames)


def test_face_missing_up_to_max_age_keeps_its_id() -> None:
    ids, updates = face_gone_for(missing=5, max_age=5)
    assert ids[-1] == {0: 1}
    assert all(u.track_id == 1 for u in updates)
    assert TrackEvent.ENDED not in [u.kind for u in updates]
    # Seen again: the gap does not reset first_seen; frames_seen counts detections only.
    assert updates[-1].first_seen == 0.0 and updates[-1].frames_seen == 9


def test_face_missing_longer_than_max_age_ends_and_returns_as_new() -> None:
    ids, updates = face_gone_for(missing=6, max_age=5)
    ended = [u for u in updates if u.kind is TrackEvent.ENDED]
    assert len(ended) == 1
    end = ended[0]
    assert end.track_id == 1 and end.detection is None and not end.face_kept
    assert end.last_seen == pytest.approx(0.4)  # the last frame it was detected in
    assert end.timestamp == pytest.approx(1.0)  # the sixth empty frame
    assert end.frames_seen == 5
    assert ids[-1] == {0: 2}  # the same person comes back as a new track


def crossing(occlude: int = 0) -> list[list[Detection]]:
    """A walks right, B walks left, a little lower; optionally A hides B at the middle."""
    frames = []
    for n in range(40):
        a = det(100 + 8 * n, 200, nose=0.05)
        b = det(420 - 8 * n, 206, nose=-0.05)
        hidden = occlude and abs((100 + 8 * n) - (420 - 8 * n)) < 8 * occlude
        frames.append([a] if hidden else [a, b])
    return frames


def test_two_faces_crossing_keep_their_ids() -> None:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=2))
    ids, updates = run(tracker, crossing())
    assert all(frame == {0: 1, 1: 2} for frame in ids[1:])
    assert TrackEvent.ENDED not in [u.kind for u in updates]


def test_two_faces_crossing_with_occlusion_keep_their_ids() -> None:
    frames = crossing(occlude=3)
    hidden = [n for n, f in enumerate(frames) if len(f) == 1]
    assert len(hidden) >= 2
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=2, max_age=5))
    ids, _ = run(tracker, frames)
    assert all(ids[n] == {0: 1} for n in hidden)
    assert ids[hidden[-1] + 1] == {0: 1, 1: 2}
    assert ids[-1] == {0: 1, 1: 2}


def test_equal_overlap_goes_to_the_nearer_keypoints() -> None:
    """Two detections in one box overlap both tracks equally: the keypoints decide."""
    for flip in (False, True):
        tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=1))
        for n in range(2):  # id 1 looks left, id 2 (60 px to the right) looks right
            tracker.update(n / FPS, [det(200, 200, nose=-0.15), det(260, 200, nose=0.15)])
        a, b = det(230, 200, nose=-0.15), det(230, 200, nose=0.15)
        assert iou(a.box, (170, 170, 60, 60)) == iou(a.box, (230, 170, 60, 60))
        got = {u.track_id: u.detection for u in tracker.update(0.2, [b, a] if flip else [a, b])}
        assert got[1] is a and got[2] is b


def test_a_face_that_changes_size_abruptly_is_someone_else() -> None:
    """A scene cut puts a smaller face where the last one was: IoU alone would join them."""
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=1, max_age=3))
    # The boxes of the real cut in tests/integration/test_track_real.py.
    before, after = det(309.5, 97.5, size=97), det(340.5, 87.5, size=65)
    assert iou(before.box, after.box) == pytest.approx(0.31, abs=0.005)
    tracker.update(0.0, [before])
    got = tracker.update(0.1, [after])
    assert [(u.kind, u.track_id) for u in got] == [(TrackEvent.NEW, 2)]
    assert tracker.active_track_ids == (1, 2)
    # Growing by less than max_scale_change (1.4) per frame is still the same face.
    got = tracker.update(0.2, [before, det(340.5, 87.5, size=85)])
    assert [(u.kind, u.track_id) for u in got] == [(TrackEvent.UPDATED, 1),
                                                   (TrackEvent.UPDATED, 2)]


def test_a_new_face_appearing_gets_the_next_id() -> None:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=2))
    frames = [[det(100, 100)] for _ in range(4)]
    frames += [[det(100, 100), det(400, 300)] for _ in range(4)]
    frames += [[det(100, 100), det(400, 300), det(250, 400)] for _ in range(3)]
    ids, updates = run(tracker, frames)
    assert ids[-1] == {0: 1, 1: 2, 2: 3}
    new = [u.track_id for u in updates if u.kind is TrackEvent.NEW]
    assert new == [1, 2, 3]


def test_cameras_count_ids_independently() -> None:
    a: Tracker[str] = Tracker("a", TrackerConfig(min_hits=1))
    b: Tracker[str] = Tracker("b", TrackerConfig(min_hits=1))
    a.update(0.0, [det(100, 100), det(300, 100)])
    (u,) = b.update(0.0, [det(100, 100)])
    assert (u.camera_id, u.track_id) == ("b", 1)


def test_a_rebuilt_tracker_continues_the_ids() -> None:
    old: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=1))
    old.update(0.0, [det(100, 100), det(300, 100)])
    assert old.next_id == 3
    new: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=1), first_id=old.next_id)
    (u,) = new.update(1.0, [det(100, 100)])
    assert u.track_id == 3
    with pytest.raises(ValueError, match="start at 1"):
        Tracker("cam", first_id=0)


def test_ids_increase_monotonically_over_many_tracks() -> None:
    rng = random.Random(7)
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=2, max_age=2))
    seen: list[int] = []
    for n in range(300):
        # Faces pop up at random places for a few frames each.
        dets = [det(rng.randrange(0, 2000, 100), rng.randrange(0, 1000, 100))
                for _ in range(rng.randrange(0, 4))]
        for u in tracker.update(n / FPS, dets):
            if u.kind is TrackEvent.NEW:
                seen.append(u.track_id)
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert seen == list(range(1, len(seen) + 1))


def test_best_faces_are_bounded_and_ranked() -> None:
    rng = random.Random(3)
    k = 3
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=1, best_faces=k))
    qualities = [rng.random() for _ in range(50)]
    best_so_far: list[float] = []
    for n, q in enumerate(qualities):
        (u,) = tracker.update(n / FPS, [det(100 + n, 100)], [q], [f"chip{n}"])
        entered = len(best_so_far) < k or q > min(best_so_far)
        best_so_far = sorted([*best_so_far, q], reverse=True)[:k]
        assert u.face_kept is entered
        assert [f.quality for f in u.best] == best_so_far
        assert len(u.best) <= k
    top = sorted(range(50), key=lambda i: -qualities[i])[:k]
    assert [f.payload for f in u.best] == [f"chip{i}" for i in top]
    assert [f.frame for f in u.best] == top


def test_faces_that_fail_the_gate_move_the_track_but_are_not_kept() -> None:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=1))
    (first,) = tracker.update(0.0, [det(100, 100)], [None])
    assert first.kind is TrackEvent.NEW and first.best == () and not first.face_kept
    (second,) = tracker.update(0.1, [det(104, 100)], [0.7])
    assert second.track_id == 1 and second.face_kept and len(second.best) == 1


def test_default_quality_is_the_detector_score() -> None:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=1))
    tracker.update(0.0, [det(100, 100, score=0.6)])
    (u,) = tracker.update(0.1, [det(102, 100, score=0.8)])
    assert [f.quality for f in u.best] == [0.8, 0.6]
    assert u.best[0].payload is None and u.best[0].timestamp == 0.1


def test_max_tracks_bounds_what_is_followed() -> None:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=1, max_tracks=2))
    got = tracker.update(0.0, [det(100, 100), det(300, 100), det(500, 100)])
    assert len(got) == 2 and tracker.dropped_detections == 1
    got = tracker.update(0.1, [det(100, 100), det(300, 100), det(500, 100)])
    assert {u.track_id for u in got} == {1, 2} and tracker.dropped_detections == 2


def test_ended_updates_come_first() -> None:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=1, max_age=0))
    tracker.update(0.0, [det(100, 100)])
    got = tracker.update(0.1, [det(500, 500)])
    assert [(u.kind, u.track_id) for u in got] == [(TrackEvent.ENDED, 1), (TrackEvent.NEW, 2)]


def test_flush_ends_confirmed_tracks_only() -> None:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=2))
    run(tracker, [[det(100, 100)], [det(100, 100), det(400, 400)]])
    ended = tracker.flush(5.0)
    assert [(u.kind, u.track_id, u.timestamp, u.last_seen) for u in ended] == [
        (TrackEvent.ENDED, 1, 5.0, 0.1)
    ]
    assert tracker.active_track_ids == () and tracker.flush(6.0) == []


def test_time_going_back_is_tolerated() -> None:
    tracker: Tracker[str] = Tracker("cam", TrackerConfig(min_hits=1))
    tracker.update(10.0, [det(100, 100)])
    (u,) = tracker.update(9.0, [det(101, 100)])
    assert u.track_id == 1 and tracker.frame == 1


def test_mismatched_lengths_are_refused() -> None:
    tracker: Tracker[str] = Tracker("cam")
    with pytest.raises(ValueError, match="quality"):
        tracker.update(0.0, [det(100, 100)], [0.5, 0.5])
    with pytest.raises(ValueError, match="payload"):
        tracker.update(0.0, [det(100, 100)], None, [])


def test_config_validation_and_descriptions() -> None:
    with pytest.raises(ConfigError, match="max_agee"):
        validate_mapping({"max_agee": 3}, TrackerConfig, "t")
    with pytest.raises(ConfigError, match="min_hits"):
        validate_mapping({"min_hits": 0}, TrackerConfig, "t")
    for name, info in TrackerConfig.model_fields.items():
        assert info.description, name

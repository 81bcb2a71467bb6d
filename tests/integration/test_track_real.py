"""The tracker on a real clip: BlazeFace detections of short_hamilton_clip.mp4.

The clip (10 s, 275 frames, three shots) cuts at frames 20, 82 and 211. A track must
never carry one person's id across a cut to whoever stands at the same place in the
next shot — before the scale gate, the speaker's track of the middle shot continued
on a listener's face after the cut at frame 211 (IoU 0.31, box side ×0.67).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.vision import quality as q
from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
from device.vision.track import Tracker, TrackerConfig, TrackEvent, TrackUpdate

pytestmark = pytest.mark.dataset

CUT_DIFFERENCE = 20.0  # mean absolute grey change of a 64×36 thumbnail


def frames(path: Path) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def test_tracks_follow_people_and_never_cross_a_cut(datasets: Path) -> None:
    clip = datasets / "media" / "video" / "short_hamilton_clip.mp4"
    tracker: Tracker[None] = Tracker("stage", TrackerConfig())
    cuts: list[int] = []
    updates: list[TrackUpdate[None]] = []
    previous = None
    n = 0
    with BlazeFaceDetector(BlazeFaceConfig(num_threads=1)) as detector:
        for n, image in enumerate(frames(clip)):
            thumb = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (64, 36),
                               interpolation=cv2.INTER_AREA).astype(np.float32)
            if previous is not None and float(np.abs(thumb - previous).mean()) > CUT_DIFFERENCE:
                cuts.append(n)
            previous = thumb
            dets = detector.detect(image)
            reports = [q.assess(image, d) for d in dets]
            updates += tracker.update(
                float(n), dets, [r.score if r.passed else None for r in reports]
            )
    updates += tracker.flush(float(n + 1))
    assert n == 274 and cuts == [20, 82, 211]

    ended = [u for u in updates if u.kind is TrackEvent.ENDED]
    new = [u.track_id for u in updates if u.kind is TrackEvent.NEW]
    assert sorted(u.track_id for u in ended) == new == list(range(1, len(new) + 1))
    for u in ended:
        spanned = [c for c in cuts if u.first_seen < c <= u.last_seen]
        assert not spanned, f"track {u.track_id} ({u.first_seen}-{u.last_seen}) crosses {spanned}"

    # The speaker of the middle shot is one track for (nearly) the whole shot, and its
    # best faces are good ones.
    speaker = max(ended, key=lambda u: u.frames_seen)
    assert speaker.first_seen < 90 and speaker.last_seen == 210
    assert speaker.frames_seen >= 120
    assert len(speaker.best) == 3 and min(f.quality for f in speaker.best) > 0.8

"""Face tracks of one camera: which detection in this frame is which person.

One :class:`Tracker` per camera follows faces across frames by box overlap (SORT
style, without a Kalman filter): each track predicts its box by its smoothed motion,
detections are matched to tracks greedily by descending IoU with the prediction —
IoUs equal to two decimals go to the smaller keypoint distance; a box that grew or
shrank by more than ``max_scale_change`` is not the same face — and a track that
finds no detection for more than ``max_age`` frames ends. A new track stays
*tentative* until it has been seen in ``min_hits`` consecutive frames (a tentative
track that misses a frame is dropped), and only then gets its id: ids are unique per
camera and increase monotonically, with no gaps for false detections.

Every track keeps its ``best_faces`` best faces by quality score — never more. A face
may carry a payload (an aligned chip, say) for the pipeline to embed later. The
tracker stores no embeddings: identity votes live in :mod:`device.service.decision`.

:meth:`Tracker.update` returns :class:`TrackUpdate` values: ``new`` when a track is
confirmed, ``updated`` for every later frame it is seen in, ``ended`` once when it is
lost (or when :meth:`Tracker.flush` ends every track at shutdown).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

import numpy as np
from pydantic import Field

from device.config import Section
from device.types import Detection

logger = logging.getLogger(__name__)

P = TypeVar("P")

#: Weight of the newest motion step in a track's smoothed velocity.
VELOCITY_SMOOTHING = 0.5


class TrackerConfig(Section):
    """How detections are joined into tracks."""

    iou_threshold: float = Field(
        0.3, gt=0, le=1,
        description="Smallest IoU between a track's predicted box and a detection for "
        "them to be the same face.",
    )
    max_scale_change: float = Field(
        1.4, ge=1.0, le=10.0,
        description="Largest ratio between the box sides of a track's last face and a "
        "detection it may take (either way): faces do not change size by half between "
        "frames, a scene cut or another person does.",
    )
    max_age: int = Field(
        10, ge=0, le=1000,
        description="Frames a confirmed track may go unseen before it ends "
        "(about one second at 10 fps).",
    )
    min_hits: int = Field(
        3, ge=1, le=100,
        description="Consecutive frames a new face must be seen in before its track "
        "is confirmed, gets an id and is reported.",
    )
    best_faces: int = Field(
        3, ge=1, le=32,
        description="Faces kept per track: the best by quality score.",
    )
    max_tracks: int = Field(
        32, ge=1, le=1024,
        description="Tracks (tentative and confirmed) followed at once; detections "
        "beyond it start no track.",
    )


class TrackEvent(StrEnum):
    """What happened to a track in one update."""

    NEW = "new"
    UPDATED = "updated"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class TrackFace(Generic[P]):
    """One face of a track, kept because it is among the track's best.

    Attributes:
        detection: The detection, frame pixels.
        quality: Its quality score (higher is better).
        timestamp: Capture time of its frame.
        frame: Index of its frame in this tracker (0 for the first update).
        payload: Whatever the caller attached to the detection, or ``None``.
    """

    detection: Detection
    quality: float
    timestamp: float
    frame: int
    payload: P | None = None


@dataclass(frozen=True, slots=True)
class TrackUpdate(Generic[P]):
    """A change to one confirmed track.

    Attributes:
        kind: ``new``, ``updated`` or ``ended``.
        camera_id: The tracker's camera.
        track_id: Unique within the camera, increasing.
        timestamp: Capture time of the frame this update belongs to.
        first_seen: Capture time of the track's first detection.
        last_seen: Capture time of its latest detection.
        frames_seen: Frames it was detected in.
        detection: This frame's detection (``None`` for ``ended``).
        face_kept: This frame's face entered the track's best faces (embed it).
        best: The track's best faces, best first. On ``new`` these may include faces
            from the frames before confirmation, which were never reported.
    """

    kind: TrackEvent
    camera_id: str
    track_id: int
    timestamp: float
    first_seen: float
    last_seen: float
    frames_seen: int
    detection: Detection | None
    face_kept: bool
    best: tuple[TrackFace[P], ...]


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (0 when either is empty)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = max(aw, 0.0) * max(ah, 0.0) + max(bw, 0.0) * max(bh, 0.0) - inter
    return inter / union if union > 0 else 0.0


class _Track(Generic[P]):
    """A track's mutable state (private to the tracker)."""

    __slots__ = (
        "best", "confirmed", "detection", "first_seen", "frames_seen", "last_frame",
        "last_seen", "misses", "track_id", "velocity",
    )

    def __init__(self, detection: Detection, timestamp: float, frame: int) -> None:
        self.track_id = 0
        self.confirmed = False
        self.detection = detection
        self.first_seen = timestamp
        self.last_seen = timestamp
        self.last_frame = frame
        self.frames_seen = 1
        self.misses = 0
        self.velocity = (0.0, 0.0)
        self.best: list[TrackFace[P]] = []

    def shift(self, frame: int) -> tuple[float, float]:
        steps = frame - self.last_frame
        return self.velocity[0] * steps, self.velocity[1] * steps

    def predicted_box(self, frame: int) -> tuple[float, float, float, float]:
        dx, dy = self.shift(frame)
        x, y, w, h = self.detection.box
        return (x + dx, y + dy, w, h)

    def keypoint_distance(self, detection: Detection, frame: int) -> float:
        """Mean distance to the predicted keypoints (centres without), in box sides."""
        dx, dy = self.shift(frame)
        mine, theirs = self.detection.keypoints, detection.keypoints
        if not mine or len(mine) != len(theirs):
            x, y, w, h = self.detection.box
            mine = ((x + w / 2, y + h / 2),)
            bx, by, bw, bh = detection.box
            theirs = ((bx + bw / 2, by + bh / 2),)
        a = np.asarray(mine, dtype=np.float64) + np.array([dx, dy])
        b = np.asarray(theirs, dtype=np.float64)
        side = math.sqrt(max(self.detection.area, 1e-9))
        return float(np.linalg.norm(a - b, axis=1).mean()) / side

    def hit(self, detection: Detection, timestamp: float, frame: int) -> None:
        steps = max(1, frame - self.last_frame)
        ox, oy, ow, oh = self.detection.box
        nx, ny, nw, nh = detection.box
        step = ((nx + nw / 2 - ox - ow / 2) / steps, (ny + nh / 2 - oy - oh / 2) / steps)
        if self.frames_seen == 1:
            self.velocity = step
        else:
            a = VELOCITY_SMOOTHING
            self.velocity = (
                a * step[0] + (1 - a) * self.velocity[0], a * step[1] + (1 - a) * self.velocity[1]
            )
        self.detection = detection
        self.last_seen = timestamp
        self.last_frame = frame
        self.frames_seen += 1
        self.misses = 0

    def keep(self, face: TrackFace[P], limit: int) -> bool:
        """Add ``face`` if it is among the ``limit`` best; True if it was kept."""
        if len(self.best) >= limit and face.quality <= self.best[-1].quality:
            return False
        index = len(self.best)
        while index > 0 and self.best[index - 1].quality < face.quality:
            index -= 1
        self.best.insert(index, face)
        del self.best[limit:]
        return True


class Tracker(Generic[P]):
    """Tracks faces of one camera; feed it every frame's detections in order.

    Args:
        camera_id: The camera, copied into every update.
        config: Association and bookkeeping settings.
        first_id: Id of the first confirmed track. A pipeline that rebuilds a camera's
            tracker (after a reconnect) passes the old one's :attr:`next_id`, so ids
            stay unique per camera for the decision module.

    Raises:
        ValueError: ``first_id`` is below 1.
    """

    def __init__(
        self, camera_id: str, config: TrackerConfig | None = None, first_id: int = 1
    ) -> None:
        if first_id < 1:
            raise ValueError(f"track ids start at 1 or above, not {first_id}")
        self.camera_id = camera_id
        self.config = config or TrackerConfig()
        self._tracks: list[_Track[P]] = []
        self._frame = -1
        self._next_id = first_id
        self._last_timestamp: float | None = None
        self.dropped_detections = 0
        """Detections that started no track because ``max_tracks`` were followed."""

    @property
    def frame(self) -> int:
        """Index of the latest frame (``-1`` before the first update)."""
        return self._frame

    @property
    def next_id(self) -> int:
        """The id the next confirmed track will get."""
        return self._next_id

    @property
    def active_track_ids(self) -> tuple[int, ...]:
        """Ids of the confirmed tracks not yet ended, ascending."""
        return tuple(sorted(t.track_id for t in self._tracks if t.confirmed))

    def update(
        self,
        timestamp: float,
        detections: Sequence[Detection],
        qualities: Sequence[float | None] | None = None,
        payloads: Sequence[P | None] | None = None,
    ) -> list[TrackUpdate[P]]:
        """Take one frame's detections; report what changed.

        Args:
            timestamp: The frame's capture time.
            detections: Every face found in the frame.
            qualities: One quality score per detection (e.g. ``QualityReport.score``),
                ``None`` for a face that failed the quality gate: it still moves its
                track but is never kept as a best face. Default: the detector score.
            payloads: One object per detection stored with a kept face.

        Returns:
            ``ended`` updates first, then ``new`` and ``updated`` ones, by track id.

        Raises:
            ValueError: ``qualities`` or ``payloads`` do not match ``detections`` in length.
        """
        n = len(detections)
        if qualities is not None and len(qualities) != n:
            raise ValueError(f"{len(qualities)} quality scores for {n} detections")
        if payloads is not None and len(payloads) != n:
            raise ValueError(f"{len(payloads)} payloads for {n} detections")
        if self._last_timestamp is not None and timestamp < self._last_timestamp:
            logger.warning(
                "camera %s: frame time went back from %.3f to %.3f",
                self.camera_id, self._last_timestamp, timestamp,
            )
        self._last_timestamp = timestamp
        self._frame += 1
        frame = self._frame

        matches = self._associate(detections, frame)
        matched_tracks = {id(track) for track, _ in matches}
        out: list[TrackUpdate[P]] = []
        ended: list[TrackUpdate[P]] = []
        survivors: list[_Track[P]] = []
        for track in self._tracks:
            if id(track) in matched_tracks:
                survivors.append(track)
                continue
            track.misses += 1
            if not track.confirmed:
                logger.debug("camera %s: tentative track dropped after a miss", self.camera_id)
            elif track.misses > self.config.max_age:
                ended.append(self._update(TrackEvent.ENDED, track, timestamp, None, False))
                logger.debug("camera %s: track %d ended", self.camera_id, track.track_id)
            else:
                survivors.append(track)
        self._tracks = survivors

        for track, index in matches:
            det = detections[index]
            track.hit(det, timestamp, frame)
            kept = self._offer(track, det, index, timestamp, frame, qualities, payloads)
            out.extend(self._after_hit(track, timestamp, det, kept))

        matched_dets = {index for _, index in matches}
        for index, det in enumerate(detections):
            if index in matched_dets:
                continue
            if len(self._tracks) >= self.config.max_tracks:
                self.dropped_detections += 1
                logger.debug("camera %s: %d tracks followed, detection dropped",
                             self.camera_id, len(self._tracks))
                continue
            fresh: _Track[P] = _Track(det, timestamp, frame)
            self._tracks.append(fresh)
            kept = self._offer(fresh, det, index, timestamp, frame, qualities, payloads)
            out.extend(self._after_hit(fresh, timestamp, det, kept))

        ended.sort(key=lambda u: u.track_id)
        out.sort(key=lambda u: u.track_id)
        return ended + out

    def flush(self, timestamp: float) -> list[TrackUpdate[P]]:
        """End every track (camera stopping): ``ended`` for each confirmed one.

        Args:
            timestamp: Time to stamp the updates with.
        """
        ended = [
            self._update(TrackEvent.ENDED, t, timestamp, None, False)
            for t in self._tracks if t.confirmed
        ]
        self._tracks = []
        return sorted(ended, key=lambda u: u.track_id)

    def _associate(
        self, detections: Sequence[Detection], frame: int
    ) -> list[tuple[_Track[P], int]]:
        """Greedy matching by descending IoU (two decimals), then keypoint distance.

        A pair qualifies when the IoU reaches ``iou_threshold`` and the box sides
        differ by at most ``max_scale_change``.
        """
        pairs: list[tuple[float, float, int, int]] = []
        limit = self.config.max_scale_change
        for ti, track in enumerate(self._tracks):
            predicted = track.predicted_box(frame)
            side = math.sqrt(track.detection.area)
            for di, det in enumerate(detections):
                overlap = iou(predicted, det.box)
                ratio = math.sqrt(det.area) / side if side > 0 else math.inf
                if overlap >= self.config.iou_threshold and 1 / limit <= ratio <= limit:
                    pairs.append(
                        (-round(overlap, 2), track.keypoint_distance(det, frame), ti, di)
                    )
        pairs.sort()
        used_tracks: set[int] = set()
        used_dets: set[int] = set()
        matches: list[tuple[_Track[P], int]] = []
        for _, _, ti, di in pairs:
            if ti in used_tracks or di in used_dets:
                continue
            used_tracks.add(ti)
            used_dets.add(di)
            matches.append((self._tracks[ti], di))
        return matches

    def _offer(
        self,
        track: _Track[P],
        det: Detection,
        index: int,
        timestamp: float,
        frame: int,
        qualities: Sequence[float | None] | None,
        payloads: Sequence[P | None] | None,
    ) -> bool:
        quality = det.score if qualities is None else qualities[index]
        if quality is None:
            return False
        payload = None if payloads is None else payloads[index]
        face = TrackFace(det, float(quality), timestamp, frame, payload)
        return track.keep(face, self.config.best_faces)

    def _after_hit(
        self, track: _Track[P], timestamp: float, det: Detection, kept: bool
    ) -> list[TrackUpdate[P]]:
        if track.confirmed:
            return [self._update(TrackEvent.UPDATED, track, timestamp, det, kept)]
        if track.frames_seen < self.config.min_hits:
            return []
        track.confirmed = True
        track.track_id = self._next_id
        self._next_id += 1
        logger.debug("camera %s: track %d confirmed", self.camera_id, track.track_id)
        return [self._update(TrackEvent.NEW, track, timestamp, det, kept)]

    def _update(
        self, kind: TrackEvent, track: _Track[P], timestamp: float,
        det: Detection | None, kept: bool,
    ) -> TrackUpdate[P]:
        return TrackUpdate(
            kind=kind,
            camera_id=self.camera_id,
            track_id=track.track_id,
            timestamp=timestamp,
            first_seen=track.first_seen,
            last_seen=track.last_seen,
            frames_seen=track.frames_seen,
            detection=det,
            face_kept=kept,
            best=tuple(track.best),
        )

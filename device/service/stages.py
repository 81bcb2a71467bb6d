"""One frame through the recognition stages, without threads or I/O.

:class:`FrameProcessor` takes a frame and runs, in order:

1. **detect** — the detector finds faces (boxes and keypoints);
2. **quality** — each face is measured by the quality gate; a face that passes is
   aligned into a chip for the embedder (a face that fails still moves its track
   but can never be embedded);
3. **track** — the camera's tracker joins faces into tracks and keeps each track's
   best faces (by quality score) with their chips;
4. **embed** — only faces that *entered a track's best faces* are embedded: all of a
   new track's best faces when it is confirmed, then each face whose quality beats
   the weakest of the track's last ``n`` votes by ``min_quality_gain``, until the
   track is decided (it matched) or has used its embedding budget;
5. **search** — each embedding is searched in the active gallery (taken once per
   frame, so a gallery swap never splits one answer across versions);
6. **decide** — the camera's :class:`~device.service.decision.Decider` votes (k of the last n).
   With ``[decision] template = "mean"`` steps 5-6 use the track's template instead: the
   quality-weighted mean of its best n embeddings (:mod:`device.service.template`),
   searched once the track has n and decided by one vote at the template's threshold.

It returns :class:`FrameResult`: the decisions (matches to publish, tracks that ended,
unknown-track counts) and the time each stage took. An embedding lives only inside
:meth:`FrameProcessor.process`: after the search it is dropped, whether it matched
or not; nothing here stores, logs or returns one.

The service (:mod:`device.service.pipeline`) and ``facegate bench pipeline`` both run
this class, so the benchmark measures the code that runs on a unit.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy.typing as npt

from device.events.schema import NormalisedBox
from device.gallery.search.index import Hit
from device.service.decision import Announce, Decider, DecisionConfig, TrackEnded, UnknownTrack
from device.service.stats import StageClock
from device.service.template import mean_template
from device.types import Detection, Embedding, FaceChip, FloatArray, Frame, Image
from device.vision.align import AlignTemplate, align
from device.vision.detect import Detector
from device.vision.embed import Embedder
from device.vision.quality import QualityConfig, assess
from device.vision.track import Tracker, TrackerConfig, TrackEvent, TrackFace, TrackUpdate

logger = logging.getLogger(__name__)

#: Stage names, in pipeline order (health and the benchmark report them so).
STAGES: tuple[str, ...] = ("detect", "quality", "track", "embed", "search", "decide")


class SearchIndex(Protocol):
    """The part of :class:`~device.gallery.search.index.GalleryIndex` the pipeline uses."""

    def search_identities(self, query: npt.ArrayLike, k: int = 1) -> tuple[Hit, ...]:
        """The ``k`` most similar identities to ``query``, best first."""
        ...


class ActiveGalleryView(Protocol):
    """One loaded gallery version (what a decision searches and reports)."""

    @property
    def version(self) -> int: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def index(self) -> SearchIndex: ...


class GalleryProvider(Protocol):
    """Hands out the active gallery; a sync may replace it at any time."""

    def current(self) -> ActiveGalleryView:
        """The gallery to use now (one attribute read; no lock)."""
        ...


@dataclass(frozen=True, slots=True)
class Match:
    """A track was announced as a gallery identity: what the event needs.

    Attributes:
        announce: The decider's announcement.
        label: The identity's display label.
        gallery_version: Version of the gallery that was searched.
        first_seen: When the track started.
        box: The track's best face, normalised to the frame.
        arrival: Monotonic arrival time of the deciding frame (latency measurements).
    """

    announce: Announce
    label: str
    gallery_version: int
    first_seen: float
    box: NormalisedBox
    arrival: float


Outcome = Match | TrackEnded | UnknownTrack


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What one frame produced.

    Attributes:
        camera_id: The frame's camera.
        faces: Faces detected.
        passed: Faces that passed the quality gate.
        embedded: Faces embedded.
        outcomes: Decisions, in the order they were taken.
        laps: ``(stage, milliseconds)`` for each stage that ran.
    """

    camera_id: str
    faces: int
    passed: int
    embedded: int
    outcomes: tuple[Outcome, ...]
    laps: tuple[tuple[str, float], ...]


@dataclass(slots=True)
class _TrackState:
    """Per-track embedding bookkeeping (frame indices only: no faces, no vectors)."""

    embedded_frames: set[int] = field(default_factory=set)
    embedded: int = 0
    recent: deque[float] = field(default_factory=deque)  # qualities of the last n votes
    matched: bool = False
    # Template mode only: (quality, embedding) of the track's best n faces, in memory
    # while the track lives (dropped with its state when it ends; never written).
    best: list[tuple[float, FloatArray]] = field(default_factory=list)


class _Camera:
    """Tracker, decider and embedding bookkeeping of one camera."""

    def __init__(self, camera_id: str, tracking: TrackerConfig, threshold: float,
                 decision: DecisionConfig) -> None:
        self.tracker: Tracker[FaceChip] = Tracker(camera_id, tracking)
        if decision.template == "mean":  # one template search is one decisive vote
            decision = decision.model_copy(update={"k": 1, "n": 1})
        self.decider = Decider(camera_id, threshold, decision)
        self.tracks: dict[int, _TrackState] = {}
        self.frame_size = (0, 0)
        self.last_timestamp: float | None = None
        self.frames = 0


class FrameProcessor:
    """Detect → quality → track → embed → search → decide, one frame at a time.

    Not thread-safe: one worker thread calls :meth:`process`.

    Args:
        detector: Face detector (with keypoints, for alignment).
        embedder: Face embedder; its template aligns the chips.
        gallery: Provider of the active gallery.
        threshold: Similarity at or above which a face votes for an identity.
        quality: Live quality gate thresholds.
        tracking: Tracker settings (one tracker per camera).
        decision: Voting settings (one decider per camera).
        max_embeddings_per_track: Faces of one track embedded at most.
        min_quality_gain: After a track is confirmed, a new best face is embedded only
            when its quality score beats the weakest of the faces behind the track's
            last ``n`` votes by this much (quality jitters from frame to frame; a new
            vote should come from a better face than one it pushes out).
        embed_after_match: Keep embedding improving faces after a track matched.
        align_face: Aligns one face into a chip (default :func:`device.vision.align.align`
            with the embedder's template).
        max_frame_gap_s: A camera whose frames are further apart than this (a stream
            that reconnected, a replay that looped) ends its tracks first: the faces
            after the gap are new tracks.
    """

    def __init__(
        self,
        detector: Detector,
        embedder: Embedder,
        gallery: GalleryProvider,
        *,
        threshold: float,
        quality: QualityConfig | None = None,
        tracking: TrackerConfig | None = None,
        decision: DecisionConfig | None = None,
        max_embeddings_per_track: int = 8,
        min_quality_gain: float = 0.02,
        embed_after_match: bool = False,
        align_face: Callable[[Image, Detection], FaceChip] | None = None,
        max_frame_gap_s: float = 2.0,
    ) -> None:
        self.detector = detector
        self.embedder = embedder
        self.gallery = gallery
        self.threshold = float(threshold)
        self.quality = quality or QualityConfig()
        self.tracking = tracking or TrackerConfig()
        self.decision = decision or DecisionConfig()
        self.max_embeddings_per_track = max_embeddings_per_track
        self.min_quality_gain = min_quality_gain
        self.embed_after_match = embed_after_match
        self.max_frame_gap_s = max_frame_gap_s
        template: AlignTemplate | None = None
        if align_face is None:
            template = embedder.template
        self._template = template
        self._align = align_face
        self._cameras: dict[str, _Camera] = {}
        self.embeddings = 0
        """Faces embedded since start."""

    # ---- per camera ----------------------------------------------------------------

    def _camera(self, camera_id: str) -> _Camera:
        cam = self._cameras.get(camera_id)
        if cam is None:
            cam = self._cameras[camera_id] = _Camera(
                camera_id, self.tracking, self.threshold, self.decision)
        return cam

    def active_tracks(self, camera_id: str) -> int:
        """Confirmed tracks of a camera that have not ended."""
        cam = self._cameras.get(camera_id)
        return len(cam.tracker.active_track_ids) if cam else 0

    def frames(self, camera_id: str) -> int:
        """Frames of a camera processed so far."""
        cam = self._cameras.get(camera_id)
        return cam.frames if cam else 0

    def unknown_tracks(self, camera_id: str) -> int:
        """Tracks of a camera that ended after voting without matching anyone."""
        cam = self._cameras.get(camera_id)
        return cam.decider.unknown_tracks if cam else 0

    # ---- stages --------------------------------------------------------------------

    def _chip(self, image: Image, detection: Detection) -> FaceChip | None:
        try:
            if self._align is not None:
                return self._align(image, detection)
            assert self._template is not None
            return align(image, detection, self._template)
        except ValueError as exc:  # no keypoints (a detector without them), degenerate face
            logger.debug("face not aligned: %s", exc)
            return None

    def process(self, frame: Frame, arrival: float = 0.0) -> FrameResult:
        """Run every stage on one frame.

        Args:
            frame: The frame (RGB).
            arrival: Monotonic time the frame entered the queue (carried into
                matches for the frame-to-acknowledgement latency).

        Raises:
            ModelError: Detection or embedding failed.
            GalleryError: The search failed.
        """
        clock = StageClock()
        cam = self._camera(frame.camera_id)
        outcomes: list[Outcome] = []
        last = cam.last_timestamp
        if last is not None and abs(frame.timestamp - last) > self.max_frame_gap_s:
            logger.info("camera %s: %.1f s between frames; its tracks end", frame.camera_id,
                        frame.timestamp - last)
            for ended in cam.tracker.flush(last):
                outcomes.extend(self._end(cam, ended))
        cam.last_timestamp = frame.timestamp
        cam.frames += 1
        cam.frame_size = (frame.width, frame.height)
        image = frame.image

        detections = self.detector.detect(image)
        clock.lap("detect")

        qualities: list[float | None] = []
        chips: list[FaceChip | None] = []
        for det in detections:
            report = assess(image, det, self.quality)
            chip = self._chip(image, det) if report.passed else None
            qualities.append(report.score if chip is not None else None)
            chips.append(chip)
        passed = sum(q is not None for q in qualities)
        clock.lap("quality")

        updates = cam.tracker.update(frame.timestamp, detections, qualities, chips)
        clock.lap("track")

        embedded = 0
        for update in updates:
            if update.kind is TrackEvent.ENDED:
                outcomes.extend(self._end(cam, update))
                continue
            faces = self._to_embed(cam, update)
            if faces:
                embedded += len(faces)
                outcomes.extend(self._embed_and_decide(cam, update, faces, arrival, clock))
        return FrameResult(frame.camera_id, len(detections), passed, embedded,
                           tuple(outcomes), tuple(clock.laps))

    def _to_embed(self, cam: _Camera, update: TrackUpdate[FaceChip]) -> list[TrackFace[FaceChip]]:
        """Best faces of the track not embedded yet, within its budget."""
        state = cam.tracks.setdefault(update.track_id, _TrackState())
        if state.matched and not self.embed_after_match:
            return []
        room = self.max_embeddings_per_track - state.embedded
        if room <= 0:
            return []
        if update.kind is TrackEvent.NEW:
            faces = [f for f in update.best if f.payload is not None]
        elif update.face_kept:
            bar = (min(state.recent) + self.min_quality_gain
                   if len(state.recent) >= self.decision.n else float("-inf"))
            faces = [f for f in update.best
                     if f.frame == cam.tracker.frame and f.payload is not None
                     and f.quality >= bar]
        else:
            return []
        faces = [f for f in faces if f.frame not in state.embedded_frames][:room]
        # Oldest first: the decider's window is "the last n", in the order faces were seen.
        faces.sort(key=lambda f: f.frame)
        return faces

    def _embed_and_decide(
        self,
        cam: _Camera,
        update: TrackUpdate[FaceChip],
        faces: list[TrackFace[FaceChip]],
        arrival: float,
        clock: StageClock,
    ) -> list[Outcome]:
        state = cam.tracks[update.track_id]
        chips = [f.payload for f in faces if f.payload is not None]
        embeddings = self.embedder.embed(chips)
        state.embedded += len(faces)
        state.embedded_frames.update(f.frame for f in faces)
        for face in faces:
            state.recent.append(face.quality)
            while len(state.recent) > self.decision.n:
                state.recent.popleft()
        self.embeddings += len(faces)
        clock.lap("embed")

        gallery = self.gallery.current()  # one version for the search and the event
        best: list[Hit | None] = []
        if self.decision.template == "mean":
            probes = self._template_probe(state, faces, embeddings)
            faces = faces[-1:] if probes else []  # the template votes at its newest face
        else:
            probes = [e.vector for e in embeddings]
        for probe in probes:
            hits = gallery.index.search_identities(probe, k=1)
            best.append(hits[0] if hits else None)
        del embeddings, probes  # never kept beyond the track's template
        clock.lap("search")

        out: list[Outcome] = []
        for face, hit in zip(faces, best, strict=True):
            for decision in cam.decider.observe(update.track_id, face.timestamp, hit):
                if isinstance(decision, Announce):
                    state.matched = True
                    out.append(self._match(cam, update, decision, gallery, arrival))
                else:  # observe() only announces; anything else is a decider change
                    out.append(decision)
        clock.lap("decide")
        return out

    def _template_probe(self, state: _TrackState, faces: list[TrackFace[FaceChip]],
                        embeddings: list[Embedding]) -> list[FloatArray]:
        """Keep the track's best ``n`` embeddings; their quality-weighted mean once it
        has ``n`` (the size its threshold was calibrated for), else nothing."""
        n = self.decision.n
        state.best.extend((f.quality, e.vector) for f, e in zip(faces, embeddings, strict=True))
        state.best.sort(key=lambda item: item[0], reverse=True)
        del state.best[n:]
        if len(state.best) < n:
            return []
        return [mean_template([v for _, v in state.best], [q for q, _ in state.best])]

    def _match(self, cam: _Camera, update: TrackUpdate[FaceChip], announce: Announce,
               gallery: ActiveGalleryView, arrival: float) -> Match:
        width, height = cam.frame_size
        face = update.best[0].detection if update.best else update.detection
        assert face is not None  # a track being announced has faces
        return Match(
            announce=announce,
            label=gallery.labels.get(announce.identity_id, announce.identity_id),
            gallery_version=gallery.version,
            first_seen=min(update.first_seen, announce.timestamp),
            box=NormalisedBox.from_pixels(face.box, width, height),
            arrival=arrival,
        )

    def _end(self, cam: _Camera, update: TrackUpdate[FaceChip]) -> list[Outcome]:
        cam.tracks.pop(update.track_id, None)
        ended = cam.decider.end_track(
            update.track_id, update.timestamp,
            last_seen=update.last_seen, frames_seen=update.frames_seen,
        )
        return [d for d in ended if isinstance(d, TrackEnded | UnknownTrack)]

    def flush(self) -> list[Outcome]:
        """End every track of every camera (shutdown): track-end decisions.

        Each camera's tracks end at the time of its last frame (no wall clock here).
        """
        out: list[Outcome] = []
        for cam in self._cameras.values():
            for update in cam.tracker.flush(cam.last_timestamp or 0.0):
                out.extend(self._end(cam, update))
        return out

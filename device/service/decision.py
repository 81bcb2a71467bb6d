"""Track-level match decisions: when to say "this track is identity X".

A single face is a weak witness; a track gives several. :class:`Decider` (one per
camera) takes, for every embedded face of a track, the gallery's best candidate
(identity and similarity) or ``None``, and:

* counts a face as a vote for its candidate's identity when the similarity is at or
  above the threshold, otherwise as an *unknown* vote;
* announces an identity when ``k`` of the track's last ``n`` votes agree on it
  (default 2 of 3) — once per track per identity;
* optionally rate-limits announcements per identity on the camera: with
  ``rate_limit_s > 0`` at most one :class:`Announce` per identity per window, on top
  of the per-track rule. A track whose announcement was held back keeps voting and
  announces once the window has passed, if its votes still agree;
* when the tracker ends a track, returns a :class:`TrackEnded` (last seen, frames
  seen) for each identity the track announced, and counts a track that cast at least
  ``k`` votes without announcing anyone as an unknown track — a number, with no
  identity and no embedding (reported as :class:`UnknownTrack` when enabled).

It is pure: no clock (timestamps come with the calls), no I/O. It holds only
``(identity_id, similarity)`` votes — never an embedding, and nothing about a person
who is not in the gallery beyond "unknown". The pipeline turns the values into MQTT
events and audit records.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import Field, model_validator

from device.config import Section
from device.service.thresholds import meets

logger = logging.getLogger(__name__)

#: Identities one track may announce; a track that keeps switching is a tracker fault.
MAX_IDENTITIES_PER_TRACK = 8
#: Recently ended track ids remembered so a late vote cannot revive a track.
ENDED_MEMORY = 256


class DecisionConfig(Section):
    """How face votes become match decisions."""

    k: int = Field(
        2, ge=1, le=10,
        description="Votes for one identity, among a track's last n, needed to announce it.",
    )
    n: int = Field(
        3, ge=1, le=10,
        description="How many of a track's latest embedded faces are considered (k <= n).",
    )
    rate_limit_s: float = Field(
        0.0, ge=0.0,
        description="At most one announcement per identity per camera in this many "
        "seconds, across tracks; 0 turns the limit off.",
    )
    report_unknown_tracks: bool = Field(
        False,
        description="Return an UnknownTrack value (a count: no identity, no embedding) "
        "when a track that cast at least k votes ends without an announcement.",
    )
    template: Literal["best", "mean"] = Field(
        "best",
        description="best: each embedded face votes on its own (k of the last n). mean: "
        "the track is searched with the quality-weighted mean of its best n embeddings "
        "(re-normalised) once it has n, at the template's own calibrated threshold "
        "(table <model>.template-mean-k<n>); one agreeing template search announces.",
    )
    max_tracks: int = Field(
        256, ge=1, le=100_000,
        description="Tracks with votes held at once; beyond it the least recently "
        "active one is forgotten (the tracker should have ended it).",
    )

    @model_validator(mode="after")
    def _k_within_n(self) -> DecisionConfig:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not exceed n ({self.n})")
        return self


class ScoredIdentity(Protocol):
    """A gallery candidate: anything with these two attributes (e.g. an index hit)."""

    @property
    def identity_id(self) -> str: ...

    @property
    def similarity(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Announce:
    """A track is identity ``identity_id``.

    Attributes:
        camera_id: The decider's camera.
        track_id: The track.
        identity_id: The agreed identity.
        timestamp: Time of the deciding face.
        similarity: Best similarity among the agreeing votes in the window.
        mean_similarity: Mean similarity of those votes.
        votes: Agreeing votes in the window (at least ``k``).
        faces_considered: Faces of the track that have voted so far.
    """

    camera_id: str
    track_id: int
    identity_id: str
    timestamp: float
    similarity: float
    mean_similarity: float
    votes: int
    faces_considered: int


@dataclass(frozen=True, slots=True)
class TrackEnded:
    """A track that announced ``identity_id`` has ended.

    Attributes:
        camera_id: The decider's camera.
        track_id: The track.
        identity_id: An identity the track announced.
        timestamp: When the end was reported.
        announced_at: Time of the announcement.
        last_seen: Last time the track was detected.
        frames_seen: Frames the track was detected in.
        votes: The track's votes for the identity, over its whole life.
        best_similarity: Best similarity among those votes.
    """

    camera_id: str
    track_id: int
    identity_id: str
    timestamp: float
    announced_at: float
    last_seen: float
    frames_seen: int
    votes: int
    best_similarity: float


@dataclass(frozen=True, slots=True)
class UnknownTrack:
    """A track ended without matching anyone (only with ``report_unknown_tracks``).

    Attributes:
        camera_id: The decider's camera.
        track_id: The track.
        timestamp: When the end was reported.
        last_seen: Last time the track was detected.
        frames_seen: Frames the track was detected in.
        faces_considered: Faces of the track that voted.
    """

    camera_id: str
    track_id: int
    timestamp: float
    last_seen: float
    frames_seen: int
    faces_considered: int


Decision = Announce | TrackEnded | UnknownTrack


@dataclass(slots=True)
class _Tally:
    """What a track has said about one identity."""

    votes: int = 0
    best: float = float("-inf")
    announced_at: float | None = None


class _TrackVotes:
    __slots__ = ("faces", "last_activity", "tallies", "window")

    def __init__(self, n: int, timestamp: float) -> None:
        self.window: deque[tuple[str | None, float]] = deque(maxlen=n)
        self.tallies: dict[str, _Tally] = {}
        self.faces = 0
        self.last_activity = timestamp


class Decider:
    """Track-level decisions for one camera.

    Track ids must not be reused within the camera: ended ids are remembered (the
    last :data:`ENDED_MEMORY`) so that a late vote cannot revive a track (see
    ``first_id`` of :class:`~device.vision.track.Tracker`).

    Args:
        camera_id: The camera, copied into every decision.
        threshold: Similarity at or above which a candidate is a vote for its
            identity (the embedder's calibrated threshold).
        config: Voting, rate-limit and bookkeeping settings.
    """

    def __init__(
        self, camera_id: str, threshold: float, config: DecisionConfig | None = None
    ) -> None:
        self.camera_id = camera_id
        self.threshold = float(threshold)
        self.config = config or DecisionConfig()
        self._tracks: OrderedDict[int, _TrackVotes] = OrderedDict()
        self._last_announced: dict[str, float] = {}
        self._ended: deque[int] = deque(maxlen=ENDED_MEMORY)
        self.unknown_tracks = 0
        """Tracks that cast at least ``k`` votes and ended without an announcement."""
        self.suppressed = 0
        """Announcements held back by the rate limit."""

    @property
    def open_tracks(self) -> int:
        """Tracks with votes held."""
        return len(self._tracks)

    def observe(
        self, track_id: int, timestamp: float, best: ScoredIdentity | None
    ) -> list[Decision]:
        """One embedded face of a track and the gallery's best candidate for it.

        Args:
            track_id: The tracker's id.
            timestamp: Capture time of the face.
            best: The best candidate, or ``None`` when the gallery gave none (empty
                gallery): an unknown vote, like a candidate below the threshold.

        Returns:
            The announcements this vote triggers (usually none).
        """
        if track_id in self._ended:
            logger.debug("camera %s: vote for ended track %d ignored", self.camera_id, track_id)
            return []
        track = self._track(track_id, timestamp)
        track.faces += 1
        track.last_activity = timestamp
        identity: str | None = None
        similarity = float(best.similarity) if best is not None else 0.0
        if best is not None and meets(similarity, self.threshold):
            tally = track.tallies.get(best.identity_id)
            if tally is None and len(track.tallies) < MAX_IDENTITIES_PER_TRACK:
                tally = track.tallies[best.identity_id] = _Tally()
            if tally is None:
                logger.warning(
                    "camera %s: track %d voted for over %d identities; vote counted as unknown",
                    self.camera_id, track_id, MAX_IDENTITIES_PER_TRACK,
                )
            else:
                identity = best.identity_id
                tally.votes += 1
                tally.best = max(tally.best, similarity)
        track.window.append((identity, similarity))
        return self._decide(track_id, track, timestamp)

    def end_track(
        self, track_id: int, timestamp: float, *, last_seen: float, frames_seen: int
    ) -> list[Decision]:
        """The tracker ended a track: close its votes.

        Args:
            track_id: The tracker's id.
            timestamp: When the end was reported.
            last_seen: Last time the track was detected.
            frames_seen: Frames the track was detected in.

        Returns:
            A :class:`TrackEnded` per identity the track announced (in announcement
            order), or an :class:`UnknownTrack` when enabled and the track voted at
            least ``k`` times without an announcement; else nothing.
        """
        if track_id not in self._ended:
            self._ended.append(track_id)
        track = self._tracks.pop(track_id, None)
        if track is None:
            return []
        announced = sorted(
            ((i, t) for i, t in track.tallies.items() if t.announced_at is not None),
            key=lambda item: item[1].announced_at or 0.0,
        )
        out: list[Decision] = [
            TrackEnded(
                camera_id=self.camera_id, track_id=track_id, identity_id=identity,
                timestamp=timestamp, announced_at=tally.announced_at or 0.0,
                last_seen=last_seen, frames_seen=frames_seen, votes=tally.votes,
                best_similarity=tally.best,
            )
            for identity, tally in announced
        ]
        if not out and track.faces >= self.config.k:
            self.unknown_tracks += 1
            if self.config.report_unknown_tracks:
                out.append(UnknownTrack(
                    camera_id=self.camera_id, track_id=track_id, timestamp=timestamp,
                    last_seen=last_seen, frames_seen=frames_seen, faces_considered=track.faces,
                ))
        return out

    def _track(self, track_id: int, timestamp: float) -> _TrackVotes:
        track = self._tracks.get(track_id)
        if track is not None:
            self._tracks.move_to_end(track_id)
            return track
        if len(self._tracks) >= self.config.max_tracks:
            stale, _ = self._tracks.popitem(last=False)
            self._ended.append(stale)
            logger.warning(
                "camera %s: %d tracks hold votes; forgetting track %d (never ended)",
                self.camera_id, self.config.max_tracks, stale,
            )
        track = self._tracks[track_id] = _TrackVotes(self.config.n, timestamp)
        return track

    def _decide(self, track_id: int, track: _TrackVotes, timestamp: float) -> list[Decision]:
        counts: dict[str, list[float]] = {}
        for identity, similarity in track.window:
            if identity is not None:
                counts.setdefault(identity, []).append(similarity)
        out: list[Decision] = []
        for identity, sims in sorted(counts.items(), key=lambda kv: (-len(kv[1]), -max(kv[1]))):
            tally = track.tallies[identity]
            if len(sims) < self.config.k or tally.announced_at is not None:
                continue
            if self._rate_limited(identity, timestamp):
                self.suppressed += 1
                logger.debug(
                    "camera %s: track %d is %s again within %.0f s; not announced yet",
                    self.camera_id, track_id, identity, self.config.rate_limit_s,
                )
                continue
            tally.announced_at = timestamp
            out.append(Announce(
                camera_id=self.camera_id, track_id=track_id, identity_id=identity,
                timestamp=timestamp, similarity=max(sims), mean_similarity=sum(sims) / len(sims),
                votes=len(sims), faces_considered=track.faces,
            ))
            logger.debug(
                "camera %s: track %d announced as %s (%d of %d votes)",
                self.camera_id, track_id, identity, len(sims), len(track.window),
            )
        return out

    def _rate_limited(self, identity: str, timestamp: float) -> bool:
        """Check the per-identity window; record the announcement when it passes."""
        window = self.config.rate_limit_s
        if window <= 0:
            return False
        last = self._last_announced.get(identity)
        if last is not None and 0.0 <= timestamp - last < window:
            return True
        # Keep the map bounded: only identities announced within the window matter.
        expired = [i for i, t in self._last_announced.items() if not 0 <= timestamp - t < window]
        for other in expired:
            del self._last_announced[other]
        self._last_announced[identity] = timestamp
        return False

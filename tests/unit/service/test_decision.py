"""Track-level decisions: K of N, unknown votes, once per identity, rate limit, track end."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from device.config import validate_mapping
from device.errors import ConfigError
from device.service.decision import (
    Announce,
    Decider,
    Decision,
    DecisionConfig,
    TrackEnded,
    UnknownTrack,
)

THRESHOLD = 0.6


@dataclass(frozen=True)
class Hit:
    identity_id: str
    similarity: float


def decider(**config: object) -> Decider:
    return Decider("cam", THRESHOLD, DecisionConfig.model_validate(config))


def feed(d: Decider, track_id: int, votes: list[Hit | None], start: float = 0.0,
         step: float = 0.1) -> list[list[Decision]]:
    return [d.observe(track_id, start + i * step, v) for i, v in enumerate(votes)]


def announced(results: list[list[Decision]]) -> list[tuple[int, str]]:
    """(vote index, identity) of every announcement."""
    return [(i, a.identity_id) for i, r in enumerate(results) for a in r
            if isinstance(a, Announce)]


A, B = Hit("alice", 0.8), Hit("bob", 0.75)


def test_two_of_three_announce_once() -> None:
    d = decider()
    results = feed(d, 1, [A, A, A, A])
    assert announced(results) == [(1, "alice")]
    (a,) = results[1]
    assert a == Announce(camera_id="cam", track_id=1, identity_id="alice", timestamp=0.1,
                         similarity=0.8, mean_similarity=pytest.approx(0.8), votes=2,
                         faces_considered=2)


def test_one_vote_is_not_enough() -> None:
    d = decider()
    assert feed(d, 1, [A]) == [[]]


def test_alternating_identities() -> None:
    # 2 of 3: A B A → alice at the third vote; B A B → bob at the fourth; each once.
    assert announced(feed(decider(), 1, [A, B, A, B, A, B])) == [(2, "alice"), (3, "bob")]
    # 3 of 5: A B A B A → alice at the fifth (bob has two); B A B A B → bob at the sixth.
    assert announced(feed(decider(k=3, n=5), 1, [A, B, A, B, A])) == [(4, "alice")]
    assert announced(feed(decider(k=3, n=5), 1, [A, B, A, B, A, B])) == [(4, "alice"),
                                                                          (5, "bob")]
    # 2 of 2: strict alternation never agrees.
    assert announced(feed(decider(k=2, n=2), 1, [A, B] * 5)) == []


def test_below_threshold_faces_are_unknown_votes() -> None:
    low = Hit("alice", THRESHOLD - 0.01)
    assert announced(feed(decider(), 1, [A, low, low, A, low])) == []
    assert announced(feed(decider(), 1, [A, low, A])) == [(2, "alice")]
    assert announced(feed(decider(), 1, [low, low, low, low])) == []


def test_no_candidate_is_an_unknown_vote() -> None:
    assert announced(feed(decider(), 1, [A, None, None, A])) == []
    assert announced(feed(decider(), 1, [A, None, A])) == [(2, "alice")]


def test_the_threshold_itself_counts() -> None:
    at = Hit("alice", THRESHOLD)
    assert announced(feed(decider(), 1, [at, at])) == [(1, "alice")]


def test_announcement_carries_the_window_statistics() -> None:
    d = decider(k=2, n=3)
    results = feed(d, 1, [Hit("alice", 0.7), Hit("carol", 0.9), Hit("alice", 0.9)])
    (a,) = results[2]
    assert isinstance(a, Announce)
    assert (a.votes, a.similarity, a.mean_similarity, a.faces_considered) == (
        2, 0.9, pytest.approx(0.8), 3)


def test_k_equals_one_announces_each_identity_at_its_first_vote() -> None:
    assert announced(feed(decider(k=1, n=1), 1, [A, A, B, A])) == [(0, "alice"), (2, "bob")]


def test_tracks_vote_separately() -> None:
    d = decider()
    assert d.observe(1, 0.0, A) == []
    assert d.observe(2, 0.0, A) == []  # one vote each: no track has two
    assert [a.track_id for a in d.observe(2, 0.1, A)] == [2]
    assert [a.track_id for a in d.observe(1, 0.1, A)] == [1]


# --- rate limit (timestamps are the clock) ---------------------------------------------


def test_rate_limit_holds_back_a_second_track_until_the_window_passes() -> None:
    d = decider(rate_limit_s=60)
    assert announced(feed(d, 1, [A, A], start=0.0)) == [(1, "alice")]
    d.end_track(1, 5.0, last_seen=5.0, frames_seen=50)
    # The same person on a new track ten seconds later: not announced again...
    assert announced(feed(d, 2, [A, A, A], start=10.0)) == []
    assert d.suppressed == 2
    # ...until the window has passed, if the track still agrees.
    assert [a.identity_id for a in d.observe(2, 60.5, A)] == ["alice"]
    assert d.observe(2, 61.0, A) == []  # and then once per track, as usual
    assert announced(feed(d, 3, [A, A], start=125.0)) == [(1, "alice")]


def test_rate_limit_is_per_identity() -> None:
    d = decider(rate_limit_s=60)
    feed(d, 1, [A, A], start=0.0)
    assert announced(feed(d, 2, [B, B], start=1.0)) == [(1, "bob")]


def test_rate_limit_is_per_camera() -> None:
    config = DecisionConfig(rate_limit_s=60)
    front, back = Decider("front", THRESHOLD, config), Decider("back", THRESHOLD, config)
    feed(front, 1, [A, A])
    (a,) = back.observe(1, 0.0, A) + back.observe(1, 0.1, A)
    assert isinstance(a, Announce) and a.camera_id == "back"


def test_rate_limit_off_announces_every_track() -> None:
    d = decider(rate_limit_s=0)
    for track in range(1, 6):
        assert announced(feed(d, track, [A, A], start=track)) == [(1, "alice")]
    assert d.suppressed == 0


def test_clock_going_back_does_not_silence_an_identity() -> None:
    d = decider(rate_limit_s=60)
    feed(d, 1, [A, A], start=1000.0)
    assert announced(feed(d, 2, [A, A], start=10.0)) == [(1, "alice")]


# --- track end -------------------------------------------------------------------------


def test_track_end_reports_each_announced_identity() -> None:
    d = decider(k=1, n=1)
    feed(d, 7, [Hit("alice", 0.7), Hit("alice", 0.9), B, None])
    ended = d.end_track(7, 9.0, last_seen=8.5, frames_seen=42)
    assert ended == [
        TrackEnded(camera_id="cam", track_id=7, identity_id="alice", timestamp=9.0,
                   announced_at=0.0, last_seen=8.5, frames_seen=42, votes=2,
                   best_similarity=0.9),
        TrackEnded(camera_id="cam", track_id=7, identity_id="bob", timestamp=9.0,
                   announced_at=pytest.approx(0.2), last_seen=8.5, frames_seen=42, votes=1,
                   best_similarity=0.75),
    ]
    assert d.open_tracks == 0 and d.unknown_tracks == 0


def test_held_back_identity_gets_no_track_end() -> None:
    d = decider(rate_limit_s=60)
    feed(d, 1, [A, A])
    feed(d, 2, [A, A], start=5.0)
    assert d.end_track(2, 8.0, last_seen=8.0, frames_seen=30) == []


def test_unknown_tracks_are_counted() -> None:
    d = decider()
    feed(d, 1, [None, Hit("alice", 0.1), None])
    assert d.end_track(1, 1.0, last_seen=1.0, frames_seen=10) == []
    assert d.unknown_tracks == 1
    feed(d, 2, [None])  # one vote: too little to call it anything
    d.end_track(2, 2.0, last_seen=2.0, frames_seen=3)
    d.end_track(99, 2.0, last_seen=2.0, frames_seen=3)  # never voted
    assert d.unknown_tracks == 1


def test_unknown_tracks_reported_when_enabled() -> None:
    d = decider(report_unknown_tracks=True)
    feed(d, 4, [None, None, A])
    assert d.end_track(4, 3.0, last_seen=2.9, frames_seen=20) == [
        UnknownTrack(camera_id="cam", track_id=4, timestamp=3.0, last_seen=2.9,
                     frames_seen=20, faces_considered=3)
    ]


def test_votes_for_an_ended_track_are_ignored() -> None:
    d = decider()
    feed(d, 1, [A])
    d.end_track(1, 1.0, last_seen=1.0, frames_seen=5)
    assert d.observe(1, 1.1, A) == [] and d.open_tracks == 0


def test_tracks_never_ended_are_bounded() -> None:
    d = decider(max_tracks=4)
    for track in range(10):
        d.observe(track, float(track), A)
    assert d.open_tracks == 4
    assert d.observe(0, 20.0, A) == []  # forgotten, and not revived


def test_only_identity_and_similarity_are_held() -> None:
    """Votes keep (identity, similarity) pairs: no vectors, nothing else of the candidate."""

    @dataclass(frozen=True)
    class RichHit:
        identity_id: str
        similarity: float
        embedding: np.ndarray

    d = decider(n=5, k=5)
    rng = np.random.default_rng(0)
    for i in range(4):
        d.observe(1, float(i), RichHit("alice", 0.9, rng.normal(size=128)))
        d.observe(1, float(i), None)
    held = [entry for track in d._tracks.values() for entry in track.window]
    assert held and all(
        isinstance(ident, str | None) and type(sim) is float for ident, sim in held
    )


# --- config ----------------------------------------------------------------------------


def test_config_validation() -> None:
    assert DecisionConfig().k == 2 and DecisionConfig().n == 3
    assert DecisionConfig().rate_limit_s == 0
    for bad in ({"k": 4, "n": 3}, {"k": 0}, {"n": 11, "k": 2}, {"rate_limit_s": -1},
                {"kk": 2}):
        with pytest.raises(ConfigError):
            validate_mapping(bad, DecisionConfig, "t")
    assert DecisionConfig(k=10, n=10).k == 10


def test_k_above_n_names_both() -> None:
    with pytest.raises(ConfigError, match=r"k \(4\) must not exceed n \(3\)"):
        validate_mapping({"k": 4, "n": 3}, DecisionConfig, "t")


def test_every_config_field_is_described() -> None:
    for name, info in DecisionConfig.model_fields.items():
        assert info.description, name

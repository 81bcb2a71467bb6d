"""The frame loop's stages with a scripted detector, a fake embedder and a real index."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from device.gallery.live import ActiveGallery, LiveGallery
from device.gallery.search.index import GalleryIndex
from device.service.decision import DecisionConfig, TrackEnded, UnknownTrack
from device.service.stages import STAGES, FrameProcessor, Match
from device.types import Detection, Embedding, FaceChip, Frame, Image
from device.vision.align import AlignTemplate
from device.vision.track import TrackerConfig

W, H = 640, 360
DIM = 8
T0 = 1_714_564_800.0
# Identity vectors: A and B are enrolled, C (a stranger) is not.
VECTORS = {name: np.eye(DIM, dtype=np.float32)[i] for i, name in enumerate("ABC")}
# Each person stands still at their own x position.
X = {"A": 60.0, "B": 260.0, "C": 460.0}
TEMPLATE = AlignTemplate(
    size=(32, 32), keypoints=("right_eye", "left_eye", "nose_tip", "mouth_center"),
    points=np.array([[10, 12], [22, 12], [16, 18], [16, 24]], dtype=np.float32),
)


def _face(x: float, y: float = 80.0, side: float = 100.0) -> Detection:
    cx = x + side / 2
    kps = ((cx - 20, y + 35), (cx + 20, y + 35), (cx, y + 55), (cx, y + 75),
           (x + 2, y + 45), (x + side - 2, y + 45))
    return Detection(box=(x, y, side, side), score=0.95, keypoints=kps)


def _image(seed: int) -> Image:
    # Sharp, mid-grey, full-range texture: every face in it passes the live quality gate.
    return np.random.default_rng(seed).integers(0, 250, (H, W, 3), dtype=np.uint8)


class ScriptedDetector:
    """Returns, for frame ``seq``, the faces of the people listed for it."""

    def __init__(self, script: dict[int, Sequence[str]], side: float = 100.0) -> None:
        self.script = script
        self.side = side
        self.frame = -1

    def detect(self, image: Image, timer: object = None) -> list[Detection]:
        self.frame += 1
        return [_face(X[p], side=self.side) for p in self.script.get(self.frame, ())]

    def close(self) -> None:
        pass


class FakeEmbedder:
    """Embeds a chip as the vector of the person standing where it was cut."""

    model_id = "fake"
    input_size = (32, 32)
    template = TEMPLATE

    def __init__(self) -> None:
        self.calls: list[str] = []

    def embed(self, chips: Sequence[FaceChip]) -> list[Embedding]:
        out = []
        for chip in chips:
            assert chip.image.shape == (32, 32, 3)
            assert chip.detection is not None
            person = min(X, key=lambda p: abs(X[p] - chip.detection.box[0]))  # type: ignore[union-attr]
            self.calls.append(person)
            out.append(Embedding(VECTORS[person].copy(), self.model_id))
        return out

    def close(self) -> None:
        pass


@pytest.fixture()
def gallery() -> LiveGallery:
    index = GalleryIndex.build([1, 2], ["id-a", "id-b"], np.stack([VECTORS["A"], VECTORS["B"]]),
                               threads=1)
    active = ActiveGallery(7, "g1", "fake", index, MappingProxyType({"id-a": "Ada",
                                                                      "id-b": "Bob"}),
                           Path("gallery.db"))
    return LiveGallery(active)


def _run(processor: FrameProcessor, frames: int, gap_at: int | None = None) -> list[object]:
    outcomes: list[object] = []
    t = T0
    for seq in range(frames):
        t += 5.0 if seq == gap_at else 0.1
        frame = Frame("front", seq, t, _image(seq))
        result = processor.process(frame, arrival=float(seq))
        assert [s for s, _ in result.laps][:3] == list(STAGES[:3])
        outcomes += result.outcomes
    return outcomes + processor.flush()


def _processor(script: dict[int, Sequence[str]], gallery: LiveGallery, embedder: FakeEmbedder,
               **kwargs: object) -> FrameProcessor:
    return FrameProcessor(
        ScriptedDetector(script, side=float(kwargs.pop("side", 100.0))),  # type: ignore[arg-type]
        embedder, gallery, threshold=0.9,
        tracking=TrackerConfig(min_hits=3, max_age=2, best_faces=3),
        decision=DecisionConfig(k=2, n=3, report_unknown_tracks=True),
        **kwargs,  # type: ignore[arg-type]
    )


def test_each_enrolled_person_is_announced_once_and_the_stranger_never(
    gallery: LiveGallery,
) -> None:
    embedder = FakeEmbedder()
    script = dict.fromkeys(range(12), ("A", "B", "C"))
    outcomes = _run(_processor(script, gallery, embedder, max_embeddings_per_track=5),
                    frames=12)
    matches = [o for o in outcomes if isinstance(o, Match)]
    assert sorted(m.announce.identity_id for m in matches) == ["id-a", "id-b"]
    assert {m.label for m in matches} == {"Ada", "Bob"}
    assert all(m.gallery_version == 7 for m in matches)
    for m in matches:
        assert 0 < m.box.w <= 1 and m.announce.votes >= 2
        assert m.first_seen == pytest.approx(T0 + 0.1)
    # Matched tracks stop embedding after their announcement (their three best faces
    # at confirmation); the stranger's track goes on while faces improve, within budget.
    assert embedder.calls.count("A") == 3
    assert embedder.calls.count("B") == 3
    assert 3 <= embedder.calls.count("C") <= 5
    ended = [o for o in outcomes if isinstance(o, TrackEnded)]
    assert sorted(e.identity_id for e in ended) == ["id-a", "id-b"]
    assert all(e.frames_seen == 12 for e in ended)
    unknown = [o for o in outcomes if isinstance(o, UnknownTrack)]
    assert len(unknown) == 1


def test_the_embedding_budget_caps_every_track(gallery: LiveGallery) -> None:
    embedder = FakeEmbedder()
    script = dict.fromkeys(range(40), ("A", "C"))
    outcomes = _run(_processor(script, gallery, embedder, max_embeddings_per_track=2),
                    frames=40)
    assert embedder.calls.count("C") == 2
    assert embedder.calls.count("A") == 2
    assert [o.announce.identity_id for o in outcomes if isinstance(o, Match)] == ["id-a"]


def test_only_faces_that_enter_the_best_are_embedded(gallery: LiveGallery) -> None:
    embedder = FakeEmbedder()
    script = dict.fromkeys(range(30), ("C",))
    processor = _processor(script, gallery, embedder, max_embeddings_per_track=100)
    _run(processor, frames=30)
    # The same face every frame: equal quality never displaces a kept face, so only
    # the confirmation's best faces (3) and faces that improve on them are embedded.
    assert 3 <= len(embedder.calls) < 30
    assert processor.embeddings == len(embedder.calls)


def test_faces_failing_the_quality_gate_are_never_embedded(gallery: LiveGallery) -> None:
    embedder = FakeEmbedder()
    script = dict.fromkeys(range(8), ("A",))
    processor = _processor(script, gallery, embedder, side=20.0)  # below min_face_px
    outcomes = _run(processor, frames=8)
    assert embedder.calls == []
    assert not [o for o in outcomes if isinstance(o, Match)]
    assert processor.active_tracks("front") == 0


def test_a_gap_between_frames_ends_the_tracks(gallery: LiveGallery) -> None:
    embedder = FakeEmbedder()
    script = dict.fromkeys(range(10), ("A",))
    outcomes = _run(_processor(script, gallery, embedder), frames=10, gap_at=5)
    matches = [o for o in outcomes if isinstance(o, Match)]
    ended = [o for o in outcomes if isinstance(o, TrackEnded)]
    # Before and after the gap are two tracks, each announced once.
    assert len(matches) == 2
    assert len({m.announce.track_id for m in matches}) == 2
    assert len(ended) == 2


def test_empty_gallery_gives_unknown_votes_only() -> None:
    live = LiveGallery(ActiveGallery(0, "", "fake", GalleryIndex(DIM, threads=1),
                                     MappingProxyType({}), Path("none")))
    embedder = FakeEmbedder()
    outcomes = _run(_processor(dict.fromkeys(range(6), ("A",)), live, embedder), frames=6)
    assert not [o for o in outcomes if isinstance(o, Match)]
    assert len([o for o in outcomes if isinstance(o, UnknownTrack)]) == 1


class ApproachingDetector(ScriptedDetector):
    """One person walking towards the camera: the face grows by 2 px a frame."""

    def detect(self, image: Image, timer: object = None) -> list[Detection]:
        self.frame += 1
        side = 40.0 + 3.0 * self.frame
        x, y = X["C"], 20.0
        f = [(0.3, 0.35), (0.7, 0.35), (0.5, 0.55), (0.5, 0.75), (0.02, 0.45), (0.98, 0.45)]
        kps = tuple((x + a * side, y + b * side) for a, b in f)
        return [Detection(box=(x, y, side, side), score=0.95, keypoints=kps)]


def test_a_new_best_face_is_embedded_only_when_clearly_better(gallery: LiveGallery) -> None:
    counts = {}
    for gain in (0.0, 0.1, 1.0):
        embedder = FakeEmbedder()
        processor = _processor({}, gallery, embedder, max_embeddings_per_track=100,
                               min_quality_gain=gain)
        processor.detector = ApproachingDetector({})
        _run(processor, frames=30)
        counts[gain] = len(embedder.calls)
    assert counts[1.0] == 3  # the confirmation's three votes; nothing beats them by 1
    assert counts[0.0] > counts[0.1] > counts[1.0]


def test_template_mode_searches_the_mean_of_the_best_n_once_per_track(
    gallery: LiveGallery,
) -> None:
    """[decision] template = "mean": one search per track once it has n faces, one
    announcement per enrolled person, none for the stranger."""
    embedder = FakeEmbedder()
    script = dict.fromkeys(range(12), ("A", "B", "C"))
    processor = FrameProcessor(
        ScriptedDetector(script), embedder, gallery, threshold=0.9,  # type: ignore[arg-type]
        tracking=TrackerConfig(min_hits=3, max_age=2, best_faces=3),
        decision=DecisionConfig(k=2, n=3, template="mean", report_unknown_tracks=True),
        max_embeddings_per_track=5,
    )
    outcomes = _run(processor, frames=12)
    matches = [o for o in outcomes if isinstance(o, Match)]
    assert sorted(m.announce.identity_id for m in matches) == ["id-a", "id-b"]
    assert all(m.announce.votes == 1 and m.announce.similarity == pytest.approx(1.0)
               for m in matches)
    assert not any(isinstance(o, Match) and o.announce.identity_id not in ("id-a", "id-b")
                   for o in outcomes)
    # The template dies with its track.
    assert all(not cam.tracks for cam in processor._cameras.values())

"""What each enrolled person scores in a clip, per encoder: can any safe threshold match them?

Every frame of a video goes through BlazeFace with tiling on and no quality gate (so
small and turned faces the service would drop are still scored); every detection is
aligned and embedded by each encoder and compared with each person's reference photo
(found by the still-photo finder, aligned to that encoder's template). For each person,
the frames where they are on screen are given; a detection there *may* be them (the
window also holds other faces), a detection outside can only be someone else.

The question this answers: is there a threshold, at most the shipped FMR 1e-3 one,
that the person's best in-window score clears while every out-of-window detection
stays below it? If the best in-window score is not above the best out-of-window one,
no threshold separates them from strangers on this clip.

Embeddings live in memory only; the result holds scores, frames and box widths.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import ImageError
from device.imageio import read_image
from device.lab.conditions import embed_face
from device.types import FloatArray, Image
from device.vision.detect import Detector
from device.vision.embed import Embedder
from device.vision.stills import StillFaceFinder

logger = logging.getLogger(__name__)

#: Frame windows, inclusive: ``[(first, last), ...]``.
Windows = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class Scored:
    """One detection's similarity to one reference.

    Attributes:
        frame: Frame index (0-based).
        width: Detection box width in frame pixels.
        score: Cosine similarity to the reference.
        in_window: The frame is one where the person is on screen.
    """

    frame: int
    width: int
    score: float
    in_window: bool

    def to_json(self) -> dict[str, Any]:
        return {"frame": self.frame, "width": self.width, "score": round(self.score, 4),
                "in_window": self.in_window}


@dataclass(frozen=True)
class PersonScores:
    """One person under one encoder.

    Attributes:
        model_id: The encoder.
        person: The person's id.
        in_window: Detections in the person's frames (may be them or others).
        best_in_window: Highest score there (None without detections).
        best_outside: Highest score of a detection outside their frames (someone else).
        top: The highest-scoring detections overall, best first.
    """

    model_id: str
    person: str
    in_window: int
    best_in_window: float | None
    best_outside: float | None
    top: tuple[Scored, ...]

    def matchable_at(self, threshold: float) -> bool:
        """Some in-window detection reaches ``threshold`` and none outside does."""
        return (self.best_in_window is not None and self.best_in_window >= threshold
                and (self.best_outside is None or self.best_outside < threshold))

    @property
    def separable(self) -> bool:
        """Some threshold separates the best in-window score from everything outside."""
        return self.best_in_window is not None and (
            self.best_outside is None or self.best_in_window > self.best_outside)

    def to_json(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "person": self.person, "in_window": self.in_window,
                "best_in_window": None if self.best_in_window is None
                else round(self.best_in_window, 4),
                "best_outside": None if self.best_outside is None
                else round(self.best_outside, 4),
                "separable": self.separable, "top": [s.to_json() for s in self.top]}


def parse_windows(text: str) -> list[tuple[int, int]]:
    """``"0-34,78-214"`` → ``[(0, 34), (78, 214)]`` (a single ``"5"`` is ``(5, 5)``).

    Raises:
        ValueError: Malformed, negative or reversed.
    """
    out = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"frame window {part.strip()!r}: expected FIRST-LAST") from None
        if a < 0 or b < a:
            raise ValueError(f"frame window {part.strip()!r}: expected 0 <= FIRST <= LAST")
        out.append((a, b))
    return out


def _inside(frame: int, windows: Windows) -> bool:
    return any(a <= frame <= b for a, b in windows)


def reference_embeddings(photos: Mapping[str, Path], finder: StillFaceFinder,
                         embedders: Sequence[Embedder]) -> dict[str, list[FloatArray]]:
    """Person id → one embedding per encoder of the largest face of their photo.

    Raises:
        ImageError: A photo is unreadable or holds no face.
    """
    out: dict[str, list[FloatArray]] = {}
    for person, photo in photos.items():
        image = read_image(photo)
        found = finder.find(image, largest_only=True)
        if not found:
            raise ImageError(f"{photo}: no face found in the reference photo of {person}")
        vectors = [embed_face(image, found[0], e) for e in embedders]
        if any(v is None for v in vectors):
            raise ImageError(f"{photo}: the face of {person} cannot be aligned")
        out[person] = [v for v in vectors if v is not None]
    return out


def score_clip(video: Path, references: Mapping[str, list[FloatArray]],
               windows: Mapping[str, Windows], detector: Detector,
               embedders: Sequence[Embedder], *, top: int = 5,
               progress: Callable[[int], object] | None = None) -> list[PersonScores]:
    """Score every detection of every frame against every reference, per encoder.

    Returns:
        One :class:`PersonScores` per encoder and person (encoder-major order).

    Raises:
        ImageError: The video cannot be opened or has no frame.
    """
    import cv2

    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ImageError(f"{video}: cannot open as a video")
    scored: dict[tuple[int, str], list[Scored]] = {
        (i, p): [] for i in range(len(embedders)) for p in references}
    frame_index = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            image: Image = np.ascontiguousarray(bgr[:, :, ::-1], dtype=np.uint8)
            for face in detector.detect(image):
                for i, embedder in enumerate(embedders):
                    vector = embed_face(image, face, embedder)
                    if vector is None:
                        continue
                    for person, refs in references.items():
                        scored[(i, person)].append(Scored(
                            frame_index, round(float(face.box[2])), float(vector @ refs[i]),
                            _inside(frame_index, windows.get(person, ()))))
            frame_index += 1
            if progress is not None:
                progress(1)
    finally:
        capture.release()
    if frame_index == 0:
        raise ImageError(f"{video}: no frame could be read")
    results = []
    for i, embedder in enumerate(embedders):
        for person in references:
            rows = scored[(i, person)]
            inside = [r.score for r in rows if r.in_window]
            outside = [r.score for r in rows if not r.in_window]
            results.append(PersonScores(
                model_id=embedder.model_id, person=person, in_window=len(inside),
                best_in_window=max(inside) if inside else None,
                best_outside=max(outside) if outside else None,
                top=tuple(sorted(rows, key=lambda r: -r.score)[:top])))
    return results


def frame_count(video: Path) -> int:
    """The container's frame count (0 when it does not say)."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    try:
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    finally:
        capture.release()

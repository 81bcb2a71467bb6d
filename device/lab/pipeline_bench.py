"""``facegate bench pipeline``: the service's frame loop on a video file, and the
``face_recognition`` library on the same frames, in the same run.

Ours is the service's own code path (:class:`~device.service.stages.FrameProcessor`)
fed the way the service feeds it: a capture thread decodes the file into a bounded
:class:`~device.service.queue.PipelineQueue` (``block`` policy, so every frame is
processed) and one inference thread takes frames from it. Sustained fps is frames
processed over the wall time from the first frame taken to the last one finished, so
decoding counts whenever it is the bottleneck. Decisions are taken but not published
(no broker, no outbox, no audit log): those cost a few milliseconds per *match*, not
per frame. With no gallery every track is unknown, so each uses its whole embedding
budget — the most embedder work a clip can cause.

The baseline is what the library's users do on every frame: ``face_locations`` (HOG,
one upsampling, its default) and ``face_encodings`` of every face found, after
decoding the frame with OpenCV. HOG takes a few hundred milliseconds a frame, so by
default it runs on a sample of the clip's frames spread evenly over it.
"""

from __future__ import annotations

import importlib
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from device.camera import CameraRunner, VideoSource, VideoSourceConfig
from device.errors import CameraError, DeviceError
from device.service.gallery import open_gallery
from device.service.queue import PipelineQueue
from device.service.stages import STAGES, FrameProcessor, Match
from device.service.stats import LatencyStats, Percentiles
from device.vision.detect import Detector
from device.vision.embed import Embedder
from device.vision.quality import QualityConfig
from device.vision.track import TrackerConfig

logger = logging.getLogger(__name__)

#: The targets: our fps over the library's, and our fps with two threads.
RATIO_FLOOR = 10.0
FPS_FLOOR = 60.0


@dataclass(frozen=True)
class PipelineRun:
    """Our pipeline over the clip.

    Attributes:
        frames: Frames processed.
        seconds: Wall time from the first frame taken to the last one finished.
        faces: Faces detected over the clip.
        embedded: Faces embedded.
        matches: Identity announcements (with a gallery).
        stages: Per-stage latency (ms) per frame; ``total`` is the whole frame.
    """

    frames: int
    seconds: float
    faces: int
    embedded: int
    matches: int
    stages: dict[str, Percentiles]

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class BaselineRun:
    """The ``face_recognition`` library on a sample of the same frames.

    Attributes:
        frames: Frames processed.
        seconds: Time spent on them (decode, HOG, encodings).
        faces: Faces it found (and encoded).
        per_frame_ms: Percentiles of the time per frame.
    """

    frames: int
    seconds: float
    faces: int
    per_frame_ms: Percentiles

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def run_pipeline(
    source: Path,
    detector: Detector,
    embedder: Embedder,
    *,
    gallery: Path | None = None,
    threshold: float = 1.0,
    quality: QualityConfig | None = None,
    tracking: TrackerConfig | None = None,
    max_embeddings_per_track: int = 8,
    min_quality_gain: float = 0.02,
    queue_size: int = 4,
) -> PipelineRun:
    """Decode ``source`` on a capture thread and run the frame loop on this one.

    Raises:
        CameraError: The video cannot be opened or holds no frame.
        GalleryError: The gallery cannot be loaded.
    """
    probe = embedder.embed([_grey_chip(embedder)])  # warm-up, and the embedding size
    dim = int(probe[0].vector.shape[0])
    live = open_gallery(gallery, model_id=embedder.model_id, dim=dim)
    processor = FrameProcessor(
        detector, embedder, live, threshold=threshold, quality=quality, tracking=tracking,
        max_embeddings_per_track=max_embeddings_per_track, min_quality_gain=min_quality_gain,
    )
    warm = VideoSource(VideoSourceConfig(camera_id="bench", path=source))
    with warm:  # the first frame warms the detector up (XNNPACK packs weights on first run)
        first = next(iter(warm), None)
    if first is None:
        raise CameraError(f"{source}: no decodable video frames")
    detector.detect(first.image)

    frames = PipelineQueue(queue_size, "block")
    latency = LatencyStats(100_000)
    runner = CameraRunner([VideoSource(VideoSourceConfig(camera_id="bench", path=source))],
                          frames)
    count = faces = embedded = matches = 0
    started: float | None = None
    finished = time.perf_counter()
    try:
        runner.start()
        while True:
            try:
                frame, _ = frames.get_stamped(timeout=0.05)
            except queue.Empty:
                if runner.finished and not len(frames):
                    break
                continue
            begin = time.perf_counter()
            if started is None:
                started = begin
            result = processor.process(frame)
            latency.add_many(result.laps)
            finished = time.perf_counter()
            latency.add("total", (finished - begin) * 1000.0)
            count += 1
            faces += result.faces
            embedded += result.embedded
            matches += sum(1 for o in result.outcomes if isinstance(o, Match))
    finally:
        frames.close()
        runner.stop()
        live.close()
    failure = runner.failures().get("bench")
    if failure is not None:
        raise CameraError(f"{source}: {failure}")
    summary = latency.summary()
    ordered = {name: summary[name] for name in (*STAGES, "total") if name in summary}
    return PipelineRun(count, finished - (started or finished), faces, embedded, matches,
                       ordered)


def _grey_chip(embedder: Embedder) -> Any:
    from device.types import FaceChip

    width, height = embedder.input_size
    return FaceChip(image=np.full((height, width, 3), 128, dtype=np.uint8), detection=None,
                    transform=np.zeros((2, 3), dtype=np.float32))


def sample_indices(total: int, count: int | None) -> list[int]:
    """``count`` frame indices spread evenly over ``total`` frames (all when None)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)})


def run_baseline(
    source: Path, frames: int | None = 30, *, upsample: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> BaselineRun:
    """``face_recognition`` (HOG + encodings of every face) on a sample of the frames.

    Args:
        source: The video file.
        frames: Frames to time, spread evenly over the clip (None: every frame).
        upsample: HOG's ``number_of_times_to_upsample`` (the library's default is 1).
        progress: Called with ``(done, total)`` after each timed frame.

    Raises:
        DeviceError: ``face_recognition`` (or dlib) is not installed.
        CameraError: The video cannot be read.
    """
    try:
        fr = importlib.import_module("face_recognition")
    except ImportError as exc:
        raise DeviceError(
            "face_recognition is not installed (pip install --no-deps face_recognition==1.3.0 "
            f"dlib-bin): {exc}"
        ) from exc
    cap = cv2.VideoCapture(str(source), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise CameraError(f"{source}: not a video OpenCV/FFmpeg can open")
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
        wanted = set(sample_indices(total, frames)) if total else None
        # Warm-up outside the timing: dlib loads its models on import, HOG has no state.
        times: list[float] = []
        found = 0
        index = 0
        while True:
            take = wanted is None or index in wanted
            begin = time.perf_counter()
            if take:
                ok, bgr = cap.read()
            else:
                ok = cap.grab()
                bgr = None
            if not ok:
                break
            if take and bgr is not None:
                rgb = np.ascontiguousarray(np.asarray(bgr)[:, :, ::-1])
                locations = fr.face_locations(rgb, number_of_times_to_upsample=upsample,
                                              model="hog")
                encodings = fr.face_encodings(rgb, locations)
                found += len(encodings)
                times.append((time.perf_counter() - begin) * 1000.0)
                if progress is not None:
                    progress(len(times), len(wanted) if wanted is not None else total)
            index += 1
    finally:
        cap.release()
    if not times:
        raise CameraError(f"{source}: no decodable video frames")
    values = np.asarray(times)
    p50, p95 = np.percentile(values, [50, 95])
    stats = Percentiles(len(times), float(p50), float(p95), float(values.mean()),
                        float(values.max()))
    return BaselineRun(len(times), float(values.sum()) / 1000.0, found, stats)


def report_rows(ours: PipelineRun, theirs: BaselineRun | None) -> list[tuple[str, str, str]]:
    """``(measure, facegate, face_recognition)`` rows for the side-by-side table."""
    rows = [
        ("frames", str(ours.frames), str(theirs.frames) if theirs else "-"),
        ("sustained fps", f"{ours.fps:.1f}", f"{theirs.fps:.2f}" if theirs else "-"),
        ("ms per frame p50", f"{ours.stages['total'].p50:.2f}" if "total" in ours.stages
         else "-", f"{theirs.per_frame_ms.p50:.1f}" if theirs else "-"),
        ("ms per frame p95", f"{ours.stages['total'].p95:.2f}" if "total" in ours.stages
         else "-", f"{theirs.per_frame_ms.p95:.1f}" if theirs else "-"),
        ("faces found", str(ours.faces), str(theirs.faces) if theirs else "-"),
        ("faces embedded", str(ours.embedded), str(theirs.faces) if theirs else "-"),
    ]
    return rows


def verdicts(ours: PipelineRun, theirs: BaselineRun | None, threads: int) -> list[str]:
    """One line per floor: measured value, floor, met or missed."""
    out = []
    if theirs is not None and theirs.fps > 0:
        ratio = ours.fps / theirs.fps
        met = "meets" if ratio >= RATIO_FLOOR else "MISSES"
        out.append(f"facegate / face_recognition = {ratio:.1f}x ({met} the "
                   f"{RATIO_FLOOR:.0f}x floor)")
    if threads == 2:
        out.append(f"{ours.fps:.1f} fps with 2 threads "
                   f"({'meets' if ours.fps >= FPS_FLOOR else 'MISSES'} the {FPS_FLOOR:.0f} fps "
                   "floor)")
    return out


__all__ = [
    "FPS_FLOOR",
    "RATIO_FLOOR",
    "BaselineRun",
    "PipelineRun",
    "report_rows",
    "run_baseline",
    "run_pipeline",
    "sample_indices",
    "verdicts",
]

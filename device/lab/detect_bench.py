"""The detection benchmark: per-stage latency percentiles on synthetic camera frames.

Frames are built from real photos (:func:`device.vision.samples.synthetic_frame`)
at each resolution, written once as JPEG, and every run decodes that file
(``decode``), letterboxes and normalises (``preprocess``), runs the model
(``inference``) and decodes, maps and suppresses (``postprocess``). In tiled mode
a stage's time is the sum over the whole-frame pass and every tile. Figures are
wall-clock on a machine shared with whatever else runs: a measurement, not a test.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from device.imageio import read_image
from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
from device.vision.samples import synthetic_frame
from device.vision.tiling import TilingConfig, plan_tiles
from device.vision.timing import StageTimer

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("decode", "preprocess", "inference", "postprocess", "total")
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((640, 360), (1280, 720), (1920, 1080))
DEFAULT_THREADS: tuple[int, ...] = (1, 2)


@dataclass(frozen=True, slots=True)
class BenchCase:
    """One benchmark configuration."""

    width: int
    height: int
    threads: int
    tiled: bool
    #: With ``tiled``: the smallest face (frame pixels) the tiles must make detectable.
    min_face: int = 40


@dataclass(frozen=True, slots=True)
class BenchResult:
    """Percentiles of one case.

    Attributes:
        case: What was measured.
        model: ``full`` or ``short``.
        runs: Timed runs (after warm-up).
        faces: Faces found in the frame (last run).
        passes: Model invocations per frame (1 + tiles).
        p50: Median milliseconds per stage (and ``total``).
        p95: 95th-percentile milliseconds per stage (and ``total``).
    """

    case: BenchCase
    model: str
    runs: int
    faces: int
    passes: int
    p50: dict[str, float]
    p95: dict[str, float]

    def to_json(self) -> dict[str, object]:
        return {
            "frame": f"{self.case.width}x{self.case.height}",
            "threads": self.case.threads,
            "tiled": self.case.tiled,
            "min_face": self.case.min_face if self.case.tiled else None,
            "model": self.model,
            "runs": self.runs,
            "faces": self.faces,
            "passes": self.passes,
            "ms": {s: {"p50": round(self.p50[s], 2), "p95": round(self.p95[s], 2)}
                   for s in STAGES},
        }


def default_cases(
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    threads: Sequence[int] = DEFAULT_THREADS,
    tiled_sizes: Sequence[tuple[int, int]] = ((1920, 1080),),
    min_face: int = 40,
) -> list[BenchCase]:
    """Every size at every thread count, plus tiled (down to ``min_face`` px) at each
    of ``tiled_sizes``."""
    cases = [BenchCase(w, h, t, False) for t in threads for (w, h) in sizes]
    cases += [BenchCase(w, h, t, True, min_face) for t in threads for (w, h) in tiled_sizes]
    return cases


def run_case(
    case: BenchCase, model: str, runs: int, warmup: int, workdir: Path
) -> BenchResult:
    """Measure one case.

    Raises:
        ModelError: The model cannot be loaded or run.
    """
    config = BlazeFaceConfig(
        model=model, num_threads=case.threads,
        tiling=TilingConfig(enabled=case.tiled, min_face=case.min_face),
    )
    path = workdir / f"frame-{case.width}x{case.height}.jpg"
    if not path.exists():
        PILImage.fromarray(synthetic_frame(case.width, case.height)).save(path, quality=90)
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    faces = 0
    with BlazeFaceDetector(config) as detector:
        size = max(detector.input_size)
        passes = 1 + (len(plan_tiles(case.width, case.height, size, config.tiling))
                      if case.tiled else 0)
        for k in range(warmup + runs):
            timer = StageTimer()
            start = time.perf_counter()
            with timer.stage("decode"):
                image = read_image(path)
            found = detector.detect(image, timer)
            total = (time.perf_counter() - start) * 1000.0
            if k >= warmup:
                for stage in STAGES[:-1]:
                    samples[stage].append(timer.ms.get(stage, 0.0))
                samples["total"].append(total)
            faces = len(found)
    p50 = {s: float(np.percentile(v, 50)) for s, v in samples.items()}
    p95 = {s: float(np.percentile(v, 95)) for s, v in samples.items()}
    logger.info("bench %s: total p50 %.1f ms", case, p50["total"])
    return BenchResult(case, model, runs, faces, passes, p50, p95)


def run_bench(
    cases: Sequence[BenchCase],
    model: str = "full",
    runs: int = 30,
    warmup: int = 3,
    progress: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """Measure every case in order; ``progress`` is called after each.

    Raises:
        ModelError: The model cannot be loaded or run.
    """
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory(prefix="facegate-bench-") as tmp:
        for case in cases:
            result = run_case(case, model, runs, warmup, Path(tmp))
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def format_table(results: Sequence[BenchResult]) -> list[str]:
    """A fixed-width text table: one row per case, ``p50/p95`` ms per stage."""
    header = f"{'frame':<10} {'thr':>3} {'tiled':<9} {'pass':>4} {'faces':>5}  " + "  ".join(
        f"{s:>15}" for s in STAGES
    )
    lines = [header, "-" * len(header)]
    for r in results:
        cells = "  ".join(f"{r.p50[s]:>7.1f}/{r.p95[s]:<7.1f}" for s in STAGES)
        frame = f"{r.case.width}x{r.case.height}"
        tiled = f"{r.case.min_face} px" if r.case.tiled else "no"
        lines.append(
            f"{frame:<10} {r.case.threads:>3} "
            f"{tiled:<9} {r.passes:>4} {r.faces:>5}  {cells}"
        )
    lines.append("milliseconds, p50/p95 per frame; tiled: down to faces of that width, "
                 "stages summed over every pass")
    return lines

"""``facegate detect`` and ``facegate bench detect``: find faces in still images."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from PIL import Image as PILImage

from device.cli.common import emit_json, handle_errors, json_option, progress
from device.errors import ImageError
from device.imageio import IMAGE_SUFFIXES, iter_image_files, read_image
from device.types import Detection, Image
from device.vision import samples
from device.vision.annotate import draw_detections
from device.vision.blazeface import DEFAULT_THRESHOLD, BlazeFaceConfig, BlazeFaceDetector
from device.vision.tiling import TilingConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Input:
    """One image to process: a file, or the built-in sample when ``path`` is None."""

    label: str
    path: Path | None


def _collect(paths: tuple[Path, ...]) -> tuple[list[_Input], list[str]]:
    """Expand folders; return the inputs and the errors for paths that are unusable."""
    if not paths:
        return [_Input(samples.ASTRONAUT_LABEL, None)], []
    inputs: list[_Input] = []
    errors: list[str] = []
    for path in paths:
        if path.is_dir():
            found = iter_image_files(path)
            if not found:
                errors.append(f"{path}: folder holds no image files "
                              f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            inputs += [_Input(str(p), p) for p in found]
        elif path.exists():
            inputs.append(_Input(str(path), path))
        else:
            errors.append(f"{path}: no such file or directory")
    return inputs, errors


def _annotation_target(out: Path, item: _Input, single: bool, taken: set[Path]) -> Path:
    """Where to write the annotated copy of ``item``: ``out`` itself for a single
    input (unless it is a directory), otherwise ``out/<stem>-faces.<ext>``."""
    if single and not out.is_dir():
        return out
    stem = item.path.stem if item.path is not None else "astronaut"
    suffix = item.path.suffix.lower() if item.path is not None else ".jpg"
    suffix = suffix if suffix in {".jpg", ".jpeg", ".png", ".bmp", ".webp"} else ".png"
    target = out / f"{stem}-faces{suffix}"
    n = 2
    while target in taken:
        target = out / f"{stem}-faces-{n}{suffix}"
        n += 1
    return target


def _write_annotated(image: Image, faces: list[Detection], target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(draw_detections(image, faces)).save(target)
    except (OSError, ValueError) as exc:  # PIL: ValueError for an unknown extension
        raise ImageError(f"{target}: cannot write the annotated image: {exc}") from exc


def _print_text(item: _Input, width: int, height: int, faces: list[Detection]) -> None:
    noun = "face" if len(faces) == 1 else "faces"
    click.echo(f"{item.label}: {width}x{height}, {len(faces)} {noun}")
    for k, face in enumerate(faces, 1):
        box = ", ".join(f"{v:.1f}" for v in face.box)
        kps = " ".join(f"({x:.1f}, {y:.1f})" for x, y in face.keypoints)
        click.echo(f"  {k}. box [{box}] score {face.score:.3f}"
                   + (f" keypoints {kps}" if kps else ""))


@click.command("detect")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@json_option
@click.option("--model", type=click.Choice(["full", "short"]), default="full", show_default=True,
              help="BlazeFace full-range (192 px, faces up to ~5 m) or short-range (128 px).")
@click.option("--tile", is_flag=True,
              help="Also scan overlapping tiles, to find small faces in large images.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=DEFAULT_THRESHOLD,
              show_default=True, help="Minimum face score.")
@click.option("--annotate", "annotate", type=click.Path(path_type=Path), default=None,
              help="Write images with faces drawn: a file for one input, else a folder.")
@click.option("--threads", type=click.IntRange(1, 16), default=2, show_default=True,
              help="CPU threads for the model.")
@handle_errors
def detect(paths: tuple[Path, ...], as_json: bool, model: str, tile: bool, threshold: float,
           annotate: Path | None, threads: int) -> None:
    """Find faces in images: box [x, y, w, h] in pixels, score and keypoints.

    PATH may be image files or folders (searched recursively). Without PATH, the
    astronaut portrait that ships with scikit-image is used, so
    `facegate detect --annotate astronaut-faces.jpg` works on a fresh machine.
    A bad image prints `error: <path>: reason`; the others are still processed
    and the exit status is 1 at the end.
    """
    inputs, errors = _collect(paths)
    for message in errors:
        click.echo(f"error: {message}", err=True)
    single = len(inputs) == 1 and not errors and not any(p.is_dir() for p in paths)
    if annotate is not None and not single and annotate.exists() and not annotate.is_dir():
        raise click.UsageError(
            f"--annotate {annotate}: several images need a folder, and this is a file"
        )
    failed = len(errors)
    config = BlazeFaceConfig(model=model, threshold=threshold, num_threads=threads,
                             tiling=TilingConfig(enabled=tile))
    taken: set[Path] = set()
    with BlazeFaceDetector(config) as detector, \
            progress(len(inputs), "detecting", as_json=as_json) as advance:
        for item in inputs:
            advance(1)
            try:
                image = read_image(item.path) if item.path is not None else samples.astronaut()
                faces = detector.detect(image)
                height, width = image.shape[:2]
                if annotate is not None:
                    target = _annotation_target(annotate, item, single, taken)
                    _write_annotated(image, faces, target)
                    taken.add(target)
            except ImageError as exc:
                click.echo(f"error: {exc}", err=True)
                failed += 1
                continue
            if as_json:
                emit_json({"image": item.label, "width": width, "height": height,
                           "faces": [f.to_json() for f in faces]})
            else:
                with advance.printing():
                    _print_text(item, width, height, faces)
    if failed:
        logger.info("%d of %d inputs failed", failed, len(inputs) + len(errors))
        sys.exit(1)


def _frame_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or not (
            16 <= int(width) <= 8192 and 16 <= int(height) <= 8192):
        raise click.BadParameter(f"{text!r}: expected WxH, e.g. 640x360 (16-8192 each)")
    return int(width), int(height)


@click.command("detect")
@json_option
@click.option("--model", type=click.Choice(["full", "short"]), default="full", show_default=True)
@click.option("--runs", type=click.IntRange(1, 10_000), default=30, show_default=True,
              help="Timed runs per case (after warm-up).")
@click.option("--warmup", type=click.IntRange(0, 100), default=3, show_default=True)
@click.option("--threads", "threads", multiple=True, type=click.IntRange(1, 16),
              help="Thread counts to measure (repeatable; default 1 and 2).")
@click.option("--tiled-size", "tiled_sizes", multiple=True, metavar="WxH",
              callback=lambda _c, _p, v: tuple(_frame_size(x) for x in v),
              help="Frame size of the tiled cases (repeatable; default 1920x1080).")
@click.option("--tiled-min-face", type=click.IntRange(8, 1000), default=40, show_default=True,
              help="Smallest face (frame pixels) the tiled cases must make detectable "
                   "([detector.tiling] min_face).")
@handle_errors
def bench_detect(as_json: bool, model: str, runs: int, warmup: int,
                 threads: tuple[int, ...], tiled_sizes: tuple[tuple[int, int], ...],
                 tiled_min_face: int) -> None:
    """Face detection latency per stage (decode, preprocess, inference, postprocess).

    Synthetic frames built from real photos at 640x360, 1280x720 and 1920x1080,
    each at 1 and 2 threads, plus tiled at 1920x1080 (or each --tiled-size);
    p50/p95 milliseconds.
    """
    from device.lab import detect_bench

    cases = detect_bench.default_cases(threads=threads or detect_bench.DEFAULT_THREADS,
                                       tiled_sizes=tiled_sizes or ((1920, 1080),),
                                       min_face=tiled_min_face)
    if not as_json:
        click.echo(f"BlazeFace {model}, {runs} runs per case after {warmup} warm-up", err=True)
    results = detect_bench.run_bench(
        cases, model=model, runs=runs, warmup=warmup,
        progress=None if as_json else lambda r: click.echo(
            f"  measured {r.case.width}x{r.case.height} threads={r.case.threads} "
            f"tiled={r.case.min_face if r.case.tiled else 'no'}", err=True),
    )
    if as_json:
        emit_json({"bench": "detect", "results": [r.to_json() for r in results]})
        return
    for line in detect_bench.format_table(results):
        click.echo(line)

"""``facegate bench pipeline``: the service's frame loop vs the face_recognition library."""

from __future__ import annotations

import os
from pathlib import Path

import click

from device.cli.common import emit_json, handle_errors, json_option


@click.command("pipeline")
@click.option("--source", required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Video file to replay (every frame is processed).")
@click.option("--threads", default=2, show_default=True,
              help="CPU threads for the detector and embedder interpreters.")
@click.option("--gallery", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Gallery to search (default none: every track is unknown and uses its "
              "whole embedding budget, the most embedder work).")
@click.option("--threshold", type=float, default=None,
              help="Similarity threshold with --gallery (matched tracks stop embedding).")
@click.option("--baseline-frames", default="30", show_default=True,
              help="Frames the face_recognition library is timed on, spread over the clip; "
              "'all' for every frame, 0 to skip it.")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Model cache holding the built dlib-resnet-v1.")
@json_option
@handle_errors
def bench_pipeline(source: Path, threads: int, gallery: Path | None, threshold: float | None,
                   baseline_frames: str, model_dir: Path | None, as_json: bool) -> None:
    """Sustained fps and per-stage latency of the frame loop on a video, beside the
    face_recognition library's fps (HOG + encodings of every face) on the same frames.

    Targets: at least 10x the library, and at least 60 fps with 2 threads.
    Numbers depend on the machine's load; run it when the machine is otherwise idle.
    """
    from device.lab.pipeline_bench import report_rows, run_baseline, run_pipeline, verdicts
    from device.vision.blazeface import BlazeFaceConfig
    from device.vision.detect import create_detector
    from device.vision.dlib_tflite import DlibTFLiteEmbedderConfig
    from device.vision.embed import create_embedder

    sample: int | None = None if baseline_frames == "all" else int(baseline_frames)
    detector = create_detector(BlazeFaceConfig(num_threads=threads), cache_dir=model_dir)
    embedder = create_embedder(DlibTFLiteEmbedderConfig(num_threads=threads),
                               cache_dir=model_dir)
    try:
        ours = run_pipeline(source, detector, embedder, gallery=gallery,
                            threshold=1.0 if threshold is None else threshold)
    finally:
        detector.close()
        embedder.close()
    theirs = None if sample == 0 else run_baseline(source, sample)
    load = os.getloadavg()[0]
    if as_json:
        emit_json({
            "source": str(source),
            "threads": threads,
            "load_average_1m": round(load, 2),
            "facegate": {
                "frames": ours.frames, "seconds": round(ours.seconds, 3),
                "fps": round(ours.fps, 2), "faces": ours.faces, "embedded": ours.embedded,
                "matches": ours.matches,
                "stages": {k: v.to_json() for k, v in ours.stages.items()},
            },
            "face_recognition": None if theirs is None else {
                "frames": theirs.frames, "seconds": round(theirs.seconds, 3),
                "fps": round(theirs.fps, 3), "faces": theirs.faces,
                "per_frame": theirs.per_frame_ms.to_json(),
            },
            "ratio": None if theirs is None or theirs.fps == 0 else round(ours.fps / theirs.fps, 2),
            "verdicts": verdicts(ours, theirs, threads),
        })
        return
    click.echo(f"{source.name}: {ours.frames} frames, {threads} thread(s), load average "
               f"{load:.2f} (1 min)")
    click.echo(f"{'':<20} {'facegate':>12} {'face_recognition':>18}")
    for name, mine, lib in report_rows(ours, theirs):
        click.echo(f"{name:<20} {mine:>12} {lib:>18}")
    click.echo("")
    click.echo(f"{'stage (facegate)':<20} {'p50 ms':>8} {'p95 ms':>8} {'runs':>6}")
    for name, stats in ours.stages.items():
        click.echo(f"{name:<20} {stats.p50:>8.2f} {stats.p95:>8.2f} {stats.count:>6}")
    click.echo("")
    for line in verdicts(ours, theirs, threads):
        click.echo(line)

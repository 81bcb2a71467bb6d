"""``facegate identify``: who is in a photo, according to the local gallery.

For every face (or only the largest): the best gallery identities with their
similarity, the calibrated *FMR at this similarity*, and the decision — ``match`` when
the best similarity reaches the threshold (whose own *threshold FMR* the header
prints), else ``unknown``. The threshold comes from ``--target-fmr`` or ``--threshold``
exactly as the service resolves ``[gallery]`` (:mod:`device.service.thresholds`).
Probe embeddings are never written anywhere.
"""

from __future__ import annotations

from pathlib import Path

import click

from device.cli.common import emit_json, error_line, handle_errors, json_option, progress
from device.cli.face_tools import (
    load_threshold,
    open_embedder,
    open_finder,
    target_fmr_option,
    threads_option,
    threshold_fmr_option,
    threshold_option,
    unsafe_option,
)
from device.cli.gallery_cmd import db_option, gallery_path
from device.enroll.identify import FaceIdentification, GallerySearcher, identify_image
from device.errors import ImageError
from device.gallery.store import GalleryStore
from device.imageio import read_image
from device.service.thresholds import Threshold, ThresholdPolicy, fmr_text


def threshold_text(threshold: Threshold) -> str:
    """``0.9139 (threshold FMR 1.0e-04, …)``: the threshold and its own FMR."""
    origin = (f"target {threshold.target_fmr:g}" if threshold.target_fmr is not None
              else "explicit")
    table = (f", table {threshold.table_file.name}" if threshold.table_file is not None
             else "")
    return (f"{threshold.value:.4f} (threshold FMR {threshold.fmr:.1e}, {origin}"
            f"{', UNSAFE' if threshold.unsafe else ''}{table})")


def _print(path: Path, faces: list[FaceIdentification]) -> None:
    click.echo(f"{path}: {len(faces)} face{'s' if len(faces) != 1 else ''}")
    for n, face in enumerate(faces, 1):
        box = ", ".join(f"{v:.0f}" for v in face.box)
        result = face.result
        best = result.match
        head = (f"MATCH {best.label} ({best.identity_id})" if best is not None
                else "unknown")
        quality = f"  [quality: {', '.join(face.quality_reasons)}]" if face.quality_reasons else ""
        click.echo(f"  face {n} [{box}]: {head}{quality}")
        for rank, c in enumerate(result.candidates, 1):
            click.echo(f"    {rank}. {c.label:<24} {c.identity_id:<18} similarity "
                       f"{c.similarity:.4f}  FMR at this similarity "
                       f"{fmr_text(c.fmr_at_similarity, c.fmr_upper_bound)}")


@click.command("identify")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top", "-k", "top", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Candidates per face.")
@click.option("--largest", is_flag=True, help="Only the largest face of each photo.")
@target_fmr_option
@threshold_option
@threshold_fmr_option
@unsafe_option
@threads_option
@db_option
@json_option
@handle_errors
def identify(images: tuple[Path, ...], top: int, largest: bool, target_fmr: float,
             explicit_threshold: float | None, threshold_fmr: float | None,
             allow_unsafe_threshold: bool, threads: int, db_path: Path | None,
             as_json: bool) -> None:
    """Search the gallery for every face in IMAGES.

    Faces are found as in `eval pairs` (BlazeFace full-range, a zoomed-out
    short-range retry for tight crops, keypoint refinement). Prints candidates with
    similarity and the FMR at this similarity, and the decision (match or unknown)
    at the threshold, derived from --target-fmr through the model's calibration table
    or given by --threshold, as the service does with [gallery]; the header prints the
    threshold FMR. With --json, one JSON document per image. Exit status 1 if an image
    cannot be read.
    """
    if threshold_fmr is not None and explicit_threshold is None:
        raise click.UsageError("--threshold-fmr goes with --threshold")
    path = gallery_path(db_path)
    failed = False
    policy = ThresholdPolicy(target_fmr=target_fmr, threshold=explicit_threshold,
                             threshold_fmr=threshold_fmr, allow_unsafe=allow_unsafe_threshold)
    with GalleryStore(path, read_only=True) as store:
        threshold = load_threshold(store.model_id, policy)
        with GallerySearcher(store, threshold) as searcher, \
                open_finder(threads) as detector, \
                open_embedder(store.model_id, threads) as embedder:
            loaded = searcher.current()
            if not as_json:
                click.echo(f"gallery {path}: {loaded.identities} identities, {loaded.faces} "
                           f"faces; threshold {threshold_text(threshold)}; "
                           f"expected false-positive identification rate "
                           f"{loaded.expected_fpir:.1e}")
            with progress(len(images), "identifying", as_json=as_json) as advance:
                for image_path in images:
                    advance(1)
                    try:
                        image = read_image(image_path)
                    except ImageError as exc:
                        with advance.printing():
                            click.echo(error_line(exc), err=True)
                        failed = True
                        continue
                    faces = identify_image(image, detector, embedder, searcher, k=top,
                                           all_faces=not largest)
                    if as_json:
                        emit_json({
                            "image": str(image_path), "gallery": str(path),
                            "gallery_revision": loaded.revision, "threshold": threshold.to_json(),
                            "expected_fpir": loaded.expected_fpir,
                            "faces": [f.to_json() for f in faces],
                        })
                    else:
                        with advance.printing():
                            _print(image_path, faces)
    if failed:
        raise SystemExit(1)

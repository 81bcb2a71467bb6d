"""``facegate embed``: the face embedding of images (largest face, or every face)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from device.cli.common import emit_json, error_line, handle_errors, json_option, progress
from device.errors import ImageError
from device.imageio import IMAGE_SUFFIXES, iter_image_files, read_image

logger = logging.getLogger(__name__)


def _inputs(paths: tuple[Path, ...]) -> tuple[list[Path], list[str]]:
    """Files to embed (folders walked recursively) and errors for unusable paths."""
    files: list[Path] = []
    errors: list[str] = []
    for path in paths:
        if path.is_dir():
            found = iter_image_files(path)
            if not found:
                errors.append(
                    f"{path}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            files += found
        elif path.exists():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or directory")
    return files, errors


def _record(image: str, model: str, box: Any, vector: Any) -> dict[str, Any]:
    return {
        "image": image,
        "model": model,
        "box": None if box is None else [round(float(v), 2) for v in box],
        "embedding": None if vector is None else [round(float(v), 7) for v in vector],
    }


@click.command("embed")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@click.option("--all", "all_faces", is_flag=True,
              help="Embed every face (largest first), not only the largest.")
@click.option("--fallback-whole", is_flag=True,
              help="When no face is found, embed the whole image as the face (tight crops).")
@click.option("--threads", type=click.IntRange(1, 16), default=2, show_default=True,
              help="CPU threads per model.")
@click.option("--no-flip", is_flag=True, help="Do not average with the mirrored face.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Model cache holding the built dlib-resnet-v1 (`facegate models build`).")
@handle_errors
def embed(paths: tuple[Path, ...], as_json: bool, all_faces: bool, fallback_whole: bool,
          threads: int, no_flip: bool, cache_dir: Path | None) -> None:
    """Embed the largest face (or, with --all, every face) of each image.

    PATH may be image files or folders (walked recursively). With --json, one object
    per line: {"image", "model", "box": [x, y, w, h] | null, "embedding": [...] | null}
    (box and embedding are null when no face was found; with --all, one line per
    face). The embedding is L2-normalised: the cosine similarity of two faces is the
    dot product. A bad image prints `error: <path>: reason` on stderr; the others are
    still processed and the exit status is 1 at the end.
    """
    from device.vision.dlib_tflite import DlibTFLiteEmbedder, DlibTFLiteEmbedderConfig
    from device.vision.stills import StillFaceFinder, StillFinderConfig, embed_faces

    files, errors = _inputs(paths)
    for message in errors:
        click.echo(f"error: {message}", err=True)
    failed = len(errors)
    config = DlibTFLiteEmbedderConfig(num_threads=threads, flip_average=not no_flip)
    with StillFaceFinder.from_config(StillFinderConfig(num_threads=threads)) as finder, \
            DlibTFLiteEmbedder(config, cache_dir=cache_dir) as embedder, \
            progress(len(files), "embedding", as_json=as_json) as advance:
        for path in files:
            advance(1)
            try:
                image = read_image(path)
            except ImageError as exc:
                with advance.printing():
                    click.echo(error_line(exc), err=True)
                failed += 1
                continue
            faces = embed_faces(image, finder, embedder, all_faces=all_faces,
                                fallback_whole=fallback_whole)
            if as_json:
                if not faces:
                    emit_json(_record(str(path), embedder.model_id, None, None))
                for face in faces:
                    emit_json(_record(str(path), embedder.model_id, face.box,
                                      face.embedding.vector))
                continue
            with advance.printing():
                if not faces:
                    click.echo(f"{path}: no face")
                for face in faces:
                    box = ", ".join(f"{v:.1f}" for v in face.box)
                    head = ", ".join(f"{v:+.4f}" for v in face.embedding.vector[:4])
                    note = " (whole image: no face found)" if face.fallback else ""
                    click.echo(f"{path}: box [{box}]{note} embedding [{head}, ...] "
                               f"({face.embedding.vector.size}-d, {embedder.model_id})")
    if failed:
        logger.info("%d of %d inputs failed", failed, len(files) + len(errors))
        sys.exit(1)

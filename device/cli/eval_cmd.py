"""``facegate eval``: accuracy on labelled photos. The group and ``eval pairs``."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from device.cli.common import emit_json, handle_errors, json_option, progress

logger = logging.getLogger(__name__)


@click.group("eval")
def eval_group() -> None:
    """Accuracy evaluations on labelled data sets: printed figures, never pass/fail."""


def _progress(total: int, label: str, as_json: bool) -> Any:
    def wrap(items: Iterable[str]) -> Iterator[str]:
        with progress(total, label, as_json=as_json) as advance:
            for item in items:
                yield item
                advance(1)

    return wrap


def _fmt_rate(value: float) -> str:
    return "   -  " if math.isnan(value) else f"{value * 100:6.2f}"


def _print_table(rows: Sequence[Any], timings: Sequence[Any]) -> None:
    from device.lab import metrics

    experiments = list(dict.fromkeys(r.experiment for r in rows))
    for experiment in experiments:
        chosen = [r for r in rows if r.experiment == experiment]
        fmrs = list(chosen[0].result.at_fmr)
        first = chosen[0].result
        click.echo(
            f"\n{experiment}: {first.genuine:,} genuine and {first.impostors:,} impostor pairs "
            f"over {chosen[0].images:,} images"
        )
        head = "".join(f" {'TAR@' + metrics.fmr_label(f):>10}" for f in fmrs)
        head += "".join(f" {'thr@' + metrics.fmr_label(f):>9}" for f in fmrs)
        click.echo(f"  {'system':<40} {'score':<9}{head} {'EER':>6} {'best acc':>8} {'no face':>7}")
        for row in chosen:
            r = row.result
            tars = "".join(f" {_fmt_rate(r.at_fmr[f].tar):>9}%" if r.at_fmr[f].resolvable
                           else f" {'-':>10}" for f in fmrs)
            thrs = "".join(f" {r.at_fmr[f].threshold:>9.4f}" if r.at_fmr[f].resolvable
                           else f" {'-':>9}" for f in fmrs)
            click.echo(
                f"  {row.system:<40} {row.score:<9}{tars}{thrs} {_fmt_rate(r.eer):>5}% "
                f"{_fmt_rate(r.best_accuracy):>7}% {row.no_face:>7}"
            )
        for f in fmrs:
            point = first.at_fmr[f]
            if not point.resolvable:
                click.echo(f"  TAR@{metrics.fmr_label(f)}: {point.reason}; needs >= "
                           f"{1 / f:.0f} impostor pairs")
    if timings:
        click.echo("\ntime per face (median; one face per image; same run, images interleaved):")
        click.echo(f"  {'system':<40} {'faces':>6} {'detect+embed ms':>16} {'embed ms':>9}")
        for t in timings:
            click.echo(f"  {t.system:<40} {t.faces:>6} {t.total_ms:>16.1f} {t.embed_ms:>9.1f}")


def _verdicts(rows: Sequence[Any], facegate: str, reference: str) -> list[dict[str, Any]]:
    """facegate's TAR against the better of the reference's scores, per experiment and FMR."""
    from device.lab import evaluation, metrics

    out = []
    for experiment in dict.fromkeys(r.experiment for r in rows):
        best = evaluation.best_reference(rows, experiment, reference)
        ours = next(r for r in rows if r.experiment == experiment and r.system == facegate)
        for fmr, tar in ours.result.at_fmr.items():
            if fmr in best and tar.resolvable:
                out.append({
                    "experiment": experiment,
                    "fmr": metrics.fmr_label(fmr),
                    "facegate_tar": round(tar.tar, 6),
                    "reference_best_tar": round(best[fmr], 6),
                    "margin": round(tar.tar - best[fmr], 6),
                    "at_least_reference": tar.tar >= best[fmr],
                })
    return out


@eval_group.command("pairs")
@click.option("--pairs", "pairs_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="CSV of fold,image_a,image_b,same (paths relative to ROOT).")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Folder the image paths are relative to.")
@click.option("--all-pairs", "all_pairs", is_flag=True,
              help="Also score every pair of images under ROOT: genuine = same folder, "
              "impostor = different folders.")
@click.option("--compare-face-recognition", "compare", is_flag=True,
              help="Run the face_recognition library (dlib HOG + dlib encoder) on the same "
              "images in the same run and print both side by side.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the ROC curves to this PNG.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Use only N of the listed pairs, spread over the file (quick looks).")
@click.option("--threads", type=click.IntRange(1, 16), default=2, show_default=True,
              help="CPU threads per model.")
@click.option("--no-flip", is_flag=True, help="Do not average with the mirrored face.")
@click.option("--no-refine", is_flag=True, help="Do not refine keypoints with a second pass.")
@click.option("--no-close-range", is_flag=True,
              help="Skip the zoomed-out short-range pass (it finds tightly cropped faces).")
@click.option("--border", type=click.Choice(["constant", "replicate"]), default=None,
              help="Override the template's border fill for chips.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Model cache (default: the standard one).")
@click.option("--embedder", "embedder_type",
              type=click.Choice(["dlib_tflite", "dlib_int8", "mobilefacenet"]),
              default="dlib_tflite", show_default=True,
              help="Embedder backend: dlib's float encoder, its int8 build, or MobileFaceNet.")
@json_option
@handle_errors
def eval_pairs(
    pairs_csv: Path | None, root: Path, all_pairs: bool, compare: bool, plot: Path | None,
    limit: int | None, threads: int, no_flip: bool, no_refine: bool, no_close_range: bool,
    border: str | None, cache_dir: Path | None, embedder_type: str, as_json: bool,
) -> None:
    """Verification accuracy on labelled pairs: TAR at FMR 1e-2 and 1e-3 with thresholds,
    EER, best accuracy and failures to detect (the whole image is then used as the face
    and counted in no_face).

    With --all-pairs, every pair of images under ROOT is scored too (TAR at FMR down to
    1e-4). With --compare-face-recognition, the face_recognition library runs on the
    same images in the same run; its descriptors are scored by Euclidean distance and
    by cosine, and facegate is compared against the better, with time per face.
    """
    from device.lab import evaluation
    from device.vision.dlib_int8 import DlibInt8EmbedderConfig
    from device.vision.dlib_tflite import DlibTFLiteEmbedderConfig
    from device.vision.embed import create_embedder
    from device.vision.mobilefacenet import MobileFaceNetEmbedderConfig
    from device.vision.stills import StillFaceFinder, StillFinderConfig

    if pairs_csv is None and not all_pairs:
        raise click.UsageError("give --pairs CSV, --all-pairs, or both")
    pairs = evaluation.read_pairs(pairs_csv, root) if pairs_csv else []
    if limit is not None and pairs:
        pairs = evaluation.subsample_pairs(pairs, limit)
    items = evaluation.identity_images(root) if all_pairs else []
    names = sorted({n for p in pairs for n in (p.a, p.b)} | {n for n, _ in items})

    finder_config = StillFinderConfig(close_range=not no_close_range, refine=not no_refine,
                                      num_threads=threads)
    config_types: dict[str, type[DlibTFLiteEmbedderConfig | DlibInt8EmbedderConfig
                                 | MobileFaceNetEmbedderConfig]] = {
        "dlib_tflite": DlibTFLiteEmbedderConfig, "dlib_int8": DlibInt8EmbedderConfig,
        "mobilefacenet": MobileFaceNetEmbedderConfig}
    embedder_config = config_types[embedder_type](
        num_threads=threads, flip_average=not no_flip, border=border)
    systems: list[Any] = []
    with StillFaceFinder.from_config(finder_config, cache_dir=cache_dir) as finder, \
            contextlib.closing(create_embedder(embedder_config, cache_dir=cache_dir)) as embedder:
        ours = evaluation.FacegateSystem(finder, embedder)
        systems.append(ours)
        if compare:
            systems.append(evaluation.FaceRecognitionSystem())
        embedded = evaluation.embed_images(
            root, names, systems, progress=_progress(len(names), "embedding", as_json),
        )
    rows: list[evaluation.Row] = []
    for result in embedded:
        scores = ["cosine"] if result.system == ours.name else ["euclidean", "cosine"]
        if pairs:
            rows += evaluation.listed_pairs_rows(result, names, pairs, scores)
        if items:
            rows += evaluation.all_pairs_rows(result, names, items, scores)
    rows.sort(key=lambda r: (r.experiment != "pairs", r.system != ours.name))
    timings = [evaluation.Timing.of(e) for e in embedded]
    verdicts = _verdicts(rows, ours.name, systems[1].name) if compare else []
    if plot is not None:
        evaluation.plot_roc(rows, plot, title=f"facegate eval pairs: {root}")

    if as_json:
        doc: dict[str, Any] = {"model": embedder.model_id, "images": len(names)}
        head = next((r for r in rows if r.system == ours.name), None)
        if head is not None:  # facegate's first experiment at the top level
            doc.update({k: v for k, v in head.to_json().items()
                        if k not in ("system", "score", "experiment")})
            doc["experiment"] = head.experiment
        doc["rows"] = [r.to_json() for r in rows]
        doc["timing"] = [t.to_json() for t in timings]
        if compare:
            doc["versus_face_recognition"] = verdicts
        if plot is not None:
            doc["plot"] = str(plot)
        emit_json(doc)
        return
    _print_table(rows, timings)
    for v in verdicts:
        mark = "OK  " if v["at_least_reference"] else "LOSS"
        click.echo(
            f"{mark} {v['experiment']:<9} TAR@{v['fmr']}: facegate {v['facegate_tar']:.4f} vs "
            f"face_recognition best {v['reference_best_tar']:.4f} ({v['margin']:+.4f})"
        )
    if plot is not None:
        click.echo(f"ROC curves written to {plot}")

"""``facegate eval conditions``: recognition per face size, head pose and data set."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from device.cli.common import emit_json, handle_errors, json_option
from device.cli.face_tools import open_embedder, open_finder, progress_bar, threads_option
from device.errors import ConfigError
from device.vision.dlib_tflite import DLIB_MODEL_ID


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 100:.2f}%"


def _subset(root: Path, identities: int | None, per_identity: int | None
            ) -> tuple[list[str], list[str]]:
    from device.lab.openset import list_tree

    rel, labels = list_tree(root, identities)
    if per_identity is None:
        return rel, labels
    seen: dict[str, int] = {}
    out_rel, out_labels = [], []
    for r, lab in zip(rel, labels, strict=True):
        seen[lab] = seen.get(lab, 0) + 1
        if seen[lab] <= per_identity:
            out_rel.append(r)
            out_labels.append(lab)
    return out_rel, out_labels


def _shipped_thresholds(model_id: str, fmrs: Sequence[float]) -> dict[float, float]:
    """Target FMR -> the threshold the shipped table gives ``model_id`` there.

    Raises:
        ConfigError: No table for that embedder, or a target it cannot resolve.
    """
    from device.service.thresholds import ThresholdPolicy, resolve_threshold

    out = {}
    for fmr in fmrs:
        try:
            out[fmr] = resolve_threshold(model_id, ThresholdPolicy(target_fmr=fmr)).value
        except ConfigError as exc:
            raise ConfigError(f"embedder {model_id}: {exc}") from exc
    return out


def _print_table(table: dict[str, Any]) -> None:
    click.echo(f"\n== {table['model_id']} on {table['root']}: {table['photos']} photos with a "
               f"face ({table['no_native_face']} without, {table['unreadable']} unreadable; "
               f"{table['identities']} identities{table['subset']})")
    click.echo(f"face size (re-rendered on a black {table['canvas']} canvas, service detector"
               f" {table['detector']}); all-pairs TAR at FMR 1e-3, failures to detect count "
               "as rejects:")
    click.echo(f"  {'size':>6} {'TAR':>8} {'thr':>7} {'no face':>8} {'upscaled':>8} "
               f"{'genuine':>8} {'impostor':>10}")
    for r in table["size"]:
        thr = "-" if r["threshold"] is None else f"{r['threshold']:.4f}"
        tar = _pct(r["tar"]) if r["resolvable"] else "not resolvable"
        click.echo(f"  {r['name']:>6} {tar:>8} {thr:>7} {r['failures_to_detect']:>8} "
                   f"{r['upscaled']:>8} {r['genuine']:>8} {r['impostors']:>10}")
    click.echo("head pose (yaw from the keypoints on the original photo; pair binned by the "
               "larger |yaw|): TAR at FMR 1e-3")
    click.echo(f"  photos per |yaw| bin: {table['yaw_photos']}")
    click.echo(f"  {'bin':>7} {'TAR':>8} {'thr':>7} {'genuine':>8} {'impostor':>10}")
    for r in table["pose"]:
        if not r["resolvable"]:
            tar = "not resolvable"
        elif r["tar"] is None:
            tar = "no genuine"
        else:
            tar = _pct(r["tar"])
        thr = "-" if r["threshold"] is None else f"{r['threshold']:.4f}"
        click.echo(f"  {r['name']:>7} {tar:>8} {thr:>7} {r['genuine']:>8} {r['impostors']:>10}")
    d = table["demographic"]
    point = next(p for p in d["fnir_at_fpir"] if p["target_fpir"] == 1e-2)
    fnir = "not resolvable" if not point["resolvable"] else f"{point['fnir']:.4f}"
    click.echo(f"open set: gallery {d['gallery']}, {d['mated']} mated / {d['non_mated']} "
               f"non-mated searches (held out {d['held_out_identities']}); FNIR at FPIR 1e-2: "
               f"{fnir}")
    for s in d["at_shipped_threshold"]:
        fmr = "-" if s["fmr"] is None else (
            f"{s['fmr']:.2g} ({s['false_matches']:,} of {d['impostor_pairs']:,} impostor "
            "pairs)")
        click.echo(f"  at the shipped FMR {s['target_fmr']:g} threshold {s['threshold']:.4f}: "
                   f"FPIR {s['fpir']:.4f}, FNIR {s['fnir']:.4f}; this set's FMR {fmr}")


@click.command("conditions")
@click.option("--root", "roots", required=True, multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A labelled set (one sub-folder per identity); repeat for several.")
@click.option("--embedder", "model_ids", multiple=True, default=(DLIB_MODEL_ID,),
              show_default=True, help="Embedder model id; repeat for one table per encoder.")
@click.option("--limit-identities", type=click.IntRange(1), default=None,
              help="Only the first N identities (sorted) of each set.")
@click.option("--max-images", type=click.IntRange(1), default=None,
              help="At most N photos per identity.")
@click.option("--unenrolled-fraction", type=click.FloatRange(0.0, 1.0, max_open=True),
              default=None, help="Open set: identities held out of the gallery (default: 0 "
              "when a set has single-photo identities, else 0.4).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one panel per condition to this PNG.")
@click.option("--tiling-min-face", type=click.IntRange(8, 1000), default=None,
              help="Run the camera detector with tiling on, down to faces of N px (the "
                   "service's [detector.tiling]); default: the service's default, tiling off.")
@threads_option
@json_option
@handle_errors
def eval_conditions(roots: tuple[Path, ...], model_ids: tuple[str, ...],
                    limit_identities: int | None, max_images: int | None,
                    unenrolled_fraction: float | None, plot: Path | None,
                    tiling_min_face: int | None, threads: int, as_json: bool) -> None:
    """Recognition per condition on labelled sets: face size (24-96 px), head pose
    (yaw bins), open-set FNIR / FPIR and each set's own impostor FMR at the shipped
    thresholds (sets are compared by FMR: FPIR grows with the gallery).

    Each face size is made by scaling the whole photo (area averaging) so the face box
    has that width, on a 640x360 black canvas shown to the service's detector. With
    several --embedder, each photo is found, re-rendered and detected once and every
    encoder embeds the same faces.
    """
    from device.lab import conditions as cond
    from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
    from device.vision.tiling import TilingConfig

    tables: list[dict[str, Any]] = []
    subsets = {root: _subset(root, limit_identities, max_images) for root in roots}
    subset_note = "".join(
        [f"; first {limit_identities} identities" if limit_identities else "",
         f"; at most {max_images} photos each" if max_images else ""])
    detector_config = BlazeFaceConfig(num_threads=threads)
    if tiling_min_face is not None:
        detector_config = BlazeFaceConfig(
            num_threads=threads, tiling=TilingConfig(enabled=True, min_face=tiling_min_face))
    model_ids = tuple(dict.fromkeys(model_ids))
    shipped = {m: list(_shipped_thresholds(m, cond.SHIPPED_FMRS).items()) for m in model_ids}
    demographics: dict[str, list[cond.Demographic]] = {m: [] for m in model_ids}
    with contextlib.ExitStack() as stack:
        finder = stack.enter_context(open_finder(threads))
        camera = stack.enter_context(BlazeFaceDetector(detector_config))
        embedders = [stack.enter_context(open_embedder(m, threads)) for m in model_ids]
        for root, (rel, labels) in subsets.items():
            with progress_bar(len(rel), f"{'+'.join(model_ids)} {root.name}",
                              as_json=as_json) as adv:
                per_model = cond.embed_conditions(
                    root, rel, labels, finder=finder, camera_detector=camera,
                    embedders=embedders, progress=adv)
            for model_id, embedded in zip(model_ids, per_model, strict=True):
                try:
                    demo = cond.demographic(embedded, shipped[model_id], unenrolled_fraction)
                except ValueError as exc:
                    raise ConfigError(f"{root}: {exc}") from exc
                demographics[model_id].append(demo)
                tables.append({
                    "model_id": model_id, "root": str(root), "photos": len(embedded.paths),
                    "identities": len(set(embedded.labels)),
                    "no_native_face": len(embedded.no_native_face),
                    "unreadable": len(embedded.unreadable), "subset": subset_note,
                    "canvas": f"{cond.CANVAS[0]}x{cond.CANVAS[1]}",
                    "detector": f"BlazeFace {detector_config.model}, tiling "
                                + (f"on (min face {detector_config.tiling.min_face} px)"
                                   if detector_config.tiling.enabled else "off"),
                    "size": [r.to_json() for r in cond.size_table(embedded)],
                    "pose": [r.to_json() for r in cond.pose_table(embedded)],
                    "yaw_photos": cond.yaw_histogram(embedded.yaw),
                    "demographic": demo.to_json(),
                })
    findings = {m: cond.higher_fmr_findings(d) for m, d in demographics.items()}
    if plot is not None:
        cond.plot_conditions(tables, plot)
    if as_json:
        emit_json({"tables": tables, "findings": findings,
                   "limit_identities": limit_identities, "max_images": max_images,
                   "plot": str(plot) if plot else None})
        return
    for table in tables:
        _print_table(table)
    for model_id, lines in findings.items():
        for line in lines:
            click.echo(f"FINDING ({model_id}): {line}")
    if plot is not None:
        click.echo(f"plot written to {plot}")


@click.command("templates")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False,
                                                        path_type=Path),
              help="A labelled set (one sub-folder per identity).")
@click.option("--k", type=click.IntRange(1, 10), default=3, show_default=True,
              help="Photos per sequence (the track's template size; [decision] n).")
@click.option("--embedder", "model_id", default=DLIB_MODEL_ID, show_default=True,
              help="Embedder model id.")
@click.option("--limit-identities", type=click.IntRange(1), default=None,
              help="Only the first N identities (sorted).")
@click.option("--save-calibration", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the template's calibration table (its impostor "
              "scores) to this file; name it <model_id>.template-mean-k<K>.calibration.json "
              "in the model cache or models/calibration/ for the service to find it.")
@threads_option
@json_option
@handle_errors
def eval_templates(root: Path, k: int, model_id: str, limit_identities: int | None,
                   save_calibration: Path | None, threads: int, as_json: bool) -> None:
    """Sequences of K photos of one person: FNIR of the quality-weighted mean template
    against the single best face, each at its own threshold for FMR 1e-3 and 1e-4
    measured on the same impostor comparisons (sequence of A vs gallery face of B)."""
    from device.lab import calibration
    from device.lab import templates as tpl
    from device.lab.openset import list_tree
    from device.service.template import template_table_id

    rel, labels = tpl.needed_photos(*list_tree(root, limit_identities), k)
    with open_finder(threads) as finder, open_embedder(model_id, threads) as embedder, \
            progress_bar(len(rel), "embedding", as_json=as_json) as advance:
        faces = tpl.embed_with_quality(root, rel, labels, finder, embedder, progress=advance)
    try:
        seqs = tpl.make_sequences(faces.labels, k)
    except ValueError as exc:
        raise ConfigError(f"{root}: {exc}") from exc
    results = {}
    template_impostors = None
    for mode in ("mean", "best"):
        gen, imp = tpl.scores(faces, seqs, mode)
        results[mode] = tpl.evaluate_mode(gen, imp, mode)
        if mode == "mean":
            template_impostors = imp
    table_id = template_table_id(model_id, k)
    saved = None
    if save_calibration is not None:
        assert template_impostors is not None
        table = calibration.build_table(
            template_impostors, model_id=table_id,
            source=f"{root}: quality-weighted mean templates of {k} photos (gallery = first "
                   f"photo of each identity) vs other identities' gallery faces; "
                   f"{len(seqs.sequence_labels)} sequences, {len(seqs.gallery)} gallery faces")
        saved = str(calibration.save_table(table, save_calibration))
    better = {f: (results["mean"].fnir_at(f), results["best"].fnir_at(f))
              for f in tpl.TEMPLATE_FMRS}
    if as_json:
        emit_json({"root": str(root), "model_id": model_id, "k": k,
                   "photos": len(faces.paths), "missed": len(faces.missed),
                   "sequences": len(seqs.sequence_labels), "gallery": len(seqs.gallery),
                   "template_table_id": table_id, "calibration_saved": saved,
                   "modes": [r.to_json() for r in results.values()],
                   "template_lower_fnir": {
                       str(f): (m is not None and b is not None and m < b)
                       for f, (m, b) in better.items()}})
        return
    click.echo(f"{root}: {len(faces.paths)} photos with a face ({len(faces.missed)} without); "
               f"{len(seqs.sequence_labels)} sequences of {k}, gallery {len(seqs.gallery)} "
               "faces (first photo of each identity)")
    click.echo(f"  {'mode':<28} {'genuine':>8} {'impostor':>9}  {'FMR':>6} {'threshold':>9} "
               f"{'measured':>9} {'FNIR':>7}")
    names = {"mean": f"template (mean of {k})", "best": "single best-quality face"}
    for mode, r in results.items():
        for f, t, m, n in r.points:
            if t is None:
                click.echo(f"  {names[mode]:<28} {r.genuine:>8} {r.impostors:>9}  {f:>6.0e} "
                           "not resolvable")
                continue
            assert m is not None and n is not None
            click.echo(f"  {names[mode]:<28} {r.genuine:>8} {r.impostors:>9}  {f:>6.0e} "
                       f"{t:>9.4f} {m:>9.2e} {n:>7.4f}")
    for f, (m, b) in better.items():
        if m is not None and b is not None:
            verdict = "lower" if m < b else "NOT lower"
            click.echo(f"at FMR {f:g}: template FNIR {m:.4f} vs single best face {b:.4f}: "
                       f"{verdict}")
    if saved:
        click.echo(f"template calibration table ({table_id}) written to {saved}")


def _pair(text: str, what: str) -> tuple[str, str]:
    person, sep, value = text.partition("=")
    if not sep or not person or not value:
        raise click.BadParameter(f"{text!r}: expected ID={what}")
    return person, value


@click.command("clip")
@click.option("--video", required=True, type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help="The clip (any container OpenCV reads).")
@click.option("--reference", "references", required=True, multiple=True, metavar="ID=PHOTO",
              help="A person's reference photo; repeat per person.")
@click.option("--on-screen", "on_screen", multiple=True, metavar="ID=FIRST-LAST[,...]",
              help="Frames (0-based, inclusive) where that person is on screen; detections "
                   "outside them are someone else. A person without it has no window.")
@click.option("--embedder", "model_ids", multiple=True, default=(DLIB_MODEL_ID,),
              show_default=True, help="Embedder model id; repeat to compare encoders.")
@click.option("--top", type=click.IntRange(1, 50), default=5, show_default=True,
              help="Highest-scoring detections listed per person.")
@click.option("--min-face", type=click.IntRange(8, 1000), default=24, show_default=True,
              help="Smallest face (frame pixels) tiling must make detectable.")
@threads_option
@json_option
@handle_errors
def eval_clip(video: Path, references: tuple[str, ...], on_screen: tuple[str, ...],
              model_ids: tuple[str, ...], top: int, min_face: int, threads: int,
              as_json: bool) -> None:
    """What each person scores in a clip under each encoder, against the shipped
    thresholds: every detection (BlazeFace with tiling, no quality gate) against each
    reference photo; the best score in the person's frames beside the best score of
    anyone outside them."""
    from device.lab import clip_scores
    from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
    from device.vision.tiling import TilingConfig

    photos = {p: Path(v) for p, v in (_pair(r, "PHOTO") for r in references)}
    windows: dict[str, list[tuple[int, int]]] = {}
    for text in on_screen:
        person, value = _pair(text, "FIRST-LAST")
        if person not in photos:
            raise click.BadParameter(f"--on-screen {person}: no --reference for that id")
        try:
            windows[person] = clip_scores.parse_windows(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    model_ids = tuple(dict.fromkeys(model_ids))
    thresholds = {m: _shipped_thresholds(m, (1e-3, 1e-4)) for m in model_ids}
    config = BlazeFaceConfig(num_threads=threads,
                             tiling=TilingConfig(enabled=True, min_face=min_face))
    with contextlib.ExitStack() as stack:
        finder = stack.enter_context(open_finder(threads))
        detector = stack.enter_context(BlazeFaceDetector(config))
        embedders = [stack.enter_context(open_embedder(m, threads)) for m in model_ids]
        refs = clip_scores.reference_embeddings(photos, finder, embedders)
        with progress_bar(clip_scores.frame_count(video), "frames", "frame",
                          as_json=as_json) as advance:
            results = clip_scores.score_clip(video, refs, windows, detector, embedders,
                                             top=top, progress=advance)
    rows = []
    for r in results:
        doc = r.to_json()
        doc["thresholds"] = {f"{f:g}": round(t, 4) for f, t in thresholds[r.model_id].items()}
        doc["matchable_at"] = {f"{f:g}": r.matchable_at(t)
                               for f, t in thresholds[r.model_id].items()}
        rows.append(doc)
    if as_json:
        emit_json({"video": str(video), "min_face": min_face, "people": rows})
        return
    click.echo(f"{video}: every detection (tiling on, min face {min_face} px, no quality "
               "gate) against each reference")
    click.echo(f"  {'encoder':<20} {'person':<20} {'in frames':>9} {'best there':>10} "
               f"{'best else':>9} {'thr 1e-3':>8} {'thr 1e-4':>8}  matchable at 1e-3 / 1e-4")
    for doc in rows:
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"
        m = doc["matchable_at"]
        click.echo(f"  {doc['model_id']:<20} {doc['person']:<20} {doc['in_window']:>9} "
                   f"{fmt(doc['best_in_window']):>10} {fmt(doc['best_outside']):>9} "
                   f"{doc['thresholds']['0.001']:>8.4f} {doc['thresholds']['0.0001']:>8.4f}  "
                   f"{'yes' if m['0.001'] else 'no'} / {'yes' if m['0.0001'] else 'no'}")
        tops = ", ".join(f"{s['score']:.4f} (frame {s['frame']}, {s['width']} px"
                         f"{'' if s['in_window'] else ', not them'})" for s in doc["top"])
        click.echo(f"      top: {tops}")

"""``facegate bench embed`` (the dlib encoder as TFLite vs dlib's own code, per chip) and
``facegate bench embed-compare`` (facegate's embedder and pipeline vs dlib and
face_recognition, per face, interleaved)."""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
from numpy.typing import NDArray

from device.cli.common import emit_json, handle_errors, json_option
from device.errors import DeviceError, ModelError

#: The target: TFLite takes at most this fraction of dlib's time per chip.
FLOOR = 1 / 3


def _chips(images: Path | None, count: int) -> list[NDArray[np.uint8]]:
    """``count`` 150x150 RGB chips: centre crops of the folder's images, else noise."""
    if images is None:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8) for _ in range(count)]
    from device.imageio import IMAGE_SUFFIXES, read_image

    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DeviceError(f"{images}: no image files found")
    chips = []
    for path in files[:count]:
        img = read_image(path)
        side = min(img.shape[:2])
        top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        square = img[top : top + side, left : left + side]
        idx = (np.arange(150) * side / 150).astype(int)  # nearest-neighbour resize
        chips.append(np.ascontiguousarray(square[idx][:, idx]))
    return chips


def _time(fn: Callable[[NDArray[np.uint8]], Any], chips: list[NDArray[np.uint8]]) -> list[float]:
    for chip in chips[:3]:
        fn(chip)  # warm-up
    times = []
    for chip in chips:
        started = time.perf_counter()
        fn(chip)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _row(name: str, threads: str, times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "embedder": name,
        "threads": threads,
        "median_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 2),
        "chips_per_s": round(1000 / statistics.median(ordered), 1),
    }


@click.command("embed")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Model cache holding the built dlib-resnet-v1 (see `facegate models build`).",
)
@click.option("--threads", default=2, show_default=True, help="TFLite interpreter threads.")
@click.option("--chips", "count", default=30, show_default=True, help="Chips to time.")
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of face images to centre-crop into chips (default: random chips; the "
    "time per chip does not depend on the content).",
)
@json_option
@handle_errors
def bench_embed(
    cache_dir: Path | None, threads: int, count: int, images: Path | None, as_json: bool
) -> None:
    """Time per chip of dlib's face encoder: TFLite (XNNPACK) vs dlib (needs dlib-bin)."""
    from device.modelzoo.build import upstream_file
    from device.modelzoo.dlib_runner import MODEL_ID, DlibResnetTFLite
    from device.vision.models import get_spec

    chips = _chips(images, max(count, 1))
    rows = []
    with DlibResnetTFLite.from_cache(cache_dir, num_threads=threads) as runner:
        delegated = runner.fully_delegated()
        rows.append(_row("tflite (XNNPACK)", str(threads), _time(runner.run, chips)))
        ours = runner.run(chips[0]).astype(np.float64)
    if threads != 1:
        # dlib's CPU code runs on one thread: also time TFLite on one, like for like.
        with DlibResnetTFLite.from_cache(cache_dir, num_threads=1) as single:
            rows.append(_row("tflite (XNNPACK)", "1", _time(single.run, chips)))

    ratio: float | None = None
    agreement: float | None = None
    try:
        dlib = importlib.import_module("dlib")
    except ImportError:
        dlib = None
    if dlib is not None:
        dat, _ = upstream_file(get_spec(MODEL_ID))
        if not dat.is_file():
            raise ModelError(f"dlib's model {dat} is missing")
        reference = dlib.face_recognition_model_v1(str(dat))
        times = _time(reference.compute_face_descriptor, chips)
        rows.append(_row("dlib compute_face_descriptor", "1", times))
        ratio = rows[0]["median_ms"] / rows[-1]["median_ms"]
        theirs = np.asarray(reference.compute_face_descriptor(chips[0]), dtype=np.float64)
        agreement = float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs)))

    if as_json:
        emit_json(
            {
                "chips": len(chips),
                "rows": rows,
                "ratio_tflite_to_dlib": None if ratio is None else round(ratio, 4),
                "floor": round(FLOOR, 4),
                "xnnpack_whole_graph": delegated,
                "cosine_first_chip": agreement,
            }
        )
        return
    click.echo(f"dlib face encoder, {len(chips)} chips of 150x150 RGB, time per chip:")
    click.echo(f"{'embedder':<30} {'threads':>7} {'median ms':>10} {'p90 ms':>8} {'chips/s':>8}")
    for row in rows:
        click.echo(
            f"{row['embedder']:<30} {row['threads']:>7} {row['median_ms']:>10.2f} "
            f"{row['p90_ms']:>8.2f} {row['chips_per_s']:>8.1f}"
        )
    if ratio is None:
        click.echo("dlib is not installed (pip install dlib-bin): no comparison")
    else:
        verdict = "meets" if ratio <= FLOOR else "MISSES"
        click.echo(
            f"tflite ({threads} threads) / dlib = {ratio:.3f} ({verdict} the target of "
            f"{FLOOR:.2f}); "
            f"cosine on the first chip {agreement:.9f}"
        )
    click.echo(
        "XNNPACK runs the whole graph in one partition"
        if delegated
        else "WARNING: XNNPACK did not take the whole graph; some ops run on reference kernels"
    )


@click.command("embed-compare")
@click.option("--images", type=click.Path(exists=True, path_type=Path), default=None,
              help="Image file or folder of face photos (default: the astronaut sample).")
@click.option("--faces", "count", default=20, show_default=True,
              help="Faces (images) to time; each is timed once per system.")
@click.option("--threads", default=2, show_default=True, help="TFLite interpreter threads.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Model cache holding the built dlib-resnet-v1.")
@json_option
@handle_errors
def bench_embed_compare(images: Path | None, count: int, threads: int, cache_dir: Path | None,
                        as_json: bool) -> None:
    """Time per face, side by side in one run: facegate vs dlib and face_recognition.

    Embedding only: facegate's Embedder (dlib ResNet as TFLite, mirror-averaged: two
    inferences per face; and without the mirror) on the aligned chip, against dlib's
    compute_face_descriptor on dlib's own chip of the same face. Whole pipeline:
    facegate's detect + align + embed against face_recognition's face_locations (HOG)
    + face_encodings. Each round times every system once on the same face, in turn.
    Needs dlib-bin and face_recognition (bench-only dependencies).
    """
    from device.imageio import iter_image_files, read_image
    from device.vision import samples
    from device.vision.dlib_tflite import DlibTFLiteEmbedder, DlibTFLiteEmbedderConfig
    from device.vision.stills import StillFaceFinder, embed_faces

    try:
        import dlib
        import face_recognition
        import face_recognition_models
    except ImportError as exc:
        raise DeviceError(
            f"bench embed-compare needs dlib-bin and face_recognition ({exc})"
        ) from exc
    photos = (
        [read_image(p) for p in iter_image_files(images)[:count]] if images is not None
        else [samples.astronaut()]
    )
    if not photos:
        raise DeviceError(f"{images}: no image files found")
    models = face_recognition_models
    predictor = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
    encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())
    hog = dlib.get_frontal_face_detector()
    flip_cfg = DlibTFLiteEmbedderConfig(num_threads=threads, flip_average=True)
    single_cfg = DlibTFLiteEmbedderConfig(num_threads=threads, flip_average=False)
    with StillFaceFinder.from_config(cache_dir=cache_dir) as finder, \
            DlibTFLiteEmbedder(flip_cfg, cache_dir=cache_dir) as flipped, \
            DlibTFLiteEmbedder(single_cfg, cache_dir=cache_dir) as single:
        from device.vision.align import align

        cases = []
        for photo in photos:
            found = finder.find(photo, largest_only=True)
            rects = hog(photo, 1)
            if not found or not rects:
                continue
            chip = align(photo, found[0], flipped.template)
            shape = predictor(photo, max(rects, key=lambda r: r.area()))
            dlib_chip = dlib.get_face_chip(photo, shape, size=150, padding=0.25)
            cases.append((photo, chip, dlib_chip))
        if not cases:
            raise DeviceError("no image had a face found by both BlazeFace and dlib's HOG")
        rounds = max(count, len(cases))
        k = [0]

        def case() -> tuple[Any, Any, Any]:
            return cases[k[0] % len(cases)]

        systems: dict[str, Callable[[], Any]] = {
            f"facegate embed (mirror-averaged, {threads} threads)":
                lambda: flipped.embed([case()[1]]),
            f"facegate embed (single, {threads} threads)": lambda: single.embed([case()[1]]),
            "dlib compute_face_descriptor": lambda: encoder.compute_face_descriptor(case()[2]),
            f"facegate detect+align+embed ({threads} threads)":
                lambda: embed_faces(case()[0], finder, flipped),
            "face_recognition locations+encodings":
                lambda: face_recognition.face_encodings(
                    case()[0], known_face_locations=face_recognition.face_locations(case()[0])),
        }
        names = list(systems)
        for _ in range(2):  # warm-up
            for fn in systems.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            k[0] = r
            for name in names:
                started = time.perf_counter()
                systems[name]()
                times[name].append((time.perf_counter() - started) * 1000)
    dlib_ms = statistics.median(times["dlib compute_face_descriptor"])
    fr_ms = statistics.median(times["face_recognition locations+encodings"])
    rows = []
    for name in names:
        row = _row(name, "", times[name])
        row.pop("threads")
        row["faces"] = len(times[name])
        row["ratio_to_dlib_descriptor"] = round(row["median_ms"] / dlib_ms, 4)
        rows.append(row)
    ratio = rows[0]["median_ms"] / dlib_ms
    pipeline_ratio = rows[3]["median_ms"] / fr_ms
    if as_json:
        emit_json({"faces": len(cases), "rounds": rounds, "rows": rows,
                   "embed_ratio_to_dlib": round(ratio, 4), "floor": round(FLOOR, 4),
                   "meets_floor": ratio <= FLOOR,
                   "pipeline_ratio_to_face_recognition": round(pipeline_ratio, 4)})
        return
    click.echo(f"time per face, {len(cases)} faces, {rounds} interleaved rounds:")
    click.echo(f"{'system':<48} {'median ms':>10} {'p90 ms':>8} {'x dlib desc':>11}")
    for row in rows:
        click.echo(f"{row['embedder']:<48} {row['median_ms']:>10.2f} {row['p90_ms']:>8.2f} "
                   f"{row['ratio_to_dlib_descriptor']:>11.3f}")
    verdict = "meets" if ratio <= FLOOR else "MISSES"
    click.echo(f"facegate embedding / dlib compute_face_descriptor = {ratio:.3f} ({verdict} the "
               f"target of {FLOOR:.2f}); whole pipeline vs face_recognition = "
               f"{pipeline_ratio:.3f}")


#: The int8 encoder's floors against the float one (cosine over chips, time per face).
INT8_COSINE_MEDIAN, INT8_COSINE_P1, INT8_TIME_RATIO = 0.99, 0.97, 0.6


@click.command("embed-int8")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Folder of face photos (searched recursively), e.g. LFW.")
@click.option("--faces", "count", default=240, show_default=True,
              help="Photos to use, spread evenly over the sorted folder.")
@click.option("--threads", default=2, show_default=True, help="TFLite interpreter threads.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Model cache holding dlib-resnet-v1 and dlib-resnet-v1-int8.")
@json_option
@handle_errors
def bench_embed_int8(images: Path, count: int, threads: int, cache_dir: Path | None,
                     as_json: bool) -> None:
    """The int8 encoder beside the float one on the same aligned chips, in one run.

    Fidelity: cosine between the two models' raw descriptors of each chip (median, 1st
    percentile, minimum), single and mirror-averaged. Time per face: each chip runs
    through both models in turn (interleaved), single and mirror-averaged.
    """
    from device.imageio import iter_image_files, read_image
    from device.modelzoo.dlib_runner import DlibResnetTFLite
    from device.vision import models as model_manifest
    from device.vision.align import AlignTemplate, align
    from device.vision.stills import StillFaceFinder

    files = sorted(iter_image_files(images))
    if not files:
        raise DeviceError(f"{images}: no image files found")
    step = max(1, len(files) // max(count, 1))
    picked = files[::step][:count]
    spec = model_manifest.get_spec("dlib-resnet-v1")
    template = AlignTemplate.from_manifest(spec.id, spec.extra)
    chips: list[NDArray[np.uint8]] = []
    with StillFaceFinder.from_config(cache_dir=cache_dir) as finder:
        for path in picked:
            photo = read_image(path)
            found = finder.find(photo, largest_only=True)
            if found:
                chips.append(align(photo, found[0], template).image)
    if not chips:
        raise DeviceError(f"{images}: no face found in the {len(picked)} photos")
    paths = {m: model_manifest.verified_path(m, cache_dir=cache_dir)
             for m in ("dlib-resnet-v1", "dlib-resnet-v1-int8")}
    with DlibResnetTFLite(paths["dlib-resnet-v1"], threads) as fl, \
            DlibResnetTFLite(paths["dlib-resnet-v1-int8"], threads) as q8:

        def flip(runner: DlibResnetTFLite, chip: NDArray[np.uint8]) -> NDArray[np.float32]:
            both = runner.run_batch([chip, np.ascontiguousarray(chip[:, ::-1])])
            out: NDArray[np.float32] = both.astype(np.float64).sum(axis=0).astype(np.float32)
            return out

        def cos(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
            x, y = a.astype(np.float64), b.astype(np.float64)
            return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

        systems: dict[str, Callable[[NDArray[np.uint8]], NDArray[np.float32]]] = {
            "float single": fl.run, "int8 single": q8.run,
            "float mirror-averaged": lambda c: flip(fl, c),
            "int8 mirror-averaged": lambda c: flip(q8, c),
        }
        times: dict[str, list[float]] = {name: [] for name in systems}
        outputs: dict[str, list[NDArray[np.float32]]] = {name: [] for name in systems}
        for chip in chips[:2]:  # warm-up
            for fn in systems.values():
                fn(chip)
        for chip in chips:
            for name, fn in systems.items():
                started = time.perf_counter()
                outputs[name].append(fn(chip))
                times[name].append((time.perf_counter() - started) * 1000)
        delegated = {"float": fl.fully_delegated(), "int8": q8.fully_delegated()}
    fidelity = {}
    for kind in ("single", "mirror-averaged"):
        c = np.array([cos(a, b) for a, b in zip(outputs[f"float {kind}"],
                                                outputs[f"int8 {kind}"], strict=True)])
        fidelity[kind] = {"median": float(np.median(c)), "p1": float(np.percentile(c, 1)),
                          "min": float(c.min())}
    rows = [_row(name, str(threads), t) for name, t in times.items()]
    ratio = {kind: statistics.median(times[f"int8 {kind}"]) /
             statistics.median(times[f"float {kind}"]) for kind in ("single", "mirror-averaged")}
    meets = (fidelity["single"]["median"] >= INT8_COSINE_MEDIAN
             and fidelity["single"]["p1"] >= INT8_COSINE_P1
             and all(r <= INT8_TIME_RATIO for r in ratio.values()))
    if as_json:
        emit_json({"chips": len(chips), "photos": len(picked), "rows": rows,
                   "fidelity": fidelity, "time_ratio_int8_to_float": ratio,
                   "xnnpack_whole_graph": delegated, "meets_floors": meets})
        return
    click.echo(f"{len(chips)} aligned chips from {len(picked)} photos of {images}")
    click.echo(f"{'cosine int8 vs float':<28} {'median':>8} {'p1':>8} {'min':>8}")
    for kind, f in fidelity.items():
        click.echo(f"{kind:<28} {f['median']:>8.5f} {f['p1']:>8.5f} {f['min']:>8.5f}")
    click.echo(f"{'time per face':<28} {'threads':>7} {'median ms':>10} {'p90 ms':>8}")
    for row in rows:
        click.echo(f"{row['embedder']:<28} {row['threads']:>7} {row['median_ms']:>10.2f} "
                   f"{row['p90_ms']:>8.2f}")
    click.echo(f"int8 / float time: single {ratio['single']:.3f}, mirror-averaged "
               f"{ratio['mirror-averaged']:.3f}; floors cosine median >= {INT8_COSINE_MEDIAN}, "
               f"p1 >= {INT8_COSINE_P1}, time <= {INT8_TIME_RATIO}x: "
               f"{'met' if meets else 'MISSED'}; XNNPACK whole graph: {delegated}")

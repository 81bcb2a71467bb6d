"""``facegate eval identify``: open-set 1:N evaluation, FNIR at fixed FPIR.

The protocol is :mod:`device.lab.openset`'s: the gallery holds the first image of
each identity with two or more images; the other images are mated searches; images
of identities never enrolled (those with a single image, plus ``--unenrolled-fraction``
of the others) are non-mated searches. Embeddings stay in memory.
"""

from __future__ import annotations

from pathlib import Path

import click

from device.cli.common import emit_json, handle_errors, json_option
from device.cli.face_tools import (
    model_option,
    open_embedder,
    open_finder,
    progress_bar,
    threads_option,
)
from device.errors import ConfigError
from device.lab.openset import (
    DEFAULT_FPIRS,
    OpenSetResult,
    embed_files,
    evaluate_open_set,
    list_tree,
)
from device.service.thresholds import ThresholdPolicy, resolve_threshold


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_result(name: str, result: OpenSetResult) -> None:
    """The figures as text."""
    click.echo(f"{name}: gallery {result.gallery} identities; {result.mated} mated and "
               f"{result.non_mated} non-mated searches ({result.singletons} single-image "
               f"identities, {result.held_out} held out); rank-1 {result.rank1:.4f}"
               + (f"; {result.fallbacks} images without a detected face embedded whole"
                  if result.fallbacks else ""))
    click.echo(f"  {'FPIR':>8}  {'FNIR':>7}  {'threshold':>9}  measured FPIR")
    for p in result.points:
        if not p.resolvable:
            click.echo(f"  {p.target_fpir:>8.0e}  {'-':>7}  {'-':>9}  not resolvable: needs "
                       f">= {1 / p.target_fpir:.0f} non-mated searches, has {result.non_mated}")
            continue
        click.echo(f"  {p.target_fpir:>8.0e}  {_fmt(p.fnir, '.4f'):>7}  "
                   f"{_fmt(p.threshold, '.4f'):>9}  {_fmt(p.fpir, '.2e')}")
    for t, fpir, fnir in result.at_threshold:
        click.echo(f"  at the calibrated threshold {t:.4f}: FPIR {fpir:.2e}, FNIR {fnir:.4f}")


@click.command("identify")
@click.option("--root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="One sub-folder of images per identity.")
@click.option("--unenrolled-fraction", type=click.FloatRange(0.0, 1.0, max_open=True),
              default=0.0, show_default=True,
              help="Share of identities with two or more images held out of the gallery "
                   "as never enrolled (needed when no identity has a single image).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for choosing the held-out identities.")
@click.option("--limit", "limit_identities", type=click.IntRange(1), default=None,
              help="Only the first N identities (sorted), for quick runs.")
@click.option("--target-fmr", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
              help="Also report FPIR/FNIR at the calibrated threshold for this FMR.")
@model_option
@threads_option
@json_option
@handle_errors
def eval_identify(root: Path, unenrolled_fraction: float, seed: int,
                  limit_identities: int | None, target_fmr: float | None, model_id: str,
                  threads: int, as_json: bool) -> None:
    """Open-set 1:N identification on ROOT: FNIR at FPIR 1e-2 and 1e-3.

    FPIR is the share of non-mated searches whose best similarity reaches the
    threshold; FNIR the share of mated searches that do not return their own
    identity first at or above it. An FPIR below 1/(non-mated searches) is not
    resolvable and is reported as such.
    """
    thresholds: list[float] = []
    if target_fmr is not None:
        # An evaluation may measure an unsafe threshold: it is logged as one, not refused.
        policy = ThresholdPolicy(target_fmr=target_fmr, allow_unsafe=True)
        thresholds.append(resolve_threshold(model_id, policy).value)
    rel, labels = list_tree(root, limit_identities)
    with open_finder(threads) as detector, \
            open_embedder(model_id, threads) as embedder, \
            progress_bar(len(rel), "embedding", "image", as_json=as_json) as advance:
        embedded = embed_files(root, rel, labels, detector, embedder,
                               progress=lambda _p: advance(1))
    try:
        result = evaluate_open_set(embedded, unenrolled_fraction=unenrolled_fraction,
                                   seed=seed, fpirs=DEFAULT_FPIRS, thresholds=thresholds)
    except ValueError as exc:
        raise ConfigError(f"{root}: {exc}") from exc
    if as_json:
        emit_json({"root": str(root), "model_id": model_id,
                   "unenrolled_fraction": unenrolled_fraction, "seed": seed,
                   "unreadable": list(embedded.unreadable), **result.to_json()})
    else:
        print_result(str(root), result)

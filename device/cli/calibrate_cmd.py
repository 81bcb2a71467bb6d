"""``facegate calibrate``: measure a model's similarity → false-match-rate table.

Two sources of impostor comparisons:

* ``--pairs CSV --root DIR``: the pairs of a verification protocol (``image_a``,
  ``image_b``, ``same``); the ``same = 0`` pairs are the impostors;
* ``--identities ROOT``: one sub-folder per person; every pair of images of two
  different people is an impostor comparison (millions from a few thousand images,
  so far finer FMRs are resolvable).

The table (numbers only) goes next to the model file in the model cache, where
``identify`` and the service find it, or to ``--output``. Embeddings stay in memory.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from device.cli.common import emit_json, handle_errors, json_option
from device.cli.face_tools import (
    model_option,
    open_embedder,
    open_finder,
    progress_bar,
    threads_option,
)
from device.errors import ConfigError
from device.lab.calibration import build_table, save_table, summarise
from device.lab.evaluation import read_pairs
from device.lab.openset import embed_files, impostor_scores, list_tree, pair_scores
from device.service.thresholds import table_path


def _tar(genuine: np.ndarray, threshold: float | None) -> float | None:
    if threshold is None or genuine.size == 0:
        return None
    return float((genuine >= threshold).mean())


@click.command("calibrate")
@click.option("--pairs", "pairs_csv", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="Pairs CSV (fold,image_a,image_b,same, as `eval pairs`), paths relative "
                   "to --root.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder the pairs' image paths are relative to.")
@click.option("--identities", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with one sub-folder per person: all cross-person pairs.")
@click.option("--limit", "limit_identities", type=click.IntRange(1), default=None,
              help="With --identities: only the first N identities (quick runs).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the table here. [default: <model cache>/<model>.calibration.json]")
@click.option("--no-save", is_flag=True, help="Print the summary; write nothing.")
@model_option
@threads_option
@json_option
@handle_errors
def calibrate(pairs_csv: Path | None, root: Path | None, identities: Path | None,
              limit_identities: int | None, output: Path | None, no_save: bool,
              model_id: str, threads: int, as_json: bool) -> None:
    """Measure the similarity → FMR table of the embedder on impostor comparisons.

    Prints the threshold at FMR 1e-2 … 1e-5 where the number of impostor comparisons
    resolves it (N comparisons resolve FMRs down to 1/N), with the genuine accept
    rate there when genuine pairs are known.
    """
    if (pairs_csv is None) == (identities is None):
        raise click.UsageError("give either --pairs CSV --root DIR or --identities ROOT")
    if pairs_csv is not None and root is None:
        raise click.UsageError("--pairs needs --root (the folder its image paths start from)")
    with open_finder(threads) as detector, \
            open_embedder(model_id, threads) as embedder:
        if pairs_csv is not None:
            assert root is not None
            pairs = read_pairs(pairs_csv, root)
            rel = sorted({name for p in pairs for name in (p.a, p.b)})
            with progress_bar(len(rel), "embedding", "image", as_json=as_json) as advance:
                embedded = embed_files(root, rel, [""] * len(rel), detector, embedder,
                                       progress=lambda _p: advance(1))
            genuine, impostor, skipped = pair_scores(pairs, embedded)
            source = (f"{pairs_csv.name}: {impostor.size} impostor pairs of "
                      f"{len(embedded)} images under {root.name}/"
                      + (f" ({skipped} pairs skipped: unreadable images)" if skipped else ""))
        else:
            assert identities is not None
            rel, labels = list_tree(identities, limit_identities)
            with progress_bar(len(rel), "embedding", "image", as_json=as_json) as advance:
                embedded = embed_files(identities, rel, labels, detector, embedder,
                                       progress=lambda _p: advance(1))
            impostor_f32, _ = impostor_scores(embedded)
            impostor = impostor_f32.astype(np.float64)
            genuine = _genuine(embedded.matrix, embedded.labels)
            source = (f"all {impostor.size} cross-identity pairs of {len(embedded)} images of "
                      f"{len(set(embedded.labels))} identities under {identities.name}/")
        template = embedder.template
        source += (f"; faces by the still-photo finder, aligned on {'+'.join(template.keypoints)} "
                   f"at {np.round(np.asarray(template.points, dtype=np.float64), 2).tolist()} "
                   f"(border {template.border}), flip-averaged {embedder.config.flip_average}")
    if impostor.size == 0:
        raise ConfigError("no impostor comparisons: nothing to calibrate on")
    fallbacks = int(embedded.fallback.sum())
    if fallbacks:
        source += f"; {fallbacks} images without a detected face embedded whole"
    table = build_table(impostor, model_id=embedder.model_id, source=source)
    written: Path | None = None
    if not no_save:
        written = save_table(table, output or table_path(embedder.model_id))
    rows = summarise(table)
    if as_json:
        emit_json({
            "model_id": table.model_id, "source": table.source, "impostors": table.impostors,
            "genuine": int(genuine.size), "resolution": table.resolution,
            "written": None if written is None else str(written),
            "summary": [{**r.to_json(), "tar": _tar(genuine, r.threshold)} for r in rows],
        })
        return
    click.echo(f"model {table.model_id}: {table.source}")
    click.echo(f"{table.impostors} impostor comparisons resolve FMRs down to "
               f"{table.resolution:.1e}; {genuine.size} genuine pairs")
    click.echo(f"{'FMR':>8}  {'threshold':>9}  {'impostors >= t':>14}  {'TAR':>7}")
    for r in rows:
        if r.threshold is None:
            click.echo(f"{r.target_fmr:>8.0e}  {'-':>9}  {'not resolvable':>14}")
            continue
        tar = _tar(genuine, r.threshold)
        click.echo(f"{r.target_fmr:>8.0e}  {r.threshold:>9.4f}  {r.impostors_above:>14}  "
                   f"{'-' if tar is None else f'{tar:.4f}':>7}")
    if written is not None:
        click.echo(f"table written to {written}")


def _genuine(matrix: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    """Every same-identity similarity (each unordered pair once)."""
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    parts = []
    for rows in by_label.values():
        if len(rows) > 1:
            sub = matrix[rows].astype(np.float64)
            sims = sub @ sub.T
            parts.append(sims[np.triu_indices(len(rows), 1)])
    return np.concatenate(parts) if parts else np.empty(0)

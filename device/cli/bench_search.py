"""``facegate bench search``: the gallery index against faiss, same vectors, one run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from device.cli.common import emit_json, handle_errors, json_option, progress
from device.lab import search_bench

#: Indexes smaller than this build too fast for a progress bar to help.
PROGRESS_MIN_ROWS = 100_000


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(v.replace("_", "")) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from exc
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("sizes must be positive integers")
    return sizes


@contextmanager
def _bar(label: str, total: int) -> Iterator[Callable[[int], object]]:
    if total < PROGRESS_MIN_ROWS:
        yield lambda n: None
        return
    with progress(total, label, "rows") as advance:
        yield advance


@click.command("search")
@click.option("--size", "sizes", default="10000,100000,1000000", show_default=True,
              help="Gallery sizes, comma-separated.")
@click.option("--k", default=1, show_default=True, type=click.IntRange(min=1),
              help="Results per query (recall is judged on the first).")
@click.option("--queries", default=200, show_default=True, type=click.IntRange(min=1),
              help="Timed queries per size, each answered by every method.")
@click.option("--strangers", default=0.2, show_default=True,
              type=click.FloatRange(0.0, 1.0),
              help="Share of queries that are random vectors rather than noisy gallery rows.")
@click.option("--dim", default=128, show_default=True, type=click.IntRange(min=1),
              help="Embedding dimension.")
@click.option("--seed", default=0, show_default=True, help="Seed for vectors and queries.")
@click.option("--faiss/--no-faiss", "with_faiss", default=True, show_default=True,
              help="Compare against faiss IndexFlatIP and IndexScalarQuantizer(QT_8bit).")
@click.option("--row-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Directory for the int8 re-rank's float32 row file (default: the "
              "system temporary directory; removed afterwards).")
@json_option
@handle_errors
def bench_search(sizes: str, k: int, queries: int, strangers: float, dim: int, seed: int,
                 with_faiss: bool, row_dir: str | None, as_json: bool) -> None:
    """Single-query search time and recall@1: facegate float32/int8 vs faiss.

    Every method searches the same seeded unit vectors with the same queries, timed
    one query at a time, in a fresh random order of methods each round. The floor
    row is the time to stream the float32 matrix through memory once; `x floor` is
    p50 over it. Recall@1 is against exact float64 search, for probes (noisy gallery
    rows) and strangers (random queries). facegate-int8-rerank re-ranks int8
    candidates exactly against float32 rows in a memory-mapped file: `MiB` is RAM,
    `disk MiB` that file.
    """
    rows = search_bench.run(_sizes(sizes), k=k, queries=queries, strangers=strangers,
                            dim=dim, seed=seed, with_faiss=with_faiss, progress=_bar,
                            row_dir=row_dir)
    if as_json:
        emit_json([r.to_json() for r in rows])
        return
    click.echo(f"{'size':>9} {'method':<20} {'p50 ms':>8} {'p95 ms':>8} {'x floor':>7} "
               f"{'R@1 probe':>9} {'R@1 strgr':>9} {'R@1 all':>8} {'MiB':>7} "
               f"{'disk MiB':>8} {'build s':>7}")

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for r in rows:
        click.echo(
            f"{r.size:>9} {r.method:<20} {r.p50_ms:>8.2f} {r.p95_ms:>8.2f} {r.vs_floor:>7.2f} "
            f"{fmt(r.recall_probes, '.4f'):>9} {fmt(r.recall_strangers, '.4f'):>9} "
            f"{fmt(r.recall_all, '.4f'):>8} {fmt(r.index_mb, '.1f'):>7} "
            f"{fmt(r.disk_mb, '.1f'):>8} {fmt(r.build_s, '.2f'):>7}")
    for r in rows:
        if r.note:
            label = "floor" if r.method == "floor" else r.method
            click.echo(f"{label} at {r.size}: {r.note}")

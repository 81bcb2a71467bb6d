"""``facegate bench fleet``: simulated units on a real broker, ingested by the console."""

from __future__ import annotations

import logging
from typing import Any

import click

from device.cli.common import emit_json, handle_errors, json_option

# The bench's database layer (SQLAlchemy) is the console's extra: imported when it runs.
from device.lab.fleet_units import BASE_MATCH_INTERVAL_S

_MIB = 2**20


@click.command("fleet")
@click.option("--units", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Simulated units (real MQTT 5 clients).")
@click.option("--rate", default=60.0, show_default=True, type=click.FloatRange(min=0.0),
              help=f"Multiplier on the match rate of one per unit per "
              f"{BASE_MATCH_INTERVAL_S / 60:g} min (Poisson).")
@click.option("--store", "store_kind", type=click.Choice(["sqlite", "postgresql"]),
              default="sqlite", show_default=True,
              help="The console's store (postgresql: a throwaway local cluster).")
@click.option("--steady", "steady_s", default=30.0, show_default=True,
              type=click.FloatRange(min=1.0), help="Seconds of steady traffic.")
@click.option("--outage", "outage_s", default=3.0, show_default=True,
              type=click.FloatRange(min=0.0), help="Seconds the broker stays down.")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(min=1),
              help="Threads driving the units (each many clients over a selector).")
@click.option("--gallery-identities", default=300, show_default=True,
              type=click.IntRange(min=1), help="Identities of the bundle sent to every unit.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True,
              type=click.FloatRange(min=1.0), help="Longest wait for any phase.")
@click.option("--seed", default=0, show_default=True, help="Seed of everything random.")
@json_option
@handle_errors
def bench_fleet(units: int, rate: float, store_kind: str, steady_s: float, outage_s: float,
                threads: int, gallery_identities: int, timeout_s: float, seed: int,
                as_json: bool) -> None:
    """A fleet on a real mosquitto: ingest rate, latency, loss, a broker restart, a bundle.

    Every figure is read from the console's store, filled by its real ingester in a
    process of its own; events lost are counted by id and must be 0.
    """
    from device.lab.fleet_bench import FleetBenchConfig, run_fleet_bench

    config = FleetBenchConfig(units=units, rate=rate, store=store_kind,  # type: ignore[arg-type]
                              steady_s=steady_s, outage_s=outage_s, threads=threads,
                              gallery_identities=gallery_identities, timeout_s=timeout_s,
                              seed=seed)
    # A thousand simulated units losing the broker would log a thousand warnings.
    client_log = logging.getLogger("device.events.client")
    level = client_log.level
    if not client_log.isEnabledFor(logging.INFO):
        client_log.setLevel(logging.ERROR)
    try:
        report = run_fleet_bench(config, say=(lambda _t: None) if as_json else click.echo)
    finally:
        client_log.setLevel(level)
    if as_json:
        emit_json(report.to_json())
        return
    _table(report.to_json())


def _table(r: dict[str, Any]) -> None:
    rows = [
        ("units / store", f"{r['config']['units']} / {r['config']['store']}"),
        ("connect, every unit online", f"{r['connect_s']:.1f} s"),
        ("events/s offered / ingested",
         f"{r['steady_offered_per_s']:.1f} / {r['steady_ingested_per_s']:.1f}"),
        ("publish-to-stored p50 / p99",
         f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f} ms"),
        ("events published / stored / lost",
         f"{r['events_published']} / {r['events_stored']} / {r['events_lost']}"),
        ("broker restart: every unit online", f"{r['restart_back_online_s']:.1f} s"),
        ("broker restart: outboxes drained", f"{r['restart_outboxes_drained_s']:.1f} s"),
        ("broker restart: backlog stored",
         f"{r['restart_backlog_events']} events in {r['restart_all_stored_s']:.1f} s"),
        ("reconnects after restart (s)", str(r["reconnect_spread_s"])),
        ("reconnect peak per 100 ms", str(r["reconnect_peak_per_100ms"])),
        ("gallery bundle", f"{r['gallery_bytes'] / _MIB:.2f} MiB, {r['gallery_chunks']} chunks"),
        ("gallery: every unit on it", f"{r['gallery_all_units_s']:.1f} s"),
        ("broker RSS connected / with bundle",
         f"{r['broker_rss_connected_bytes'] / _MIB:.1f} / "
         f"{r['broker_rss_with_bundle_bytes'] / _MIB:.1f} MiB"),
        ("console RSS now / peak",
         f"{r['console_rss_bytes'] / _MIB:.1f} / {r['console_peak_rss_bytes'] / _MIB:.1f} MiB"),
        ("PUBACKs 'no matching subscribers'", str(r["unrouted_pubacks"])),
        ("duplicates the console dropped", str(r["duplicates_delivered"])),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")

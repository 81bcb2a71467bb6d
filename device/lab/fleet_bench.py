"""The fleet bench: N simulated units, a real mosquitto, the console's real ingester.

Phases, each measured from what the console's store holds:

1. **Connect**: every unit connects, publishes its retained status, health and gallery
   state; done when the store has every unit online with a health snapshot of this run.
2. **Steady**: every unit decides matches at random (Poisson) times, on average one
   per unit per ten minutes times ``rate``; events/s ingested, publish-to-stored
   latency (the console's ``received_at`` minus the unit's ``decided_at``).
3. **Broker restart**: mosquitto stopped under the whole fleet and started again;
   units keep deciding matches into their outboxes meanwhile. Done when every unit
   has a health snapshot newer than the restart (it reconnected and said so), every
   outbox is empty (every event PUBACKed) and every event is stored.
4. **Gallery**: one signed bundle published to the fleet (retained manifest and
   chunks); done when the store shows every unit on the new version.

Events lost are counted by id: every event a unit generated must be in the store once.
The console runs in its own process (so its memory is its own), units run as many
paho clients per thread over a selector (see :mod:`device.lab.fleet_units`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device.console.store import Store, open_store
from device.console.tables import events as events_table
from device.console.tables import units as units_table
from device.errors import DeviceError
from device.events.client import BrokerLogin
from device.gallery.records import EnrollmentBatch, NewFace, NewIdentity
from device.gallery.store import GalleryStore
from device.lab.fleet_units import BASE_MATCH_INTERVAL_S, BENCH_MODEL, Shard, SimUnit
from device.ops.localbroker import LocalBroker
from device.sync.bundle import build_bundle
from device.sync.keys import TrustedKeys
from device.sync.mqtt import PublishReport
from device.types import Embedding

logger = logging.getLogger(__name__)

#: Dimension of the bench gallery's (random) embeddings.
BENCH_DIM: Final = 128
_POLL_S: Final = 0.2

StoreKind = Literal["sqlite", "postgresql"]


@dataclass(frozen=True)
class FleetBenchConfig:
    """What to run.

    Attributes:
        units: Simulated units.
        rate: Multiplier on the base match rate (one per unit per ten minutes).
        store: The console's store.
        steady_s: Length of the steady phase, seconds.
        outage_s: How long the broker stays down in the restart storm.
        threads: Threads driving the units.
        gallery_identities: Identities in the bundle of the gallery storm (3 faces each).
        health_interval_s: Period of each unit's retained health.
        timeout_s: Longest wait for any phase to complete.
        seed: Seed of everything random.
    """

    units: int = 1000
    rate: float = 60.0
    store: StoreKind = "sqlite"
    steady_s: float = 30.0
    outage_s: float = 3.0
    threads: int = 4
    gallery_identities: int = 300
    health_interval_s: float = 30.0
    timeout_s: float = 300.0
    seed: int = 0

    @property
    def events_per_unit_s(self) -> float:
        return self.rate / BASE_MATCH_INTERVAL_S


@dataclass
class FleetReport:
    """The bench's figures (seconds, bytes, events)."""

    config: dict[str, Any]
    connect_s: float = 0.0
    steady_offered_per_s: float = 0.0
    steady_ingested_per_s: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    restart_back_online_s: float = 0.0
    restart_outboxes_drained_s: float = 0.0
    restart_all_stored_s: float = 0.0
    restart_backlog_events: int = 0
    restart_drain_per_s: float = 0.0
    reconnect_spread_s: dict[str, float] = field(default_factory=dict)
    reconnect_peak_per_100ms: int = 0
    gallery_bytes: int = 0
    gallery_chunks: int = 0
    gallery_all_units_s: float = 0.0
    broker_rss_connected_bytes: int = 0
    broker_rss_with_bundle_bytes: int = 0
    broker_retained_bundle_bytes: int = 0
    broker_peak_rss_bytes: int = 0
    console_rss_bytes: int = 0
    console_peak_rss_bytes: int = 0
    bench_rss_bytes: int = 0
    events_published: int = 0
    events_stored: int = 0
    events_lost: int = 0
    events_unexpected: int = 0
    lost_decided_after_restart_s: list[float] = field(default_factory=list)
    duplicates_delivered: int = 0
    unrouted_pubacks: int = 0
    units_online_at_end: int = 0
    units_on_new_version: int = 0
    ingest: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------- processes


def _rss(pid: int | None, key: str = "VmRSS") -> int:
    """Resident memory of a process in bytes (``VmHWM`` for its peak); 0 when gone."""
    if pid is None:
        return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def raise_file_limit(wanted: int) -> int:
    """Raise this process's open-file soft limit towards ``wanted`` (the hard limit caps
    it); children such as mosquitto inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class _Console:
    """The console's ingester process (:mod:`device.lab.fleet_console`)."""

    def __init__(self, url: str, broker_url: str) -> None:
        self._argv = [sys.executable, "-m", "device.lab.fleet_console", url, broker_url]
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 120.0) -> None:
        """Start it and wait until it is subscribed.

        Raises:
            DeviceError: It exited or did not subscribe in time.
        """
        self.process = subprocess.Popen(self._argv, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        ready = threading.Event()
        line: list[str] = []

        def read() -> None:
            assert self.process is not None and self.process.stdout is not None
            line.append(self.process.stdout.readline())
            ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or line[0].strip() != "ready":
            self.process.kill()
            raise DeviceError(f"the console ingester did not subscribe within {timeout} s "
                              f"(exit status {self.process.poll()})")

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self, timeout: float = 60.0) -> dict[str, int]:
        """Stop the ingester; its counters (empty when it was stopped already)."""
        proc, self.process = self.process, None
        if proc is None:
            return {}
        try:
            out, _ = proc.communicate("stop\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return {}
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        return dict(json.loads(lines[-1])) if lines else {}


# ------------------------------------------------------------------ gallery


def _signing_key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fleet-%d" % seed).digest())


def build_bench_bundle(root: Path, identities: int, key: Ed25519PrivateKey, seed: int,
                       version: int = 2) -> Path:
    """A real signed full bundle of a gallery of random unit vectors; its directory."""
    rng = np.random.default_rng(seed)
    db = root / "central.db"
    batches = []
    for i in range(identities):
        faces = []
        for j in range(3):
            vector = rng.normal(size=BENCH_DIM).astype(np.float32)
            vector /= np.linalg.norm(vector)
            sha = hashlib.sha256(f"bench-{seed}-{i}-{j}".encode()).hexdigest()
            faces.append(NewFace(Embedding(vector, BENCH_MODEL), 0.8, sha))
        batches.append(EnrollmentBatch(NewIdentity(label=f"Person {i}"), tuple(faces)))
    with GalleryStore(db, model_id=BENCH_MODEL, dim=BENCH_DIM, create=True) as store:
        store.enroll_many(batches)
    out = root / f"bundle-v{version}"
    build_bundle(db, out, version=version, keys=[key])
    return out


# --------------------------------------------------------------------- bench


@dataclass
class _Watch:
    """Polls the store and the processes while a phase runs."""

    store: Store
    broker: LocalBroker
    console: _Console
    timeout_s: float
    peaks: dict[str, int] = field(default_factory=dict)

    def sample(self) -> None:
        for name, pid in (("broker", self.broker.pid), ("console", self.console.pid)):
            self.peaks[name] = max(self.peaks.get(name, 0), _rss(pid))

    def until(self, what: str, done: Callable[[], bool]) -> float:
        """Seconds until ``done()``; raises when the phase does not complete in time.

        Raises:
            DeviceError: Not done within the timeout.
        """
        start = time.monotonic()
        while not done():
            self.sample()
            if time.monotonic() - start > self.timeout_s:
                raise DeviceError(f"fleet bench: {what} did not happen within "
                                  f"{self.timeout_s:.0f} s")
            time.sleep(_POLL_S)
        return time.monotonic() - start


def _count_events(store: Store) -> int:
    return store.count_events()


def _units_fresh(store: Store, since: float) -> int:
    """Units online whose health snapshot was taken after ``since`` (epoch)."""
    query = sa.select(sa.func.count()).select_from(units_table).where(
        units_table.c.status == "online", units_table.c.health_at >= since)
    with store.engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def _units_on_version(store: Store, version: int) -> int:
    with store.engine.connect() as connection:
        rows = connection.execute(sa.select(units_table.c.gallery_json)).scalars().all()
    return sum(1 for row in rows if row and json.loads(row).get("version") == version)


def _latencies(store: Store, start: float, end: float) -> list[float]:
    query = sa.select(events_table.c.received_at - events_table.c.occurred_at).where(
        events_table.c.occurred_at >= start, events_table.c.occurred_at < end)
    with store.engine.connect() as connection:
        return [float(v) for v in connection.execute(query).scalars().all()]


def _stored_ids(store: Store) -> set[str]:
    with store.engine.connect() as connection:
        return set(connection.execute(sa.select(events_table.c.event_id)).scalars().all())


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@contextlib.contextmanager
def _store_url(kind: StoreKind, root: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{root / 'console.db'}"
        return
    from device.lab.pgcluster import create_database, pg_missing, postgres_cluster

    missing = pg_missing()
    if missing is not None:
        raise DeviceError(f"fleet bench --store postgresql: {missing}")
    with postgres_cluster() as base:
        yield create_database(base)


def _publish(bundle: Path, broker_url: str, timeout_s: float) -> PublishReport:
    """``facegate sync publish``, as the operator runs it: in a process of its own (paho's
    own loop uses select(), which cannot watch a descriptor above 1023, and this process
    holds one per unit).

    Raises:
        DeviceError: The publish failed.
    """
    argv = [sys.executable, "-c", "from device.cli import main; main()", "sync", "publish",
            str(bundle), "--broker", broker_url, "--json"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise DeviceError(f"fleet bench: publishing the bundle took over {timeout_s} s") from exc
    if done.returncode != 0:
        raise DeviceError(f"fleet bench: facegate sync publish failed: {done.stderr.strip()}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return PublishReport(out["manifest_topic"], out["chunks"], out["version"],
                         out["bundle_sha256"])


def _all(shards: list[Shard], action: Callable[[SimUnit], Any]) -> list[Any]:
    out: list[Any] = []
    for shard in shards:
        out.extend(shard.call(functools.partial(_each, shard, action)))
    return out


def _each(shard: Shard, action: Callable[[SimUnit], Any]) -> list[Any]:
    return [action(unit) for unit in shard.units]


def run_fleet_bench(config: FleetBenchConfig, *, workdir: Path | None = None,
                    say: Callable[[str], None] | None = None) -> FleetReport:
    """Run every phase and return the figures.

    Raises:
        DeviceError: A phase did not complete, mosquitto or PostgreSQL is missing.
    """
    say = say or (lambda text: logger.info("%s", text))
    if config.units < 1 or config.threads < 1:
        raise DeviceError("fleet bench: --units and --threads must be at least 1")
    raise_file_limit(4 * config.units + 1024)
    report = FleetReport(config=asdict(config))
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-")))
        broker = LocalBroker(workdir / "broker", extra_config=(
            "max_connections -1",
            # The console's persistent session must hold a backlog (a restart storm,
            # a slow store); mosquitto's default of 1000 queued messages drops the rest.
            "max_queued_messages 1000000",
            "max_inflight_messages 100"))
        broker.start()
        stack.callback(broker.close)
        url = stack.enter_context(_store_url(config.store, workdir))
        store = open_store(url)
        stack.callback(store.close)
        console = _Console(url, broker.url)
        console.start()
        console_stats: dict[str, int] = {}

        def stop_console() -> None:
            console_stats.update(console.stop())
        stack.callback(stop_console)
        watch = _Watch(store, broker, console, config.timeout_s)
        key = _signing_key(config.seed)
        bundle = build_bench_bundle(workdir, config.gallery_identities, key, config.seed)
        trusted = TrustedKeys.of(key.public_key())
        login = BrokerLogin(broker.url)
        rng = random.Random(config.seed)
        units = [SimUnit(f"fleet-{i:05d}", login, trusted, random.Random(rng.getrandbits(64)))
                 for i in range(config.units)]
        shards = [Shard(units[i::config.threads], f"fleet-shard-{i}",
                        events_per_unit_s=config.events_per_unit_s,
                        rng=random.Random(rng.getrandbits(64)),
                        health_interval_s=config.health_interval_s)
                  for i in range(min(config.threads, config.units))]

        def stop_shards() -> None:
            for shard in shards:
                shard.stop()
        stack.callback(stop_shards)

        # 1. connect
        t0 = time.time()
        for shard in shards:
            shard.start()
        report.connect_s = watch.until(
            "every unit online", lambda: _units_fresh(store, t0 - 1) >= config.units)
        time.sleep(1.0)
        report.broker_rss_connected_bytes = _rss(broker.pid)
        say(f"connect: {config.units} units online in {report.connect_s:.1f} s; broker RSS "
            f"{report.broker_rss_connected_bytes / 2**20:.1f} MiB")

        # 2. steady
        stored_before = _count_events(store)
        start = time.time()
        for shard in shards:
            shard.emitting.set()
        deadline = time.monotonic() + config.steady_s
        while time.monotonic() < deadline:
            watch.sample()
            time.sleep(_POLL_S)
        end = time.time()
        stored_at_end = _count_events(store)
        published = sum(len(ids) for ids in _all(shards, lambda u: u.counters.published))
        report.steady_offered_per_s = published / (end - start)
        report.steady_ingested_per_s = (stored_at_end - stored_before) / (end - start)
        watch.until("steady events stored",
                    lambda: _count_events(store) >= published)
        latencies = _latencies(store, start, end)
        report.latency_p50_ms = 1000 * statistics.median(latencies) if latencies else 0.0
        report.latency_p99_ms = 1000 * _percentile(latencies, 0.99)
        report.latency_max_ms = 1000 * max(latencies, default=0.0)
        say(f"steady: offered {report.steady_offered_per_s:.1f} events/s, ingested "
            f"{report.steady_ingested_per_s:.1f} events/s; latency p50 "
            f"{report.latency_p50_ms:.1f} ms, p99 {report.latency_p99_ms:.1f} ms")

        # 3. broker restart
        connects_before = _all(shards, lambda u: len(u.counters.connects))
        down = time.time()
        broker.stop()
        time.sleep(config.outage_s)
        backlog = sum(_all(shards, lambda u: len(u.outbox)))
        broker.start()
        up = time.time()
        up_mono = time.monotonic()
        report.restart_back_online_s = watch.until(
            "every unit back online after the restart",
            lambda: _units_fresh(store, up) >= config.units)
        watch.until("every outbox drained",
                    lambda: sum(_all(shards, lambda u: len(u.outbox))) == 0)
        report.restart_outboxes_drained_s = time.monotonic() - up_mono
        published = sum(len(ids) for ids in _all(shards, lambda u: u.counters.published))
        watch.until("every event stored", lambda: _count_events(store) >= published)
        report.restart_all_stored_s = time.monotonic() - up_mono
        report.restart_backlog_events = backlog
        report.restart_drain_per_s = (backlog / report.restart_all_stored_s
                                      if report.restart_all_stored_s else 0.0)
        reconnects = [u.counters.connects[n] - up for u, n in zip(
            [u for s in shards for u in s.units], connects_before, strict=True)
            if len(u.counters.connects) > n]
        if reconnects:
            report.reconnect_spread_s = {
                "first": round(min(reconnects), 3),
                "p50": round(statistics.median(reconnects), 3),
                "p99": round(_percentile(reconnects, 0.99), 3),
                "last": round(max(reconnects), 3)}
            bins: dict[int, int] = {}
            for t in reconnects:
                bins[int(t * 10)] = bins.get(int(t * 10), 0) + 1
            report.reconnect_peak_per_100ms = max(bins.values())
        say(f"restart: every unit back online in {report.restart_back_online_s:.1f} s, "
            f"outboxes drained in {report.restart_outboxes_drained_s:.1f} s, "
            f"{backlog} events of backlog stored in {report.restart_all_stored_s:.1f} s; "
            f"reconnects {report.reconnect_spread_s}")

        # 4. gallery bundle to every unit
        rss_before = _rss(broker.pid)
        payload = bundle / "payload"
        report.gallery_bytes = payload.stat().st_size
        t_pub = time.monotonic()
        sent = _publish(bundle, broker.url, config.timeout_s)
        report.gallery_chunks = sent.chunk_topics
        try:
            watch.until("every unit on the new gallery version",
                        lambda: _units_on_version(store, sent.version) >= config.units)
        except DeviceError as exc:
            views = _all(shards, lambda u: (u.gallery_version, u.transfer_progress))
            done = sum(1 for v, _ in views if v == sent.version)
            raise DeviceError(f"{exc}: {done} units have it, transfers in progress (chunks "
                              f"received): {sorted(p for _, p in views if p is not None)[:20]}"
                              ) from exc
        report.gallery_all_units_s = time.monotonic() - t_pub
        report.broker_rss_with_bundle_bytes = _rss(broker.pid)
        report.broker_retained_bundle_bytes = report.broker_rss_with_bundle_bytes - rss_before
        say(f"gallery: {report.gallery_bytes} bytes in {report.gallery_chunks} chunks, every "
            f"unit on version {sent.version} in {report.gallery_all_units_s:.1f} s")

        # the count: stop deciding, let every outbox drain, then compare ids
        for shard in shards:
            shard.emitting.clear()
        time.sleep(0.5)  # a fire already past its emitting check runs in this window
        watch.until("every outbox drained at the end",
                    lambda: sum(_all(shards, lambda u: len(u.outbox))) == 0)
        published = sum(len(ids) for ids in _all(shards, lambda u: u.counters.published))
        with contextlib.suppress(DeviceError):  # what is missing then is lost, and counted
            watch.until("every event stored at the end",
                        lambda: _count_events(store) >= published)
        watch.sample()
        report.broker_peak_rss_bytes = watch.peaks.get("broker", 0)
        report.console_peak_rss_bytes = max(watch.peaks.get("console", 0),
                                            _rss(console.pid, "VmHWM"))
        report.console_rss_bytes = _rss(console.pid)
        report.bench_rss_bytes = _rss(os.getpid())
        decided: dict[str, float] = {}
        for ids in _all(shards, lambda u: dict(u.counters.published)):
            decided.update(ids)
        generated = set(decided)
        stored = _stored_ids(store)
        report.lost_decided_after_restart_s = sorted(
            round(decided[i] - down, 3) for i in generated - stored)[:20]
        report.events_published = len(generated)
        report.events_stored = len(stored & generated)
        report.events_lost = len(generated - stored)
        report.events_unexpected = len(stored - generated)
        report.unrouted_pubacks = sum(_all(shards, lambda u: u.counters.unrouted))
        report.units_online_at_end = _units_fresh(store, t0 - 1)
        report.units_on_new_version = _units_on_version(store, sent.version)
        stop_shards()
        shards.clear()
        stop_console()
        report.ingest = dict(console_stats)
        report.duplicates_delivered = console_stats.get("duplicates", 0)
    return report

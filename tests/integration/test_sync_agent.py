"""The sync agent end to end against a real mosquitto: bundles published as retained
chunks, applied, state reported; resumption; forged chunks; hostile manifests."""

from __future__ import annotations

import fcntl
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device.events.config import MqttConfig
from device.ops.localbroker import LocalBroker
from device.sync.agent import AgentStats, SyncAgent
from device.sync.config import SyncConfig
from device.sync.mqtt import BrokerLogin, chunk_topic, manifest_topic, publish_bundle
from tests.support.gallery import T0
from tests.support.sync import (
    NOW,
    UNIT,
    Served,
    StateWatcher,
    World,
    http_server,
)

WAIT = 20.0


def refused(payload: dict[str, Any], reason: str) -> bool:
    """Whether a gallery state payload reports a refusal with ``reason`` as the last one."""
    return refusal(payload).startswith(f"refused ({reason})")


def refusal(payload: dict[str, Any]) -> str:
    return str((payload.get("last_refusal") or {}).get("message", ""))


class Harness:
    """A world, a broker, a state watcher, and agents started on demand."""

    def __init__(self, root: Path, broker: LocalBroker) -> None:
        self.world = World(root)
        self.broker = broker
        self.login = BrokerLogin(broker.url)
        self.watcher = StateWatcher(broker.url)
        self.agents: list[SyncAgent] = []
        self.mqtt = MqttConfig.model_validate({
            "unit_id": UNIT, "url": broker.url, "outbox_path": root / "outbox.sqlite3",
            "reconnect_min_s": 1, "reconnect_max_s": 2})

    def agent(self, now: float = NOW, **config: Any) -> SyncAgent:
        settings: dict[str, Any] = {"chunk_window": 3}
        settings.update(config)
        sync_kw = {k: settings.pop(k) for k in ("allow_insecure_http",) if k in settings}
        agent = SyncAgent(self.world.sync(now=now, **sync_kw), self.mqtt,
                          SyncConfig.model_validate({**settings, **sync_kw}))
        agent.start()
        self.agents.append(agent)
        return agent

    def publish_raw(self, topic: str, payload: bytes) -> None:
        host, port = self.broker.host, self.broker.port
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect(host, port)
        client.loop_start()
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(WAIT)
        client.disconnect()
        client.loop_stop()

    def close(self) -> None:
        for agent in self.agents:
            agent.close()
        self.watcher.close()


@pytest.fixture()
def h(tmp_path: Path, broker: LocalBroker) -> Iterator[Harness]:
    harness = Harness(tmp_path, broker)
    yield harness
    harness.close()


def wait(agent: SyncAgent, predicate: Any) -> AgentStats:
    assert agent.wait_for(predicate, WAIT), agent.stats()
    return agent.stats()


def active(version: int) -> Any:
    return lambda p: p["state"] == "active" and p["version"] == version


def test_fleet_bundles_full_then_delta(h: Harness) -> None:
    agent = h.agent()
    h.watcher.wait_for(lambda p: p["state"] == "empty" and p["version"] == 0)
    v1 = h.world.bundle(1, chunk_size=1024)
    report = publish_bundle(v1.directory, h.login)
    assert report.chunk_topics == len(v1.manifest.payload.chunks) > 3  # more than a window
    wait(agent, lambda s: s.applied == 1)
    state = h.watcher.wait_for(active(1))
    assert state["bundle_sha256"] == v1.manifest.digest
    assert state["identities"] == h.world.people
    h.world.edit()
    v2 = h.world.bundle(2, delta_from=v1.directory)
    publish_bundle(v2.directory, h.login)
    stats = wait(agent, lambda s: s.applied == 2)
    assert stats.refused == 0 and stats.transfer is None
    h.watcher.wait_for(active(2))
    assert h.world.snapshot()[:2] == (2, 2)


def test_interrupted_chunk_download_resumes_without_fetching_again(h: Harness) -> None:
    v1 = h.world.bundle(1, chunk_size=1024)
    n = len(v1.manifest.payload.chunks)
    have = n // 2
    publish_bundle(v1.directory, h.login, chunks=range(have))  # the upload broke off
    first = h.agent()
    stats = wait(first, lambda s: s.chunks_stored == have)
    assert stats.transfer == (1, have, n) and stats.applied == 0
    first.close()  # the unit restarts mid-download

    second = h.agent()
    stats = wait(second, lambda s: s.chunks_reused == have)
    assert stats.chunks_stored == 0
    publish_bundle(v1.directory, h.login, chunks=range(have, n), manifest=False)
    stats = wait(second, lambda s: s.applied == 1)
    assert stats.chunks_stored == n - have  # only the missing chunks crossed the network
    h.watcher.wait_for(active(1))


def test_forged_chunk_is_refused_and_the_signed_one_still_accepted(h: Harness) -> None:
    v1 = h.world.bundle(1, chunk_size=1024)
    n = len(v1.manifest.payload.chunks)
    base = "facegate/fleet/gallery"
    h.publish_raw(chunk_topic(base, 1, 0), b"\0" * 1024)  # a broker writer's forgery
    publish_bundle(v1.directory, h.login, chunks=range(1, n))
    agent = h.agent()
    stats = wait(agent, lambda s: s.chunks_rejected == 1 and s.refused == 1)
    assert stats.applied == 0 and stats.transfer is not None  # still waiting for chunk 0
    state = h.watcher.wait_for(lambda p: refused(p, "hash_mismatch"))
    assert refusal(state).startswith("refused (hash_mismatch): chunk 0")
    assert state["state"] == "empty"  # about the live gallery: there is none yet
    assert h.world.layout.live_info() is None
    publish_bundle(v1.directory, h.login, chunks=range(1))
    wait(agent, lambda s: s.applied == 1)
    h.watcher.wait_for(active(1))


def test_hostile_manifests_are_refused_and_the_agent_keeps_running(h: Harness) -> None:
    agent = h.agent()
    rng = random.Random(5)
    topic = manifest_topic()
    hostile = [
        (bytes(rng.randrange(256) for _ in range(300)), "malformed"),   # random bytes
        (b"\xc3\x28 not utf-8", "malformed"),
        (json.dumps({"format": "facegate-gallery-manifest"}).encode(), "malformed"),
        (b"[" * 60_000, "malformed"),                                   # deep nesting
        (b'{"a": "' + b"x" * (1024 * 1024) + b'"}', "too_large"),        # 1 MiB
    ]
    for index, (payload, reason) in enumerate(hostile, start=1):
        h.publish_raw(topic, payload)
        wait(agent, lambda s, i=index: s.refused == i)
        state = h.watcher.wait_for(
            lambda p, r=reason, i=index: refused(p, r) and len(h.watcher.payloads) > i)
        assert (state["state"], state["version"]) == ("empty", 0)
    # Larger than the packet size the agent announced: the broker never sends it.
    seen = agent.stats().manifests
    h.publish_raw(topic, b"x" * (6 * 1024 * 1024))
    v1 = h.world.bundle(1)
    publish_bundle(v1.directory, h.login)
    stats = wait(agent, lambda s: s.applied == 1)
    assert stats.manifests == seen + 1
    h.watcher.wait_for(active(1))


def test_attacks_over_mqtt_leave_the_unit_unchanged(h: Harness, tmp_path: Path) -> None:
    v1 = h.world.bundle(1)
    h.world.edit()
    v2 = h.world.bundle(2)
    agent = h.agent()
    publish_bundle(v2.directory, h.login)
    wait(agent, lambda s: s.applied == 1)
    before = h.world.snapshot()
    publish_bundle(v1.directory, h.login)  # rollback: an old, validly signed bundle
    wait(agent, lambda s: s.refused == 1)
    state = h.watcher.wait_for(lambda p: refused(p, "rollback") and p["version"] == 2)
    assert (state["state"], state["message"]) == ("active", None)
    assert h.world.snapshot() == before
    h.world.edit()
    v3 = h.world.bundle(3)
    forged = json.loads(v3.manifest.encode())
    forged["units"] = None
    forged["identities"] += 1
    h.publish_raw(manifest_topic(), json.dumps(forged).encode())
    wait(agent, lambda s: s.refused == 2)
    state = h.watcher.wait_for(lambda p: refused(p, "bad_signature"))
    assert (state["state"], state["version"]) == ("active", 2)
    assert h.world.snapshot() == before


def test_junk_on_a_manifest_topic_leaves_the_live_state_alone(h: Harness) -> None:
    """Anyone who can publish on a manifest topic can send junk: the retained state still
    says the live gallery is active; the refusal is reported beside it, and kept."""
    v1 = h.world.bundle(1)
    agent = h.agent()
    publish_bundle(v1.directory, h.login)
    wait(agent, lambda s: s.applied == 1)
    h.watcher.wait_for(active(1))
    h.publish_raw(manifest_topic(), b"{garbage")
    wait(agent, lambda s: s.refused == 1)
    state = h.watcher.wait_for(lambda p: refused(p, "malformed"))
    assert (state["state"], state["version"], state["message"]) == ("active", 1, None)
    assert state["bundle_sha256"] == v1.manifest.digest
    assert state["last_refusal"]["version"] is None  # junk has no version
    agent.close()
    again = h.agent()  # a restart reports the same: the live gallery, and the refusal
    wait(again, lambda s: s.refused == 1)  # the retained junk is refused again
    late = StateWatcher(h.broker.url)
    try:
        state = late.wait_for(lambda p: refused(p, "malformed"))
        assert (state["state"], state["version"]) == ("active", 1)
    finally:
        late.close()


def test_per_unit_override_topic(h: Harness) -> None:
    agent = h.agent()
    v1 = h.world.bundle(1, units=[UNIT])
    report = publish_bundle(v1.directory, h.login, unit=UNIT)
    assert report.manifest_topic == f"facegate/{UNIT}/gallery/manifest"
    wait(agent, lambda s: s.applied == 1)
    h.watcher.wait_for(active(1))


def test_payload_from_the_manifest_url(h: Harness) -> None:
    served = Served(b"")
    with http_server(served) as url:
        v1 = h.world.bundle(1, url=url)
        served.data = (v1.directory / "payload").read_bytes()
        agent = h.agent(allow_insecure_http=True)
        publish_bundle(v1.directory, h.login, chunks=range(0))  # manifest only
        wait(agent, lambda s: s.applied == 1)
    assert served.ranges == [None]
    h.watcher.wait_for(active(1))


def test_a_gallery_whose_manifest_expired_is_reported_stale(h: Harness) -> None:
    """A broker writer who withholds new bundles cannot freeze the unit unnoticed."""
    v1 = h.world.bundle(1, expires_in_s=2 * 3600)  # expires at T0 + 2 h; now is T0 + 1 h
    assert h.world.sync().apply_dir(v1.directory).outcome == "ok"
    fresh = h.agent()
    h.watcher.wait_for(active(1))
    assert fresh.stats().errors == 0
    fresh.close()
    later = h.agent(now=T0 + 3 * 3600)
    wait(later, lambda s: s.errors == 1)
    state = h.watcher.wait_for(lambda p: p["state"] == "failed")
    assert state["message"].startswith("error (expired): the live gallery (version 1) expired")
    assert state["version"] == 1  # still the gallery the unit matches with


def test_state_through_the_event_publisher(h: Harness) -> None:
    """With the pipeline's Publisher given, state goes out on its connection."""
    from device.events.mqtt import Publisher

    with Publisher(h.mqtt) as publisher:
        agent = SyncAgent(h.world.sync(), h.mqtt, SyncConfig(), state_publisher=publisher)
        agent.start()
        h.agents.append(agent)
        v1 = h.world.bundle(1)
        publish_bundle(v1.directory, h.login)
        wait(agent, lambda s: s.applied == 1)
        h.watcher.wait_for(active(1))
        agent.close()


def test_a_busy_gallery_is_retried_not_dropped(h: Harness) -> None:
    """While another process (here: this test) applies a bundle, the agent waits."""
    agent = h.agent(retry_min_s=0.05)
    h.watcher.wait_for(lambda p: p["state"] == "empty")
    fd = os.open(h.world.layout.root / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        v1 = h.world.bundle(1)
        publish_bundle(v1.directory, h.login)
        wait(agent, lambda s: s.manifests == 1)
        assert agent.stats().applied == 0
    finally:
        os.close(fd)  # the other apply is done
    wait(agent, lambda s: s.applied == 1)
    h.watcher.wait_for(active(1))

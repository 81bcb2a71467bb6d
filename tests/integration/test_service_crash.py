"""The duplicate path after a crash: ``facegate run`` SIGKILLed while a decision sits in
``pending/`` between the journal and the outbox, then restarted.

A real ``facegate run`` child replays the Hamilton clip against a real mosquitto; a
checkpoint hook (``$FACEGATE_CHECKPOINT_HOOK``, see ``tests/support/crash_hook.py``) SIGKILLs it at
the first match's named step. Three kills in a row, each run recovering what the
previous one left, then one run to the end of the clip:

1. at ``sink.audit``: journaled, not audited, not queued;
2. at ``sink.outbox``: journaled and audited, not queued;
3. at ``sink.unjournal``, after the broker acknowledged the event: queued and
   *delivered*, but the journal entry is still there — the next start queues it
   again, so it is delivered twice with the same ``event_id``.

A persistent subscriber receives everything; a consumer that de-duplicates on
``event_id`` counts each committed decision exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.audit import AuditKind, read_records
from device.checkpoint import HOOK_ENV
from device.events.outbox import Outbox
from device.ops.localbroker import LocalBroker
from device.service.pipeline import build_embedder
from device.vision.blazeface import BlazeFaceDetector
from tests.support.events import Collector
from tests.support.service import (
    CLIP,
    THRESHOLD,
    THRESHOLD_FMR,
    clip_camera,
    enroll_clip_people,
    require_embedder_template,
    service_config,
)

UNIT = "unit-1"
REPO = Path(__file__).resolve().parents[2]
FACEGATE = str(Path(sys.executable).parent / "facegate")

CONFIG = """\
unit_id = "unit-1"
state_dir = "{state}"

[[cameras]]
type = "video"
camera_id = "front"
path = "{clip}"

[gallery]
path = "{gallery}"
threshold = {threshold}
threshold_fmr = {fmr}

[pipeline]
queue_policy = "block"
drain_timeout_s = 15

[health]
interval_s = 1

[mqtt]
url = "{broker}"
reconnect_min_s = 1
reconnect_max_s = 1
"""


class DedupConsumer:
    """What a consumer of the match topic does: one count per ``event_id``."""

    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()

    def feed(self, event_ids: list[str]) -> None:
        self.deliveries.update(event_ids)

    @property
    def counted(self) -> set[str]:
        return set(self.deliveries)


def _run(config_path: Path, log: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``facegate -v run`` to its end (a kill or the end of the clip)."""
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1",
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                             os.environ.get("PYTHONPATH")]))}
    child_env.pop(HOOK_ENV, None)
    child_env.update(env)
    proc = subprocess.run([FACEGATE, "-v", "run", "--config", str(config_path)], cwd=REPO,
                          env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300, check=False)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(proc.stdout)
    return proc


def _audited(audit: Path) -> list[str]:
    _, records = read_records(audit)
    return [str(r.payload_obj()["event_id"]) for r in records
            if r.kind == AuditKind.MATCH_DECISION.value]


def _journaled(state: Path) -> list[str]:
    return sorted(p.stem for p in (state / "pending").glob("*.json"))


def _queued(outbox: Path) -> list[str]:
    with Outbox(outbox) as box:
        return [r.event_id or "" for r in box.pending(limit=1000)]


@pytest.fixture()
def collector(broker: LocalBroker) -> Iterator[Collector]:
    with Collector(broker.host, broker.port, [f"facegate/{UNIT}/+/match"],
                   client_id="service-crash-subscriber", persistent=True) as c:
        assert c.wait_subscribed()
        yield c
    assert not c.invalid, c.invalid[:3]


def test_a_decision_killed_in_pending_is_delivered_and_counted_once(
    datasets: Path, tmp_path: Path, broker: LocalBroker, collector: Collector
) -> None:
    require_embedder_template()
    gallery = tmp_path / "gallery.db"
    config = service_config(tmp_path, broker.url, [clip_camera(datasets)], gallery)
    detector = BlazeFaceDetector()
    with build_embedder(config) as embedder:
        enroll_clip_people(datasets, gallery, detector, embedder)
    detector.close()
    state = config.state_dir
    state.mkdir(parents=True)
    config_path = tmp_path / "config.toml"
    config_path.write_text(CONFIG.format(state=state, gallery=gallery, broker=broker.url,
                                         clip=datasets / CLIP, threshold=THRESHOLD,
                                         fmr=THRESHOLD_FMR))
    log = state / "service.log"
    outbox = config.mqtt.outbox_path
    hook = {HOOK_ENV: "tests.support.crash_hook:kill"}

    # 1. Killed before the audit record: only the journal holds the decision.
    proc = _run(config_path, log, **hook, FACEGATE_KILL_AT="sink.audit")
    assert proc.returncode == -9, proc.stdout[-3000:]
    [a] = _journaled(state)
    assert _audited(config.audit_path) == [] and a not in _queued(outbox)

    # 2. The restart finishes A; the next decision B is killed before the outbox.
    proc = _run(config_path, log, **hook, FACEGATE_KILL_AT="sink.outbox")
    assert proc.returncode == -9, proc.stdout[-3000:]
    assert f"recovered match event {a}" in proc.stdout
    [b] = _journaled(state)
    assert b != a and _audited(config.audit_path) == [a, b]
    assert b not in _queued(outbox)

    # 3. The restart finishes B; C is queued and acknowledged, then the process dies
    # before its journal entry is removed.
    proc = _run(config_path, log, **hook, FACEGATE_KILL_AT="sink.unjournal",
                FACEGATE_KILL_AFTER_DELIVERY=str(outbox))
    assert proc.returncode == -9, proc.stdout[-3000:]
    [c] = _journaled(state)
    assert c not in (a, b) and _audited(config.audit_path) == [a, b, c]
    assert _queued(outbox) == []  # C left the outbox: the broker had it
    assert collector.wait_for(lambda ms: any(m.json()["event_id"] == c for m in ms), 30)

    # 4. No hook: C is queued again (delivered a second time), the clip plays out.
    proc = _run(config_path, log)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"recovered match event {c}" in proc.stdout
    assert _journaled(state) == [] and _queued(outbox) == []
    committed = _audited(config.audit_path)
    assert len(committed) == len(set(committed))  # one audit record per event, always

    def received() -> list[str]:
        return [str(m.json()["event_id"]) for m in collector.messages]

    assert collector.wait_for(lambda _: set(committed) <= set(received()), 30), (
        sorted(set(committed) - set(received())))
    consumer = DedupConsumer()
    consumer.feed(received())
    assert consumer.deliveries[a] >= 1 and consumer.deliveries[b] >= 1
    assert consumer.deliveries[c] == 2  # the duplicate path: same event_id twice
    assert consumer.counted == set(committed)  # each decision counted once
    print(f"{len(committed)} committed decisions, {sum(consumer.deliveries.values())} "
          f"deliveries, counted once each; {c} delivered twice")

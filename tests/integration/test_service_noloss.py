"""No loss through the real ``facegate run``: SIGKILL at seeded random moments, broker
outages, restarts — a subscriber still receives every event the service committed.

The service replays the Hamilton clip in a loop (so it keeps deciding: a new match
for each new track of an enrolled person). Each round starts ``facegate run`` as a
child process, maybe stops or starts the broker part-way (seeded choice), waits until
the service has committed a seeded number of further decisions (read from its audit
log, the record of every committed event), and kills it with SIGKILL. A last round
restarts both and stops the service with SIGTERM once its outbox is empty.

What must arrive: every ``event_id`` of a ``match_decision`` record in the audit log
(each published event has one; the decision journal makes the pair crash-safe). A
persistent subscriber session queues what is published while it is away.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.audit import AuditKind, read_records
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
#: The console script of the interpreter running the tests (the venv's).
FACEGATE = str(Path(sys.executable).parent / "facegate")


class Service:
    """``facegate -v run --config FILE`` as a child process.

    Its log lines are read by a thread (and copied to ``log``); a test waits on them:
    the service logs ``... event <uuid>`` right after it committed a decision.
    """

    def __init__(self, config_path: Path, log: Path) -> None:
        self._log = log.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [FACEGATE, "-v", "run", "--config", str(config_path)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def decisions(self) -> int:
        with self._cond:
            return sum(1 for line in self.lines if ": event " in line)

    def wait_decisions(self, count: int, timeout: float) -> bool:
        """Wait until this process has committed ``count`` decisions (False if it died)."""
        with self._cond:
            self._cond.wait_for(lambda: self.decisions() >= count or self._eof, timeout)
        return self.decisions() >= count

    def tail(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-40:])

    def _finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self._finish(30)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self._finish(timeout)


def committed(audit: Path) -> list[str]:
    """Event ids of every match decision in the audit log."""
    _, records = read_records(audit)
    return [str(r.payload_obj()["event_id"]) for r in records
            if r.kind == AuditKind.MATCH_DECISION.value]


@pytest.fixture()
def collector(broker: LocalBroker) -> Iterator[Collector]:
    with Collector(broker.host, broker.port, [f"facegate/{UNIT}/+/match"],
                   client_id="service-noloss-subscriber", persistent=True) as c:
        assert c.wait_subscribed()
        yield c
    assert not c.invalid, c.invalid[:3]


def test_every_committed_event_arrives_despite_sigkill_and_outages(
    datasets: Path, tmp_path: Path, broker: LocalBroker, collector: Collector
) -> None:
    require_embedder_template()
    rng = random.Random(20240501)
    gallery = tmp_path / "gallery.db"
    config = service_config(tmp_path, broker.url, [clip_camera(datasets, loop=True)], gallery)
    detector = BlazeFaceDetector()
    with build_embedder(config) as embedder:
        enroll_clip_people(datasets, gallery, detector, embedder)
    detector.close()
    config_path = tmp_path / "config.toml"
    config_path.write_text(CONFIG.format(
        state=config.state_dir, gallery=gallery, broker=broker.url,
        clip=datasets / CLIP, threshold=THRESHOLD, fmr=THRESHOLD_FMR))
    log = config.state_dir / "service.log"
    config.state_dir.mkdir(parents=True)

    kinds = ["up", "down-then-up", "up-then-down"]
    scenarios = [*kinds, rng.choice(kinds)]  # each kind at least once, in seeded order
    rng.shuffle(scenarios)
    rounds = len(scenarios)
    for round_no, scenario in enumerate(scenarios):
        if scenario == "down-then-up" and broker.running:
            broker.stop()
        elif scenario != "down-then-up" and not broker.running:
            broker.start()
        toggle_after = rng.randint(0, 2)
        kill_after = toggle_after + rng.randint(1, 2)
        service = Service(config_path, log)
        try:
            assert service.wait_decisions(toggle_after, 120), service.tail()
            if scenario == "down-then-up":
                broker.start()
            elif scenario == "up-then-down":
                broker.stop()
            assert service.wait_decisions(kill_after, 120), service.tail()
            # A seeded random moment after that decision: mid-frame, mid-commit, mid-send.
            threading.Event().wait(rng.uniform(0.0, 0.3))
        finally:
            service.kill()
        print(f"round {round_no}: {scenario}, SIGKILL after {service.decisions()} decision(s); "
              f"{len(committed(config.audit_path))} committed so far")

    if not broker.running:
        broker.start()
    service = Service(config_path, log)
    try:
        assert service.wait_decisions(1, 120), service.tail()
    finally:
        code = service.terminate()
    assert code == 0, service.tail()
    must_arrive = committed(config.audit_path)
    assert len(must_arrive) >= rounds + 1
    assert len(set(must_arrive)) == len(must_arrive)  # one record per event

    def arrived() -> set[str]:
        return {m.json()["event_id"] for m in collector.messages}

    assert collector.wait_for(lambda _: set(must_arrive) <= arrived(), 60), (
        sorted(set(must_arrive) - arrived()))
    print(f"{len(must_arrive)} committed events, all received "
          f"({len(collector.messages)} deliveries: duplicates are allowed)")
    # The graceful stop drained the outbox, and no decision is left half-done.
    with Outbox(config.mqtt.outbox_path) as outbox:
        assert outbox.depth() == 0
    assert not list((config.state_dir / "pending").glob("*.json"))


CONFIG = """\
unit_id = "unit-1"
state_dir = "{state}"

[[cameras]]
type = "video"
camera_id = "front"
path = "{clip}"
loop = true

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

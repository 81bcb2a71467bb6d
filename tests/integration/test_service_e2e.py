"""End to end: the Hamilton clip through the real service to a real mosquitto broker.

The clip (275 frames, 640x360) shows Lin-Manuel Miranda on stage, Alex Lacamoire at
the piano and in profile, and members of the audience. Both musicians are enrolled
from one reference photo each; the audience is not. The service runs in-process
with the real BlazeFace and dlib models, replaying the clip as fast as it can
(``block`` queue policy: every frame is processed, so the result does not depend on
the machine's load), plus a second camera whose file does not exist.

Checked: match events for Lin-Manuel Miranda and for nobody else, each at a frame
where that person is on screen, one per track per identity; every payload valid against its
schema and free of images and embeddings; one audit decision record per published
event, and the chain verifies; a track end follows each match; the frame-to-ack
latency is in the health report; the broken camera is reported ``failed`` on the
health topic while the other one runs; and no embedding the pipeline computed is in
any file the service wrote (gallery, outbox, audit log, health file, journal, log).

Alex Lacamoire is *not* matched, and ``test_alex_is_matched`` records that as an
expected failure: in this clip his face is either 29 px wide at the piano (frames
0-19; BlazeFace finds it only with tiling, and the live quality gate calls it too
small and blurred) or in a 70-80 degree profile (frames 22-34). Embedding every
detection of the clip (tiling on, no quality gate) against his reference photo, the
best scores are 0.9267, 0.9263, 0.9257, 0.9254, 0.9246 ... and most of the top ones
are *not* him (audience members, a background blob during Lin's close-up): no
threshold separates him from strangers, let alone a safe one (FMR 1e-3 on LFW is
0.9306; the test's, FMR 1e-4, is 0.9432). Lin's close-ups score up to 0.98. The
face_recognition library itself puts Alex at distance 0.59-0.64 from his photo, on
its own 0.6 tolerance.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device.audit import AuditKind, read_records, verify
from device.events.schema import MATCH_SCHEMA, TRACK_END_SCHEMA, validate
from device.ops.localbroker import LocalBroker
from device.service.pipeline import RecognitionService, build_detector, build_embedder
from device.vision.blazeface import BlazeFaceDetector
from tests.support.events import Collector
from tests.support.service import (
    CLIP_FRAMES,
    PEOPLE,
    RecordingEmbedder,
    clip_camera,
    enroll_clip_people,
    files_containing,
    frame_of,
    needles,
    require_embedder_template,
    service_config,
)

#: ``[decision] template`` of the run: ``best`` (the default), or ``mean`` with
#: FACEGATE_E2E_TEMPLATE=mean (needs the template calibration table in the model cache).
TEMPLATE_MODE = os.environ.get("FACEGATE_E2E_TEMPLATE", "best")

#: Frames where each enrolled person's face is on screen (from the clip; generous at
#: the cuts). Lin: on stage far away (0-20), close up (80-212). Alex: at the piano and
#: in profile (0-32). The rest is the audience.
ON_SCREEN = {
    "lin-manuel-miranda": [(0, 22), (78, 214)],
    "alex-lacamoire": [(0, 34)],
}


@pytest.fixture(scope="module")
def broker_once(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.skip("mosquitto not installed (bash provisioning/setup-dev.sh installs it)")
    with LocalBroker(workdir=tmp_path_factory.mktemp("broker")) as broker:
        yield broker


@pytest.fixture(scope="module")
def run(datasets: Path, tmp_path_factory: pytest.TempPathFactory,
        broker_once: LocalBroker) -> Iterator[dict[str, Any]]:
    """Run the service over the clip once (for every test here); yield what they check."""
    require_embedder_template()
    broker = broker_once
    tmp_path = tmp_path_factory.mktemp("service")
    detector = BlazeFaceDetector()
    gallery = tmp_path / "gallery.db"
    with build_embedder(service_config(tmp_path, broker.url, [clip_camera(datasets)],
                                       gallery)) as enroll_embedder:
        enroll_clip_people(datasets, gallery, detector, enroll_embedder)
    detector.close()
    config = service_config(
        tmp_path, broker.url,
        [clip_camera(datasets), {"type": "video", "camera_id": "back",
                                 "path": str(tmp_path / "no-such-clip.mp4")}],
        gallery, decision={"report_unknown_tracks": True, "template": TEMPLATE_MODE},
    )
    config.state_dir.mkdir(parents=True)
    log_file = config.state_dir / "service.log"  # the service's log, scanned below
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    embedder = RecordingEmbedder(build_embedder(config))
    try:
        with Collector(broker.host, broker.port, ["facegate/#"]) as collector:
            assert collector.wait_subscribed()
            with RecognitionService(config, detector=build_detector(config),
                                    embedder=embedder) as service:
                reason = service.run()
            assert collector.wait_for(
                lambda msgs: any(m.topic.endswith("/status") and m.payload == b"offline"
                                 for m in msgs), 10)
            yield {"config": config, "reason": reason, "collector": collector,
                   "embedder": embedder, "messages": list(collector.messages)}
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def _payloads(messages: list[Any], suffix: str) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic.endswith(suffix) and not m.retain]


def test_hamilton_clip_end_to_end(run: dict[str, Any]) -> None:
    config = run["config"]
    messages = run["messages"]
    assert run["reason"] == "every camera stopped; failed: back"
    assert not run["collector"].invalid, run["collector"].invalid[:3]

    matches = _payloads(messages, "/front/match")
    for payload in matches:
        validate(MATCH_SCHEMA, payload)
    print("\nmatch events:")
    for m in matches:
        print(f"  track {m['track_id']:>2} {m['identity_id']:<20} similarity "
              f"{m['similarity']:.4f} decided at frame {frame_of(_epoch(m['decided_at']))}")
    identities = {m["identity_id"] for m in matches}
    assert "lin-manuel-miranda" in identities, f"matched {identities}"
    assert identities <= set(PEOPLE), f"matched {identities}"
    # One event per track per identity.
    keys = [(m["camera"], m["track_id"], m["identity_id"]) for m in matches]
    assert len(keys) == len(set(keys))
    # Nobody else: every match is decided while its person is on screen.
    for m in matches:
        frame = frame_of(_epoch(m["decided_at"]))
        assert any(lo <= frame <= hi for lo, hi in ON_SCREEN[m["identity_id"]]), m

    # A matched track that ends sends its last-seen update.
    ends = _payloads(messages, "/front/track_end")
    for payload in ends:
        validate(TRACK_END_SCHEMA, payload)
    assert {e["match_event_id"] for e in ends} == {m["event_id"] for m in matches}
    assert all(e["frames_seen"] >= 3 for e in ends)

    # One audit decision record per published event; the chain verifies.
    _, records = read_records(config.audit_path)
    decided = [r.payload_obj() for r in records if r.kind == AuditKind.MATCH_DECISION.value]
    assert sorted(str(r["event_id"]) for r in decided) == sorted(m["event_id"] for m in matches)
    expected = (config.gallery.threshold if TEMPLATE_MODE == "best"
                else config.match_threshold(run["embedder"].model_id).value)
    assert all(r["threshold"] == expected for r in decided)
    assert all(r["gallery_version"] == 1 for r in decided)
    assert verify(config.audit_path).ok

    # Health: every frame processed, nothing dropped, the latency of each stage and
    # from frame to broker acknowledgement.
    health = json.loads(config.health_path.read_text())
    pipeline = health["pipeline"]
    assert pipeline["frames_processed"] == CLIP_FRAMES
    assert pipeline["frames_dropped"] == 0
    assert pipeline["matches"] == len(matches)
    ack = pipeline["capture_to_ack"]
    assert ack is not None and ack["count"] == len(matches)
    print(f"frame-to-ack latency: p50 {ack['p50_ms']:.1f} ms, p95 {ack['p95_ms']:.1f} ms "
          f"over {ack['count']} events")
    print("stage latency (ms):", {k: (v["p50_ms"], v["p95_ms"])
                                  for k, v in pipeline["stages"].items()})
    assert health["outbox"]["depth"] == 0
    assert health["cameras"]["front"]["unknown_tracks"] >= 1  # the audience, as a number


@pytest.mark.xfail(reason="Alex is only a 29-px face or a deep profile in this clip: no "
                   "similarity clears a safe threshold (see the module doc)", strict=False)
def test_alex_is_matched(run: dict[str, Any]) -> None:
    matches = _payloads(run["messages"], "/front/match")
    assert "alex-lacamoire" in {m["identity_id"] for m in matches}


def test_broken_camera_is_reported_while_the_other_runs(run: dict[str, Any]) -> None:
    healths = [m.json() for m in run["messages"] if m.topic.endswith("/health")]
    assert healths
    live = [h for h in healths
            if h["cameras"]["front"]["state"] == "running" and h["cameras"]["front"]["frames"] > 0]
    assert live, "no health message while the clip was playing"
    for h in live:
        back = h["cameras"]["back"]
        assert back["state"] == "failed"
        assert "no-such-clip.mp4" in back["last_error"]
    assert healths[-1]["status"] in ("degraded", "error")


def test_no_embedding_reaches_any_file(run: dict[str, Any]) -> None:
    config = run["config"]
    vectors = run["embedder"].vectors
    assert len(vectors) >= 5
    patterns = needles(vectors)
    written = sorted(str(p.relative_to(config.state_dir)) for p in config.state_dir.rglob("*")
                     if p.is_file())
    assert {"audit.db", "outbox.sqlite3", "health.json", "service.log"} <= set(written)
    targets = [config.state_dir, Path(config.gallery.path or "")]
    for root in targets:
        assert files_containing(root if root.is_dir() else root.parent, patterns) == {}
    # The payloads on the wire, too (the privacy guard also ran on each).
    for message in run["messages"]:
        assert not any(p in message.payload for p in patterns if len(p) >= 64)


def _epoch(text: str) -> float:
    from device.events.schema import parse_timestamp

    return parse_timestamp(text)

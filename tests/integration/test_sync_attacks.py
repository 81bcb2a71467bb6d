"""Gallery sync acceptance: every attack is refused with nothing changed, and says why.

Each refusal test asserts three things:

(a) the stored version (the floor in ``sync_state.json`` and the live gallery's own
    version) is unchanged;
(b) the live gallery file's bytes are unchanged (sha256);
(c) the reason code reaches the retained ``facegate/<unit>/gallery/state`` topic of a
    real mosquitto, published through the event layer's :class:`Publisher`, as its
    ``last_refusal`` while ``state`` still describes the live gallery (``active``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device.audit import AuditKind, AuditLog, read_records
from device.events.config import MqttConfig
from device.events.mqtt import Publisher
from device.gallery.store import GalleryStore
from device.ops.localbroker import LocalBroker
from device.sync.apply import ApplyResult, GallerySync
from device.sync.bundle import BuiltBundle
from device.sync.manifest import MAX_MANIFEST_BYTES, Manifest
from device.sync.state import GalleryState
from device.sync.transport import PartialPayload
from tests.support.gallery import T0
from tests.support.sync import (
    NOW,
    UNIT,
    Served,
    StateWatcher,
    World,
    gallery_content,
    http_server,
)


@dataclass
class Unit:
    """A unit at version 2 (v1 then v2 applied), reporting state through a real broker."""

    world: World
    v1: BuiltBundle
    v2: BuiltBundle
    publisher: Publisher
    watcher: StateWatcher
    before: tuple[int, int, str]

    def sync(self, **kw: Any) -> GallerySync:
        def report(state: GalleryState) -> None:
            self.publisher.publish_state("gallery/state", state.payload(UNIT))

        return self.world.sync(on_state=report, **kw)

    def apply(self, bundle: Path, **kw: Any) -> ApplyResult:
        return self.sync(**kw).apply_dir(bundle)

    def assert_refused(self, result: ApplyResult, reason: str) -> dict[str, Any]:
        """The retained state's ``last_refusal`` (the live ``state`` is checked too)."""
        assert (result.outcome, result.reason) == ("refused", reason), result
        assert self.world.snapshot() == self.before           # (a) and (b)
        state = self.watcher.wait_for(                        # (c)
            lambda p: (p.get("last_refusal") or {}).get("message", "").startswith(
                f"refused ({reason})"))
        assert (state["version"], state["identities"]) == (2, self.world.people)
        assert (state["state"], state["message"]) == ("active", None)
        assert state["last_refusal"]["reason"] == reason
        assert not list(self.world.layout.versions.glob("*.tmp"))
        return dict(state["last_refusal"])


@pytest.fixture()
def unit(tmp_path: Path, broker: LocalBroker) -> Iterator[Unit]:
    world = World(tmp_path)
    v1 = world.bundle(1, chunk_size=2048)
    world.edit()
    v2 = world.bundle(2, chunk_size=2048)
    for bundle in (v1, v2):
        assert world.sync().apply_dir(bundle.directory).outcome == "ok"
    config = MqttConfig.model_validate({"unit_id": UNIT, "url": broker.url,
                                        "outbox_path": tmp_path / "outbox.sqlite3"})
    watcher = StateWatcher(broker.url)
    with Publisher(config) as publisher:
        yield Unit(world, v1, v2, publisher, watcher, world.snapshot())
    watcher.close()


def edited_manifest(bundle: Path, out: Path, edit: Any) -> Path:
    """A copy of ``bundle`` whose manifest JSON was changed by ``edit`` (signatures kept)."""
    shutil.copytree(bundle, out)
    doc = json.loads((out / "manifest.json").read_bytes())
    edit(doc)
    (out / "manifest.json").write_text(json.dumps(doc))
    return out


# -------------------------------------------------------------------- signatures


def test_bad_signature(unit: Unit, tmp_path: Path) -> None:
    unit.world.edit()
    v3 = unit.world.bundle(3)

    def more_faces(doc: dict[str, Any]) -> None:
        doc["identities"] += 1  # any edit after signing

    forged = edited_manifest(v3.directory, tmp_path / "forged", more_faces)
    state = unit.assert_refused(unit.apply(forged), "bad_signature")
    assert "altered after signing" in state["message"]


def test_too_few_distinct_keys_for_the_threshold(unit: Unit) -> None:
    unit.world.edit()
    # Key 2 is not trusted: its signature does not count toward the threshold of 2.
    v3 = unit.world.bundle(3, keys=(0, 2))
    result = unit.apply(v3.directory, trusted=(0, 1), threshold=2)
    state = unit.assert_refused(result, "threshold")
    assert "1 distinct trusted key(s) signed; 2 required" in state["message"]
    # The same bundle signed by both trusted keys is accepted.
    v3b = unit.world.bundle(3, name="v3b", keys=(0, 1))
    assert unit.apply(v3b.directory, trusted=(0, 1), threshold=2).outcome == "ok"


def test_the_same_key_counted_twice(unit: Unit, tmp_path: Path) -> None:
    unit.world.edit()
    v3 = unit.world.bundle(3)

    def sign_twice(doc: dict[str, Any]) -> None:
        doc["signatures"] = doc["signatures"] * 2

    twice = edited_manifest(v3.directory, tmp_path / "twice", sign_twice)
    unit.assert_refused(unit.apply(twice, trusted=(0, 1), threshold=2), "duplicate_signature")


# ------------------------------------------------------------ versions and time


def test_rollback_to_an_older_version(unit: Unit) -> None:
    state = unit.assert_refused(unit.apply(unit.v1.directory), "rollback")
    assert "version 1 is not newer than the stored version 2" in state["message"]


def test_same_version_with_other_content_is_a_rollback(unit: Unit) -> None:
    unit.world.edit()
    other_v2 = unit.world.bundle(2, name="other-v2")
    unit.assert_refused(unit.apply(other_v2.directory), "rollback")
    # The bundle that *is* live is reported as current, not refused.
    assert unit.apply(unit.v2.directory).outcome == "current"


def test_expired_manifest_freeze(unit: Unit) -> None:
    unit.world.edit()
    v3 = unit.world.bundle(3, expires_in_s=60)  # built at T0, the unit's clock is T0 + 1 h
    state = unit.assert_refused(unit.apply(v3.directory), "expired")
    assert "expired at" in state["message"]


def test_expired_manifest_refused_even_when_the_clock_is_reset(unit: Unit) -> None:
    """A Pi without an RTC may boot in 1970; time never runs behind the newest applied
    manifest's creation, so an old expired manifest still looks expired."""
    unit.world.edit()
    stale = unit.world.root / "bundles" / "stale"
    from device.sync.bundle import build_bundle

    build_bundle(unit.world.central, stale, version=3, keys=[unit.world.keys[0]],
                 clock=lambda: T0 - 2 * 86400, expires_in_s=86400)
    unit.assert_refused(unit.apply(stale, now=0.0), "expired")


# ------------------------------------------------------------------------- sizes


def test_manifest_larger_than_its_cap(unit: Unit, tmp_path: Path) -> None:
    unit.world.edit()
    v3 = unit.world.bundle(3)
    big = tmp_path / "big"
    shutil.copytree(v3.directory, big)
    padded = (big / "manifest.json").read_bytes().rstrip() + b" " * MAX_MANIFEST_BYTES
    (big / "manifest.json").write_bytes(padded)  # still valid JSON, and still signed
    unit.assert_refused(unit.apply(big), "too_large")


def test_payload_larger_than_the_cap_is_refused_before_downloading(unit: Unit) -> None:
    unit.world.edit()
    v3 = unit.world.bundle(3)
    fetched: list[Manifest] = []

    def fetch(manifest: Manifest, part: PartialPayload) -> Path:
        fetched.append(manifest)
        raise AssertionError("nothing may be downloaded")

    sync = unit.sync(max_payload_bytes=v3.manifest.payload.length - 1)
    result = sync.process((v3.directory / "manifest.json").read_bytes(), fetch)
    state = unit.assert_refused(result, "too_large")
    assert fetched == [] and "the cap is" in state["message"]


def test_payload_longer_than_its_stated_length(unit: Unit) -> None:
    unit.world.edit()
    v3 = unit.world.bundle(3)
    with (v3.directory / "payload").open("ab") as fh:
        fh.write(b"\n" * 10_000)
    unit.assert_refused(unit.apply(v3.directory), "too_large")


def test_endless_http_payload_is_cut_at_its_stated_length(unit: Unit) -> None:
    unit.world.edit()
    served = Served(b"", extra=50 * 1024 * 1024)  # no Content-Length, 50 MiB too many
    with http_server(served) as url:
        bundle = _with_url(unit, served, url, version=3)
        result = unit.apply(bundle, allow_insecure_http=True)
    state = unit.assert_refused(result, "too_large")
    assert "more than the" in state["message"]
    staged = list(unit.world.layout.staging.glob("*/payload*"))
    assert all(p.stat().st_size <= len(served.data) for p in staged)


def test_lying_content_length_is_refused_before_reading(unit: Unit) -> None:
    unit.world.edit()
    served = Served(b"")
    with http_server(served) as url:
        bundle = _with_url(unit, served, url, version=3)
        served.lie_length = len(served.data) * 100
        result = unit.apply(bundle, allow_insecure_http=True)
    state = unit.assert_refused(result, "too_large")
    assert "the server announces" in state["message"]
    assert served.sent == 0 or not list(unit.world.layout.staging.glob("*/payload.part"))


def _with_url(unit: Unit, served: Served, url: str, *, version: int,
              chunk_size: int = 2048) -> Path:
    """A bundle whose payload must be fetched from ``url``; ``served`` gets the payload."""
    built = unit.world.bundle(version, name=f"url-v{version}", url=url, chunk_size=chunk_size)
    served.data = (built.directory / "payload").read_bytes()
    (built.directory / "payload").unlink()
    return built.directory


# ----------------------------------------------------------------- content checks


def test_payload_whose_hash_differs(unit: Unit) -> None:
    unit.world.edit()
    v3 = unit.world.bundle(3)
    data = bytearray((v3.directory / "payload").read_bytes())
    data[-10] ^= 0x01  # same length, other bytes: a payload the manifest did not sign
    (v3.directory / "payload").write_bytes(bytes(data))
    state = unit.assert_refused(unit.apply(v3.directory), "hash_mismatch")
    assert "not the one the manifest signed" in state["message"]


def test_a_shorter_payload_file_is_refused_not_retried(unit: Unit) -> None:
    unit.world.edit()
    v3 = unit.world.bundle(3)
    data = (v3.directory / "payload").read_bytes()
    (v3.directory / "payload").write_bytes(data[:-1])  # a truncated copy on the stick
    state = unit.assert_refused(unit.apply(v3.directory), "hash_mismatch")
    assert "truncated copy" in state["message"]


def test_payload_of_another_bundle_mix_and_match(unit: Unit) -> None:
    unit.world.edit()
    v3 = unit.world.bundle(3)
    shutil.copy(unit.v2.directory / "payload", v3.directory / "payload")
    result = unit.apply(v3.directory)
    assert result.reason in ("hash_mismatch", "too_large"), result
    unit.assert_refused(result, str(result.reason))


@pytest.mark.parametrize(("model", "dim"), [("other-model-v2", 128), ("test-embedder-v1", 64)])
def test_model_or_dimension_the_unit_does_not_run(unit: Unit, tmp_path: Path, model: str,
                                                  dim: int) -> None:
    other = World(tmp_path / "other", model=model, dim=dim)
    v3 = other.bundle(3)
    state = unit.assert_refused(unit.apply(v3.directory), "model_mismatch")
    assert f"dimension {dim}" in state["message"]


def test_delta_whose_base_is_not_the_stored_version(unit: Unit) -> None:
    unit.world.edit()
    delta = unit.world.bundle(3, name="delta-from-v1", delta_from=unit.v1.directory)
    assert (delta.manifest.kind, delta.manifest.base_version) == ("delta", 1)
    state = unit.assert_refused(unit.apply(delta.directory), "delta_base")
    assert "version 1" in state["message"] and "version 2" in state["message"]


def test_bundle_for_other_units(unit: Unit) -> None:
    unit.world.edit()
    v3 = unit.world.bundle(3, units=["unit-9", "unit-10"])
    unit.assert_refused(unit.apply(v3.directory), "wrong_unit")
    assert unit.apply(v3.directory, unit_id="unit-9").outcome == "ok"


def test_plain_http_url_is_refused_in_production(unit: Unit) -> None:
    unit.world.edit()
    v3 = unit.world.bundle(3, url="http://127.0.0.1:9/payload")
    (v3.directory / "payload").unlink()
    unit.assert_refused(unit.apply(v3.directory), "insecure_url")


def test_refusals_are_audited_once(unit: Unit, tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.db"
    with AuditLog(audit_path) as audit:
        sync = unit.sync()
        sync.audit = audit
        for _ in range(3):  # a flood of the same bad bundle is one record
            assert sync.apply_dir(unit.v1.directory).reason == "rollback"
        unit.world.edit()
        assert sync.apply_dir(unit.world.bundle(3).directory).outcome == "ok"
    kinds = [r.kind for r in read_records(audit_path)[1]]
    assert kinds.count(AuditKind.SYNC_REFUSED) == 1
    assert kinds.count(AuditKind.SYNC_APPLIED) == 1


def test_unsigned_garbage_cannot_flood_the_disk(unit: Unit, tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.db"

    def never(manifest: Manifest, part: PartialPayload) -> Path:
        raise AssertionError("nothing may be downloaded")

    with AuditLog(audit_path) as audit:
        sync = unit.sync()
        sync.audit = audit
        results = [sync.process(b"{not json %d" % i, never) for i in range(20)]
    assert {r.reason for r in results} == {"malformed"}
    assert sum(s.outcome == "refused" for s in unit.world.states) == 20  # all reported
    kinds = [r.kind for r in read_records(audit_path)[1]]
    assert kinds.count(AuditKind.SYNC_REFUSED) == 1  # but written once a minute at most
    assert unit.world.snapshot() == unit.before


# ------------------------------------------------------------------------ positives


def test_delta_applies_and_equals_the_central_gallery(unit: Unit, tmp_path: Path) -> None:
    unit.world.edit()
    delta = unit.world.bundle(3, name="delta", delta_from=unit.v2.directory)
    assert delta.summary.removed == 1 and delta.summary.added == 1
    assert delta.manifest.payload.length < unit.v2.manifest.payload.length / 2
    result = unit.apply(delta.directory)
    assert (result.outcome, result.version, result.previous_version) == ("ok", 3, 2)
    full = unit.world.bundle(3, name="full-v3")
    live = unit.world.layout.live_info()
    assert live is not None and live.gallery_id == full.manifest.gallery_id
    assert gallery_content(unit.world.unit_db)[1] == _content(full.directory)
    unit.watcher.wait_for(lambda p: p["state"] == "active" and p["version"] == 3
                          and p["bundle_sha256"] == delta.manifest.digest)
    # Only v3 remains on disk: the old version and the download were removed.
    assert sorted(p.name for p in unit.world.layout.versions.iterdir()) == ["v3"]
    assert not list(unit.world.layout.staging.iterdir())


def _content(bundle: Path) -> str:
    with (bundle / "payload").open("rb") as fh:
        return str(json.loads(fh.readline())["content_sha256"])


def test_interrupted_http_download_resumes(unit: Unit) -> None:
    unit.world.edit()
    served = Served(b"", cut_after=5000)  # the first response breaks off mid-chunk
    with http_server(served) as url:
        bundle = _with_url(unit, served, url, version=3, chunk_size=1024)
        first = unit.apply(bundle, allow_insecure_http=True)
        assert (first.outcome, first.reason) == ("error", "download"), first
        assert unit.world.snapshot() == unit.before
        second = unit.apply(bundle, allow_insecure_http=True)
    assert second.outcome == "ok", second
    assert served.ranges == [None, "bytes=4096-"]  # whole verified chunks were kept
    assert served.sent < len(served.data) + 1024
    with GalleryStore(unit.world.unit_db) as store:
        assert store.metadata().version == 3


def test_state_file_and_status_after_refusal(unit: Unit) -> None:
    unit.apply(unit.v1.directory)
    status = unit.sync().status()
    assert status.last_refusal is not None
    assert (status.status, status.last_refusal.reason, status.version) == ("active", "rollback", 2)
    assert status.payload(UNIT)["last_refusal"]["message"].startswith("refused (rollback)")
    assert NOW > T0

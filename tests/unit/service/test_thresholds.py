"""The one threshold model: table math on synthetic scores (monotone, honest resolution),
the safety floor, and identify and the service agreeing on threshold and decision."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from device.errors import ConfigError
from device.lab.calibration import build_table, save_table, summarise
from device.service import thresholds as cal
from device.service.config import FacegateConfig, load_config
from device.service.thresholds import (
    MAX_SAFE_FMR,
    CalibrationTable,
    ThresholdPolicy,
    expected_fpir,
    resolve_threshold,
)

MODEL = "test-embedder-v1"


def _impostors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0.2, 0.12, size=n), -1.0, 1.0)


@pytest.fixture(scope="module")
def table() -> CalibrationTable:
    return build_table(_impostors(200_000), model_id=MODEL, source="synthetic")


def _target(table: CalibrationTable, target: float, allow_unsafe: bool = False
            ) -> cal.Threshold:
    return resolve_threshold(MODEL, ThresholdPolicy(target, allow_unsafe=allow_unsafe),
                             table=table)


def test_fmr_at_is_monotone_and_bounded(table: CalibrationTable) -> None:
    grid = np.linspace(-1.0, 1.0, 4001)
    fmrs = np.array([table.fmr_at(s) for s in grid])
    assert (np.diff(fmrs) <= 1e-15).all()
    assert fmrs[0] == 1.0
    assert fmrs[-1] == pytest.approx(table.resolution)
    assert table.fmr_is_upper_bound(0.99) and not table.fmr_is_upper_bound(0.2)


def test_fmr_at_matches_the_empirical_rate(table: CalibrationTable) -> None:
    scores = _impostors(200_000)
    for s in (0.2, 0.4, 0.55, 0.6):
        empirical = float((scores >= s).mean())
        assert table.fmr_at(s) == pytest.approx(empirical, rel=0.05)


def test_threshold_for_inverts_fmr_at(table: CalibrationTable) -> None:
    previous = -math.inf
    for target in (0.5, 1e-1, 1e-2, 1e-3, 1e-4, 2e-5):
        t = table.threshold_for(target)
        assert t > previous
        previous = t
        assert table.fmr_at(t) == pytest.approx(target, rel=1e-9)


def test_targets_finer_than_the_resolution_are_refused(table: CalibrationTable) -> None:
    assert table.threshold_for(table.resolution) == table.similarities[-1]
    with pytest.raises(ConfigError, match="finer than the calibration table"):
        table.threshold_for(1e-6)
    rows = {r.target_fmr: r for r in summarise(table)}
    assert rows[1e-5].threshold is not None
    assert rows[1e-5].impostors_above == 2
    small = build_table(_impostors(500), model_id=MODEL)
    rows = {r.target_fmr: r for r in summarise(small)}
    assert rows[1e-2].threshold is not None and rows[1e-3].threshold is None
    with pytest.raises(ConfigError):
        small.threshold_for(1e-3)


@pytest.mark.parametrize("bad", [0.0, -1e-3, 1.5, math.nan])
def test_bad_targets_are_refused(table: CalibrationTable, bad: float) -> None:
    with pytest.raises(ConfigError):
        table.threshold_for(bad)


def test_inconsistent_tables_are_refused() -> None:
    with pytest.raises(ConfigError, match="ascending"):
        CalibrationTable(MODEL, (0.5, 0.4), (1.0, 0.5), 10)
    with pytest.raises(ConfigError, match="increase"):
        CalibrationTable(MODEL, (0.4, 0.5), (0.5, 1.0), 10)
    with pytest.raises(ConfigError, match="1/impostors"):
        CalibrationTable(MODEL, (0.4, 0.5), (1.0, 0.01), 10)
    with pytest.raises(ConfigError):
        build_table([], model_id=MODEL)


def test_round_trip_and_atomic_save(table: CalibrationTable, tmp_path: Path) -> None:
    path = save_table(table, tmp_path / "models" / f"{MODEL}{cal.SUFFIX}")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    data = json.loads(path.read_text())
    assert set(data) == {"format", "model_id", "source", "created_at", "impostors", "rule",
                         "points"}
    assert all(len(p) == 2 for p in data["points"])  # numbers only
    again = cal.load_table(path)
    assert again == table
    found, where = cal.find_table(MODEL, cache_dir=path.parent)
    assert found == table and where == path
    found = resolve_threshold(MODEL, ThresholdPolicy(1e-3), cache_dir=path.parent)
    assert found.value == table.threshold_for(1e-3) and found.table_file == path
    explicit = resolve_threshold(MODEL, ThresholdPolicy(threshold=0.7), cache_dir=path.parent)
    assert explicit.fmr == table.fmr_at(0.7) and explicit.source == "calibration"


def test_missing_and_malformed_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="facegate calibrate"):
        cal.find_table("no-such-model", cache_dir=tmp_path)
    bad = tmp_path / f"{MODEL}{cal.SUFFIX}"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="not a facegate calibration table"):
        cal.find_table(MODEL, cache_dir=tmp_path)
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        cal.load_table(bad)


def test_safety_floor(table: CalibrationTable, caplog: pytest.LogCaptureFixture) -> None:
    safe = _target(table, 1e-4)
    assert not safe.unsafe and safe.fmr == pytest.approx(1e-4)
    assert _target(table, MAX_SAFE_FMR).unsafe is False
    with pytest.raises(ConfigError, match="allow_unsafe_threshold"):
        _target(table, 1e-2)
    with caplog.at_level(logging.WARNING, logger="device.service.thresholds"):
        unsafe = _target(table, 1e-2, allow_unsafe=True)
    assert unsafe.unsafe and unsafe.value == pytest.approx(table.threshold_for(1e-2))
    assert any("UNSAFE" in r.getMessage() for r in caplog.records)


def test_expected_fpir() -> None:
    assert expected_fpir(0.0, 1000) == 0.0
    assert expected_fpir(1e-4, 0) == 0.0
    assert expected_fpir(1.0, 3) == 1.0
    assert expected_fpir(1e-4, 1) == pytest.approx(1e-4)
    assert expected_fpir(1e-4, 1000) == pytest.approx(1 - (1 - 1e-4) ** 1000, rel=1e-12)
    assert expected_fpir(1e-9, 10) == pytest.approx(1e-8, rel=1e-6)  # no cancellation
    with pytest.raises(ValueError):
        expected_fpir(1.5, 1)


def test_gallery_load_logs_threshold_and_fpir(
    table: CalibrationTable, caplog: pytest.LogCaptureFixture
) -> None:
    threshold = _target(table, 1e-4)
    with caplog.at_level(logging.INFO, logger="device.service.thresholds"):
        fpir = cal.log_expected_fpir(threshold, identities=100, faces=300)
    assert fpir == pytest.approx(expected_fpir(threshold.fmr, 300))
    message = caplog.records[-1].getMessage()
    assert f"{threshold.value:.4f}" in message and "1-(1-FMR)^300" in message


# ---- identify and the service: one threshold, one decision ---------------------------

CONFIG = """\
unit_id = "door-1"
state_dir = "{state}"
model_dir = "{models}"

[[cameras]]
type = "video"
camera_id = "front"
path = "clip.mp4"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[gallery]
"""


@pytest.fixture()
def model_cache(table: CalibrationTable, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Path:
    """The table in a model cache both sides read (identify through the environment)."""
    cache = tmp_path / "models"
    save_table(table, cal.table_path(MODEL, cache))
    monkeypatch.setenv("FACEGATE_MODEL_DIR", str(cache))
    return cache


def _service_config(tmp_path: Path, cache: Path, gallery: str) -> FacegateConfig:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.replace("{state}", str(tmp_path / "state"))
                    .replace("{models}", str(cache)) + gallery)
    return load_config(path)[0]


def _identify_policy(args: list[str]) -> ThresholdPolicy:
    """The policy ``facegate identify`` builds from its options (parsed by click)."""
    from device.cli.identify_cmd import identify

    ctx = identify.make_context("identify", [*args, "probe.jpg"])
    p = ctx.params
    return ThresholdPolicy(target_fmr=p["target_fmr"], threshold=p["explicit_threshold"],
                           threshold_fmr=p["threshold_fmr"],
                           allow_unsafe=p["allow_unsafe_threshold"])


def _probe(face: np.ndarray, similarity: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine with unit ``face`` is ``similarity``."""
    other = rng.normal(size=face.shape)
    other -= (other @ face) * face
    other /= np.linalg.norm(other)
    return (similarity * face + math.sqrt(1 - similarity ** 2) * other).astype(np.float32)


def _service_votes(threshold: float, similarity: float) -> bool:
    """Does the service's decider count a face at ``similarity`` as a match vote?"""
    from dataclasses import dataclass

    from device.service.decision import Decider, DecisionConfig

    @dataclass(frozen=True)
    class Hit:
        identity_id: str
        similarity: float

    decider = Decider("front", threshold, DecisionConfig(k=1, n=1))
    return bool(decider.observe(1, 1.0, Hit("ada", similarity)))


@pytest.mark.parametrize(("gallery", "options"), [
    ("target_fmr = 1e-4\n", ["--target-fmr", "1e-4"]),
    ("", []),  # both defaults
    ("threshold = 0.7\n", ["--threshold", "0.7"]),
    ("threshold = 0.6\nthreshold_fmr = 1e-5\n", ["--threshold", "0.6", "--threshold-fmr", "1e-5"]),
])
def test_identify_and_the_service_agree_on_threshold_and_decision(
    model_cache: Path, tmp_path: Path, gallery: str, options: list[str],
) -> None:
    from device.cli.face_tools import load_threshold
    from device.enroll.identify import GallerySearcher
    from device.gallery.records import NewIdentity
    from device.gallery.store import GalleryStore
    from tests.support.gallery import DIM, FaceMaker

    service = _service_config(tmp_path, model_cache, gallery).match_threshold(MODEL)
    ident = load_threshold(MODEL, _identify_policy(options))
    assert (ident.value, ident.fmr, ident.source, ident.target_fmr, ident.unsafe) == (
        service.value, service.fmr, service.source, service.target_fmr, service.unsafe)
    assert service.source == "calibration"  # the table's FMR wins over a stated one
    maker = FaceMaker(3)
    face = maker.faces(1)
    rng = np.random.default_rng(4)
    with GalleryStore(tmp_path / "gallery.db", model_id=MODEL, dim=DIM, create=True) as store:
        store.add_identity_with_faces(NewIdentity(label="Ada"), face)
        unit = face[0].embedding.vector.astype(np.float64)
        with GallerySearcher(store, ident) as searcher:
            for delta in (-1e-3, -1e-5, 0.0, 1e-5, 1e-3):
                result = searcher.search(_probe(unit, service.value + delta, rng), k=1)
                similarity = result.candidates[0].similarity
                identified = result.decision == "match"
                assert identified == _service_votes(service.value, similarity), similarity
                if abs(delta) >= 1e-3:
                    assert identified == (delta > 0)


@pytest.mark.parametrize(("gallery", "options"), [
    ("target_fmr = 1e-2\nallow_unsafe_threshold = true\n",
     ["--target-fmr", "1e-2", "--allow-unsafe-threshold"]),
    ("threshold = 0.3\nallow_unsafe_threshold = true\n",
     ["--threshold", "0.3", "--allow-unsafe-threshold"]),
])
def test_identify_and_the_service_agree_on_an_allowed_unsafe_threshold(
    model_cache: Path, tmp_path: Path, gallery: str, options: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from device.cli.face_tools import load_threshold

    with caplog.at_level(logging.WARNING, logger="device.service.thresholds"):
        service = _service_config(tmp_path, model_cache, gallery).match_threshold(MODEL)
        ident = load_threshold(MODEL, _identify_policy(options))
    assert service == ident and service.unsafe
    # An explicit threshold with the table's FMR warns too (the service used to warn only
    # when the FMR came from the configuration): one warning per resolution.
    assert sum("UNSAFE MATCH THRESHOLD" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize(("gallery", "options"), [
    ("threshold = 0.3\n", ["--threshold", "0.3"]),
    ("threshold = 0.5\nthreshold_fmr = 1e-5\n", ["--threshold", "0.5", "--threshold-fmr", "1e-5"]),
])
def test_identify_and_the_service_both_refuse_an_unsafe_threshold(
    model_cache: Path, tmp_path: Path, gallery: str, options: list[str],
) -> None:
    from device.cli.face_tools import load_threshold

    config = _service_config(tmp_path, model_cache, gallery)
    with pytest.raises(ConfigError, match="above the safe limit") as by_service:
        config.match_threshold(MODEL)
    with pytest.raises(ConfigError, match="above the safe limit") as by_identify:
        load_threshold(MODEL, _identify_policy(options))
    assert "allow_unsafe_threshold = true" in str(by_service.value)
    assert "--allow-unsafe-threshold" in str(by_identify.value)


def test_an_unsafe_target_is_refused_by_both(model_cache: Path, tmp_path: Path) -> None:
    from device.cli.face_tools import load_threshold

    with pytest.raises(ConfigError, match="allow_unsafe_threshold = true"):
        _service_config(tmp_path, model_cache, "target_fmr = 1e-2\n")
    with pytest.raises(ConfigError, match="above the safe limit"):
        load_threshold(MODEL, _identify_policy(["--target-fmr", "1e-2"]))


def test_a_malformed_table_is_an_error_even_with_an_explicit_threshold(
    model_cache: Path, tmp_path: Path,
) -> None:
    # The service used to fall back to threshold_fmr on any table error; a table that
    # exists but cannot be read is now refused (as identify always did).
    cal.table_path(MODEL, model_cache).write_text("{not json")
    config = _service_config(tmp_path, model_cache, "threshold = 0.6\nthreshold_fmr = 1e-5\n")
    with pytest.raises(ConfigError, match="cannot read calibration table"):
        config.match_threshold(MODEL)

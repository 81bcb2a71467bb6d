"""The service's configuration file: the example validates, mistakes name key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.errors import ConfigError
from device.service.config import FacegateConfig, load_config
from device.service.thresholds import MAX_SAFE_FMR, ThresholdPolicy, resolve_threshold

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "provisioning" / "config.example.toml"

MINIMAL = """\
unit_id = "door-1"
state_dir = "{state}"

[[cameras]]
type = "video"
camera_id = "front"
path = "clip.mp4"

[mqtt]
url = "mqtt://127.0.0.1:1883"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text.replace("{state}", str(tmp_path / "state")))
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    return str(info.value)


def test_example_config_validates() -> None:
    config, digest = load_config(EXAMPLE)
    assert config.unit_id == "door-1"
    assert config.camera_ids == ("front", "gate")
    assert config.mqtt.unit_id == "door-1"  # one source of truth
    assert config.mqtt.health_interval_s == config.health.interval_s
    assert config.mqtt.outbox_path == Path("/var/lib/facegate/outbox.sqlite3")
    assert config.gallery_path == Path("/var/lib/facegate/gallery.db")
    assert config.audit_path == Path("/var/lib/facegate/audit.db")
    assert config.health_path == Path("/var/lib/facegate/health.json")
    assert config.decision.report_unknown_tracks
    assert len(digest) == 64


def test_every_field_of_every_section_is_documented() -> None:
    def walk(model: type, where: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            if not field.description:
                missing.append(f"{where}.{name}")
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                missing += walk(annotation, f"{where}.{name}")
        return missing

    assert walk(FacegateConfig, "config") == []


def test_minimal_config_takes_defaults_inside_the_state_dir(tmp_path: Path) -> None:
    config, _ = load_config(_write(tmp_path, MINIMAL))
    state = tmp_path / "state"
    assert config.mqtt.outbox_path == state / "outbox.sqlite3"
    assert config.gallery_path == state / "gallery.db"
    assert config.audit_path == state / "audit.db"
    assert config.pending_path.parent == state
    assert config.detector.type == "blazeface"
    assert config.embedder.type == "dlib_tflite"
    assert config.gallery.target_fmr == 1e-4
    assert config.stage_threads(config.detector) == 2


def test_threads_apply_unless_a_stage_sets_its_own(tmp_path: Path) -> None:
    text = MINIMAL.replace('state_dir', 'threads = 3\nstate_dir') + (
        '\n[embedder]\ntype = "dlib_tflite"\nnum_threads = 1\n')
    config, _ = load_config(_write(tmp_path, text))
    assert config.stage_threads(config.detector) == 3
    assert config.stage_threads(config.embedder) == 1


def test_a_typo_names_the_key_and_its_line(tmp_path: Path) -> None:
    text = MINIMAL + '\n[quality]\nmin_face_px = 40\nmax_yaw = 30\n'
    message = _error(tmp_path, text)
    line = text.splitlines().index("max_yaw = 30") + 1
    assert f"config.toml:{line}: quality.max_yaw: unknown key" in message


def test_a_bad_value_names_the_key_and_its_line(tmp_path: Path) -> None:
    text = MINIMAL.replace('path = "clip.mp4"', 'path = "clip.mp4"\nloop = "sometimes"')
    message = _error(tmp_path, text)
    line = text.splitlines().index('loop = "sometimes"') + 1
    assert f"config.toml:{line}: cameras[0].loop:" in message


def test_unknown_camera_type_is_refused_with_its_line(tmp_path: Path) -> None:
    text = MINIMAL.replace('type = "video"', 'type = "webcam"')
    message = _error(tmp_path, text)
    assert 'config.toml:4: cameras[0]' in message  # the [[cameras]] table
    assert "webcam" in message or "tag" in message


def test_unit_id_is_set_once(tmp_path: Path) -> None:
    text = MINIMAL + 'unit_id = "other"\n'
    message = _error(tmp_path, text)
    assert "config.toml:9: mqtt:" in message  # the [mqtt] table
    assert "set unit_id once, at the top level" in message


def test_duplicate_camera_ids_are_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("[mqtt]", '[[cameras]]\ntype = "video"\ncamera_id = "front"\n'
                           'path = "other.mp4"\n\n[mqtt]')
    message = _error(tmp_path, text)
    assert "camera_id 'front' of cameras[1] is already used by cameras[0]" in message


def test_a_camera_id_must_be_a_topic_level(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL.replace('camera_id = "front"', 'camera_id = "front.1"'))
    assert "cannot be an MQTT topic level" in message


def test_an_unsafe_target_fmr_needs_the_explicit_switch(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + "\n[gallery]\ntarget_fmr = 0.01\n")
    assert "allow_unsafe_threshold" in message
    config, _ = load_config(_write(
        tmp_path, MINIMAL + "\n[gallery]\ntarget_fmr = 0.01\nallow_unsafe_threshold = true\n"))
    assert config.gallery.allow_unsafe_threshold


def test_threshold_fmr_goes_with_a_threshold(tmp_path: Path) -> None:
    message = _error(tmp_path, MINIMAL + "\n[gallery]\nthreshold_fmr = 0.0001\n")
    assert "threshold_fmr goes with an explicit threshold" in message


def test_missing_file_and_bad_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "unit_id = \n"))


# ---- the threshold seam -------------------------------------------------------------


def test_explicit_threshold_with_its_measured_fmr() -> None:
    policy = ThresholdPolicy(threshold=0.93, threshold_fmr=1e-4)
    t = resolve_threshold("no-such-model", policy)
    assert (t.value, t.fmr, t.source) == (0.93, 1e-4, "config")


def test_explicit_threshold_without_any_fmr_is_refused() -> None:
    with pytest.raises(ConfigError, match="set threshold_fmr"):
        resolve_threshold("no-such-model", ThresholdPolicy(threshold=0.93))


def test_an_unsafe_threshold_is_refused_unless_allowed() -> None:
    unsafe = ThresholdPolicy(threshold=0.5, threshold_fmr=MAX_SAFE_FMR * 10)
    with pytest.raises(ConfigError, match="above the safe limit"):
        resolve_threshold("no-such-model", unsafe)
    t = resolve_threshold("no-such-model",
                          ThresholdPolicy(threshold=0.5, threshold_fmr=MAX_SAFE_FMR * 10,
                                          allow_unsafe=True))
    assert t.fmr == MAX_SAFE_FMR * 10


def test_no_calibration_table_says_how_to_get_a_threshold(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="facegate calibrate"):
        resolve_threshold("no-such-model", ThresholdPolicy(), cache_dir=tmp_path)


def test_run_check_validates_and_names_bad_keys(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from device.cli import main

    good = _write(tmp_path, MINIMAL)
    result = CliRunner().invoke(main, ["run", "--config", str(good), "--check"])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "outbox.sqlite3" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "\n[tracking]\nmax_age = -1\n")
    result = CliRunner().invoke(main, ["run", "--config", str(bad)])
    assert result.exit_code == 2
    assert f"bad.toml:{len(MINIMAL.splitlines()) + 3}: tracking.max_age:" in result.output


def test_review_section_refuses_unknown_keys_and_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, MINIMAL))[0].review is None
    config, _ = load_config(_write(tmp_path, MINIMAL + "\n[review]\n"))
    assert config.review is not None
    assert (config.review.trusted_keys, config.review.max_age_days) == ("review-keys", 30.0)
    assert config.review.session_expiry_s == 30 * 86400
    assert "labels" in _error(tmp_path, MINIMAL + "\n[review]\nlabels = true\n")


def test_review_age_limit_must_end_before_the_audit_window(tmp_path: Path) -> None:
    text = MINIMAL + "\n[audit]\nretention_days = 20\n\n[review]\nmax_age_days = 30\n"
    assert "retention_days" in _error(tmp_path, text)

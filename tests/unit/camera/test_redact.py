"""Credentials in RTSP URLs never reach logs, errors, reprs or frames."""

from __future__ import annotations

import pytest

from device.camera.registry import parse_source_config
from device.camera.rtsp import RtspSourceConfig, redact_url, scrub, url_secrets
from device.errors import ConfigError


@pytest.mark.parametrize(
    "url,expected",
    [
        ("rtsp://admin:s3cret@10.0.0.2:554/live", "rtsp://***:***@10.0.0.2:554/live"),
        ("rtsp://admin@cam.local/stream1", "rtsp://***:***@cam.local/stream1"),
        ("rtsp://cam.local:8554/live", "rtsp://cam.local:8554/live"),
        ("rtsps://u:p%40ss@[fe80::1]:322/x", "rtsps://***:***@[fe80::1]:322/x"),
        (
            "rtsp://cam/live?channel=1&password=hunter2&user=bob&Token=t0k",
            "rtsp://cam/live?channel=1&password=***&user=***&Token=***",
        ),
        ("rtsp://a:b@c:d@host/x", "rtsp://***:***@host/x"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_unparseable_url_is_not_echoed() -> None:
    assert redact_url("rtsp://user:pw@[::1/x") == "<unparseable URL>"


def test_scrub_removes_the_url_and_each_secret_from_any_text() -> None:
    url = "rtsp://admin:s3cret@10.0.0.2/live?token=abc123"
    text = f"open {url} failed; user admin, password s3cret, token abc123"
    out = scrub(text, url)
    for secret in ("s3cret", "abc123", "admin"):
        assert secret not in out
    assert "10.0.0.2" in out
    assert url_secrets(url)[0] == "admin:s3cret"


def test_config_repr_and_str_hide_credentials() -> None:
    cfg = RtspSourceConfig(camera_id="door", url="rtsp://admin:s3cret@10.0.0.2/live")
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in str(cfg)
    assert cfg.url == "rtsp://admin:s3cret@10.0.0.2/live"  # still usable


def test_config_errors_do_not_echo_the_url() -> None:
    with pytest.raises(ConfigError) as info:
        parse_source_config(
            {"type": "rtsp", "camera_id": "door", "url": "http://admin:s3cret@10.0.0.2/"}
        )
    assert "s3cret" not in str(info.value)
    assert "url" in str(info.value)

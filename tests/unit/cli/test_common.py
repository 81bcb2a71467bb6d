"""The CLI's shared rules: one error prefix, one progress-bar rule."""

from __future__ import annotations

import io
import sys

import pytest

from device.cli.common import error_line, progress, progress_enabled
from device.errors import ConfigError


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _streams(monkeypatch: pytest.MonkeyPatch, stdout: bool, stderr: bool) -> _Stream:
    err = _Stream(stderr)
    monkeypatch.setattr(sys, "stdout", _Stream(stdout))
    monkeypatch.setattr(sys, "stderr", err)
    return err


def test_error_line_has_one_prefix() -> None:
    assert error_line(ConfigError("bad key")) == "error: bad key"
    assert error_line("error (config): no model") == "error (config): no model"


@pytest.mark.parametrize(("stdout", "stderr", "as_json", "shown"), [
    (True, True, False, True),
    (False, True, False, True),   # text piped: the bar is on the terminal's stderr
    (True, True, True, True),     # JSON on the terminal
    (False, True, True, False),   # JSON to a pipe
    (True, False, False, False),  # stderr not a terminal
])
def test_progress_rule(monkeypatch: pytest.MonkeyPatch, stdout: bool, stderr: bool,
                       as_json: bool, shown: bool) -> None:
    err = _streams(monkeypatch, stdout, stderr)
    assert progress_enabled(as_json) is shown
    with progress(3, "testing", as_json=as_json) as advance:
        for _ in range(3):
            advance(1)
    assert ("testing:" in err.getvalue()) is shown

"""A unit's install may leave device.lab and device.console out: facegate still works."""

from __future__ import annotations

import json
import subprocess
import sys

# A meta-path finder that makes the named packages not installed, as an install that
# excluded them from the wheel would be.
_RUN = """
import importlib.abc, json, sys
HIDDEN = {hidden!r}
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in HIDDEN):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Hide())
from click.testing import CliRunner
from device.cli import main
help_ = CliRunner().invoke(main, ["--help"])
detect = CliRunner().invoke(main, ["detect", "--json"])
print(json.dumps({{"verbs": sorted(main.commands), "help_exit": help_.exit_code,
                  "detect_exit": detect.exit_code, "detect_out": detect.output[:200],
                  "lab_loaded": any(m.startswith("device.lab") for m in sys.modules)}}))
"""

UNIT_VERBS = {"audit", "demo", "detect", "doctor", "embed", "gallery", "identify", "keys",
              "models", "run", "status", "sync"}


def _without(*hidden: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", _RUN.format(hidden=list(hidden))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_without_the_lab_and_the_console_every_unit_verb_works() -> None:
    result = _without("device.lab", "device.console")
    assert set(result["verbs"]) == UNIT_VERBS  # type: ignore[arg-type]
    assert result["help_exit"] == 0
    assert result["detect_exit"] == 0 and '"faces"' in str(result["detect_out"])
    assert result["lab_loaded"] is False


def test_with_everything_installed_the_lab_and_console_verbs_are_there() -> None:
    result = _without()
    assert set(result["verbs"]) == UNIT_VERBS | {"bench", "calibrate", "console", "eval"}  # type: ignore[arg-type]


def test_a_unit_without_the_console_extra_still_has_every_other_verb() -> None:
    """The unit's install has the lab but not the console's web stack (SQLAlchemy...)."""
    result = _without("sqlalchemy", "alembic", "starlette", "argon2", "jinja2", "uvicorn",
                      "psycopg", "itsdangerous")
    assert result["help_exit"] == 0 and result["detect_exit"] == 0
    assert set(result["verbs"]) == UNIT_VERBS | {"bench", "calibrate", "eval"}  # type: ignore[arg-type]

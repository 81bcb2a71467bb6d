"""``facegate demo`` end to end, as a user runs it: a child process, its JSON lines.

* Default: scikit-image's public-domain pictures against the demo's own mosquitto;
  Eileen Collins is matched (at least once) and nobody else; every published event
  arrives; the temporary work directory is gone afterwards.
* ``--clip`` (shared datasets): Lin-Manuel Miranda is matched; nobody outside the
  two enrolled people is.
* ``--clip`` with a datasets folder that does not exist: a clear error, exit 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from device.events.schema import MATCH_SCHEMA, validate

REPO = Path(__file__).resolve().parents[2]


def _facegate(*args: str, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from device.cli import main; main()", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})})


def _need_mosquitto() -> None:
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.skip("mosquitto not installed (bash provisioning/setup-dev.sh installs it)")


def _parse(stdout: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The event payloads (in arrival order) and the closing summary."""
    documents = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    summaries = [d["summary"] for d in documents if "summary" in d]
    assert len(summaries) == 1, stdout
    assert "summary" in documents[-1]
    return [d for d in documents if "summary" not in d], summaries[0]


def _matches(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    matches = [e for e in events if e.get("schema") == MATCH_SCHEMA]
    for m in matches:
        validate(MATCH_SCHEMA, m)
    return matches


def test_default_demo_matches_the_astronaut_only() -> None:
    _need_mosquitto()
    done = _facegate("demo", "--json")
    assert done.returncode == 0, done.stderr
    events, summary = _parse(done.stdout)
    matches = _matches(events)
    assert len(matches) >= 1
    assert {m["label"] for m in matches} == {"Eileen Collins"}
    assert {m["identity_id"] for m in matches} == {"eileen-collins"}
    assert all(m["unit"] == "demo" and m["review_required"] for m in matches)
    assert summary["broker_started_by_demo"] is True
    assert summary["enrolled"] == {"eileen-collins": "Eileen Collins"}
    assert summary["matched"] == {"Eileen Collins": len(matches)}
    assert summary["all_events_arrived"] is True
    assert summary["matches_reported"] == len(matches)
    assert summary["frames"] >= 30
    assert summary["false_match_rate"] <= 1e-4
    # The temporary work directory (gallery, state, frames, broker) is gone.
    workdirs = [line.split(" ", 2)[2] for line in done.stderr.splitlines()
                if line.startswith("work directory ")]
    assert len(workdirs) == 1
    assert not Path(workdirs[0]).exists()


def test_clip_demo_matches_lin_manuel_miranda(datasets: Path, tmp_path: Path) -> None:
    _need_mosquitto()
    workdir = tmp_path / "demo"
    done = _facegate("demo", "--clip", "--datasets", str(datasets), "--workdir",
                     str(workdir), "--json")
    assert done.returncode == 0, done.stderr
    events, summary = _parse(done.stdout)
    matches = _matches(events)
    labels = {m["label"] for m in matches}
    assert "Lin-Manuel Miranda" in labels
    assert labels <= {"Lin-Manuel Miranda", "Alex Lacamoire"}
    assert summary["all_events_arrived"] is True
    assert summary["frames"] == 275
    # --workdir keeps what the run wrote.
    assert (workdir / "gallery.db").is_file()
    assert (workdir / "state" / "health.json").is_file()
    assert (workdir / "config.json").is_file()


def test_clip_demo_without_datasets_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-datasets"
    done = _facegate("demo", "--clip", "--datasets", str(missing), timeout=60)
    assert done.returncode == 2
    assert str(missing) in done.stderr
    assert "FACEGATE_DATASETS" in done.stderr
    assert done.stdout == ""
    # The default location is named too when nothing is given.
    done = _facegate("demo", "--clip", env={"FACEGATE_DATASETS": str(missing)}, timeout=60)
    assert done.returncode == 2
    assert str(missing) in done.stderr

"""Shared fixtures: where the datasets are, and skipping cleanly when they are not."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def datasets_root() -> Path:
    """``$FACEGATE_DATASETS`` or ``../shared/datasets`` beside the checkout."""
    env = os.environ.get("FACEGATE_DATASETS")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def datasets() -> Path:
    root = datasets_root()
    if not (root / "README.md").is_file():
        pytest.skip(f"shared datasets not found at {root} (set FACEGATE_DATASETS)")
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow stress tests run only with FACEGATE_SLOW=1 or ``-m slow``."""
    if os.environ.get("FACEGATE_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow stress run; set FACEGATE_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture()
def broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real mosquitto broker on a free 127.0.0.1 port, stopped after the test."""
    from device.ops.localbroker import LocalBroker

    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.skip("mosquitto not installed (bash provisioning/setup-dev.sh installs it)")
    with LocalBroker(workdir=tmp_path / "broker") as b:
        yield b


@pytest.fixture()
def small_fs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 256 KiB tmpfs (needs root), unmounted after the test; skips without it."""
    import subprocess

    mount = tmp_path / "small_fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="session")
def pg_cluster():  # type: ignore[no-untyped-def]
    """A throwaway PostgreSQL cluster on a free 127.0.0.1 port, for the whole session."""
    from device.lab.pgcluster import pg_missing, postgres_cluster

    reason = pg_missing()
    if reason:
        pytest.skip(reason)
    with postgres_cluster() as base:
        yield base

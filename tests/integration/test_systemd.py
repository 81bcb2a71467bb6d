"""The unit files pass ``systemd-analyze verify``, the service stays at exposure <= 2.5,
and the unit agrees with what provisioning writes and the config names."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from device.ops import provision

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
SERVICE = SYSTEMD / "facegate.service"
TIMER = SYSTEMD / "facegate-retry.timer"
RULES = SYSTEMD / "99-facegate-coral.rules"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 2.5


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return exe


def unit_root(tmp_path: Path, service_text: str | None = None) -> Path:
    """A root directory holding what `verify --root` needs: the ExecStart binary
    (a stub), the distribution's units (modprobe@, network-online.target…) and ours."""
    if not SYSTEM_UNITS.is_dir():
        pytest.skip(f"{SYSTEM_UNITS} not found: no systemd units to verify against")
    root = tmp_path / "root"
    exe = root / "opt/facegate/venv/bin/facegate"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / SERVICE.name).write_text(service_text or SERVICE.read_text())
    shutil.copy(TIMER, units / TIMER.name)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze(), "verify", "--man=no", f"--root={root}",
         f"/etc/systemd/system/{SERVICE.name}", f"/etc/systemd/system/{TIMER.name}"],
        capture_output=True, text=True, timeout=120, check=False,
    )


def complaints(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """Lines about our units (verify exits 0 on unknown keys: it only warns)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "facegate" in line]


def test_units_verify(tmp_path: Path) -> None:
    proc = verify(unit_root(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert complaints(proc) == []


def test_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """The check above is sharp: a misspelt directive and a missing binary are reported."""
    broken = SERVICE.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    proc = verify(unit_root(tmp_path, broken))
    assert any("NoNewPrivilege" in line for line in complaints(proc)), proc.stderr
    root = unit_root(tmp_path / "second")
    (root / "opt/facegate/venv/bin/facegate").unlink()
    proc = verify(root)
    assert proc.returncode != 0
    assert any("not executable" in line for line in complaints(proc)), proc.stderr


def test_security_exposure_at_most_2_5() -> None:
    proc = subprocess.run(
        [analyze(), "security", "--offline=true", str(SERVICE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    out = proc.stdout + proc.stderr
    match = re.search(r"Overall exposure level for facegate\.service:\s*([0-9.]+)", out)
    assert match, out
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, out
    assert "Unknown key" not in out and "Invalid" not in out, out


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_service_matches_config_and_provisioning() -> None:
    d = directives(SERVICE.read_text())
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["Restart"] == ["on-failure"]
    assert d["ExecStart"] == [
        "/opt/facegate/venv/bin/facegate run --config /etc/facegate/config.toml"]
    assert d["StateDirectory"] == ["facegate"]
    assert d["ConfigurationDirectory"] == ["facegate"]
    assert f"FACEGATE_MODEL_DIR={provision.UNIT_MODEL_DIR}" in d["Environment"]
    assert Path("/var/lib") / d["StateDirectory"][0] == provision.UNIT_STATE_DIR
    credentials = {v.split(":", 1)[0]: v.split(":", 1)[1] for v in d["LoadCredential"]}
    # The names config.toml uses (provision renders them) are the names the unit loads.
    assert set(credentials) == {provision.PASSWORD_CREDENTIAL, provision.TLS_KEY_CREDENTIAL,
                                provision.TRUSTED_KEYS_CREDENTIAL,
                                provision.REVIEW_KEYS_CREDENTIAL}
    assert all(p.startswith("/etc/facegate/credentials/") for p in credentials.values())
    for key in ("DevicePolicy", "ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges",
                "RestrictAddressFamilies", "SystemCallFilter", "WatchdogSec",
                "StartLimitBurst", "StartLimitIntervalSec"):
        assert key in d, key
    allowed = " ".join(d["DeviceAllow"])
    for device in ("char-video4linux", "char-media", "char-dma_heap", "char-apex",
                   "char-usb_device"):
        assert device in allowed
    # The comments that say why these stay off are part of the contract.
    text = SERVICE.read_text()
    assert "# PrivateUsers= stays off" in text
    assert "# MemoryDenyWriteExecute= stays off" in text


def test_timer_triggers_the_service() -> None:
    d = directives(TIMER.read_text())
    assert d["Unit"] == [SERVICE.name]
    assert "OnUnitInactiveSec" in d


_RULE = re.compile(r'^[A-Z]+(\{[A-Za-z]+\})?(==|!=|=|\+=)"[^"]*"$')


def test_udev_rule_syntax_and_ids() -> None:
    rules = [line for line in RULES.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    for rule in rules:
        for part in (p.strip() for p in rule.split(",")):
            assert _RULE.match(part), f"{part!r} in {rule!r}"
    text = "\n".join(rules)
    assert 'SUBSYSTEM=="apex", MODE="0660", GROUP="apex"' in text
    for vendor, product in (("1a6e", "089a"), ("18d1", "9302")):
        assert (f'ATTRS{{idVendor}}=="{vendor}", ATTRS{{idProduct}}=="{product}", '
                'MODE="0660", GROUP="plugdev"') in text

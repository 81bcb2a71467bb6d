"""device.ops.doctor checks that need no hardware: clock, disk, state dir, USB ids, lines."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from device.ops import doctor
from device.ops.doctor import Status


def at(year: int) -> float:
    return dt.datetime(year, 6, 1, tzinfo=dt.UTC).timestamp()


def test_result_lines() -> None:
    assert doctor.ok("camera front", "640x480 frame in 0.1 s").line() == (
        "OK   camera front: 640x480 frame in 0.1 s")
    assert doctor.fail("broker mqtt://h:1883", "connection refused", "check it").line() == (
        "FAIL broker mqtt://h:1883: connection refused — check it")
    assert doctor.warn("disk", "400 MB free", "free space").line().startswith("WARN disk: ")
    assert doctor.exit_code([doctor.ok("a", "b"), doctor.warn("c", "d", "e")]) == 0
    assert doctor.exit_code([doctor.ok("a", "b"), doctor.fail("c", "d", "e")]) == 1


def test_first_clause() -> None:
    assert doctor.first_clause("model m: gone; run this; or that", "model m: ") == "gone"
    assert doctor.first_clause("model m has not been built; run x", "model m") == (
        " has not been built")
    assert doctor.first_clause("line one\nline two") == "line one line two"


def test_clock(tmp_path: Path) -> None:
    now = time.time()
    assert doctor.check_clock(tmp_path, lambda: now, lambda: True).status is Status.OK
    old = doctor.check_clock(tmp_path, lambda: at(2019), lambda: True)
    assert old.status is Status.FAIL and "before 2024" in old.message
    assert "no clock battery" in old.fix
    future = tmp_path / "outbox.sqlite3"
    future.write_bytes(b"")
    os.utime(future, (now + 86400, now + 86400))
    behind = doctor.check_clock(tmp_path, lambda: now, lambda: True)
    assert behind.status is Status.FAIL and str(future) in behind.message
    future.unlink()
    unsynced = doctor.check_clock(tmp_path, lambda: now, lambda: False)
    assert unsynced.status is Status.WARN and "NTP" in unsynced.message
    unknown = doctor.check_clock(None, lambda: now, lambda: None)
    assert unknown.status is Status.OK and "unknown" in unknown.message


def test_disk(tmp_path: Path) -> None:
    assert doctor.check_disk(tmp_path, warn_bytes=1, fail_bytes=0).status is Status.OK
    huge = 1 << 62
    assert doctor.check_disk(tmp_path, warn_bytes=huge, fail_bytes=0).status is Status.WARN
    low = doctor.check_disk(tmp_path / "not" / "yet", warn_bytes=huge, fail_bytes=huge)
    assert low.status is Status.FAIL and "journalctl --vacuum-size" in low.fix


def test_state_dir(tmp_path: Path) -> None:
    good = doctor.check_state_dir(tmp_path)
    assert good.status is Status.OK and list(tmp_path.iterdir()) == []
    missing = doctor.check_state_dir(tmp_path / "missing")
    assert missing.status is Status.FAIL and "StateDirectory=" in missing.fix


def test_find_edgetpus(tmp_path: Path) -> None:
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    devices = sys_root / "bus/usb/devices"
    for name, ids in (("1-1", ("1a6e", "089a", "1", "3")), ("1-2", ("046d", "0825", "1", "5")),
                      ("2-1", ("18D1", "9302", "2", "7")), ("usb1", None)):
        (devices / name).mkdir(parents=True)
        if ids:
            for key, value in zip(("idVendor", "idProduct", "busnum", "devnum"), ids, strict=True):
                (devices / name / key).write_text(value + "\n")
    dev_root.mkdir()
    (dev_root / "apex_0").write_bytes(b"")
    found = doctor.find_edgetpus(sys_root, dev_root)
    assert [(t.kind, str(t.node.relative_to(dev_root))) for t in found] == [
        ("pci", "apex_0"), ("usb", "bus/usb/001/003"), ("usb", "bus/usb/002/007")]
    assert found[2].label == f"USB 18d1:9302 at {dev_root / 'bus/usb/002/007'}"
    assert doctor.find_edgetpus(tmp_path / "none", tmp_path / "none") == []


def test_default_credentials_dir() -> None:
    assert doctor.default_credentials_dir({"CREDENTIALS_DIRECTORY": "/run/creds"}) is None
    options = doctor.DoctorOptions(credentials_dir=Path("/x"), env={"A": "1"})
    assert options.environ() == {"A": "1", "CREDENTIALS_DIRECTORY": "/x"}

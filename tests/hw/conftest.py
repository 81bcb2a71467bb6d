"""Hardware tests: each skips, with the reason, unless its device is really present.

Run them on a unit (or a workstation with a Coral): ``pytest tests/hw -m hw``. A skip
message says what was looked for, so "skipped" never hides "not checked".
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

# USB ids of the Coral USB Accelerator: before its firmware is loaded (Global
# Unichip) and after (Google). The PCIe/M.2 cards appear as /dev/apex_N.
CORAL_USB_IDS = {("1a6e", "089a"), ("18d1", "9302")}


def coral_present() -> str | None:
    """Where a Coral Edge TPU is, or ``None``."""
    apex = sorted(Path("/dev").glob("apex_*"))
    if apex:
        return str(apex[0])
    for dev in Path("/sys/bus/usb/devices").glob("*"):
        try:
            ids = ((dev / "idVendor").read_text().strip(), (dev / "idProduct").read_text().strip())
        except OSError:
            continue
        if ids in CORAL_USB_IDS:
            return f"usb {ids[0]}:{ids[1]} at {dev.name}"
    return None


def edgetpu_library() -> str | None:
    """Why libedgetpu cannot be opened, or ``None`` when it can."""
    from device.vision.runtime import EDGETPU_LIBRARY

    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
    except OSError as exc:
        return f"{EDGETPU_LIBRARY} cannot be opened ({exc}); install libedgetpu1-std"
    return None


@pytest.fixture()
def coral() -> str:
    where = coral_present()
    if where is None:
        pytest.skip("no Coral Edge TPU: no /dev/apex_* and no USB device 1a6e:089a or 18d1:9302")
    problem = edgetpu_library()
    if problem:
        pytest.skip(f"a Coral is present ({where}) but {problem}")
    return where


@pytest.fixture()
def pi_camera() -> int:
    try:
        from device.camera.picam import import_picamera2

        picamera2 = import_picamera2()
    except Exception as exc:  # the backend's own clear error says what is missing
        pytest.skip(f"picamera2 unavailable: {exc}")
    cameras = picamera2.Picamera2.global_camera_info()
    if not cameras:
        pytest.skip("picamera2 is installed but libcamera lists no camera")
    return 0

"""facegate doctor on a machine with nothing (exit 1, every problem named with its fix)
and on a healthy set-up: real mosquitto, an image-folder camera, models built into a
temporary cache, a fresh gallery (exit 0)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device.gallery.store import GalleryStore
from device.ops import doctor
from device.ops.localbroker import BrokerUser, LocalBroker, free_port
from device.service.config import load_config

REPO = Path(__file__).resolve().parents[2]
EMBEDDER = "dlib-resnet-v1"


def facegate(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("facegate")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300,
                          check=False, stdin=subprocess.DEVNULL, cwd=REPO)


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("models")
    proc = facegate("models", "build", "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    return cache


def healthy_unit(tmp_path: Path, model_cache: Path, broker_url: str, mqtt_extra: str = "") -> Path:
    state = tmp_path / "state"
    state.mkdir()
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(images / "a.png")
    with GalleryStore(state / "gallery.db", model_id=EMBEDDER, dim=128, create=True):
        pass
    return write_config(tmp_path / "config.toml", f"""
unit_id = "bench-1"
state_dir = "{state}"
model_dir = "{model_cache}"

[detector]
type = "blazeface"

[mqtt]
url = "{broker_url}"
{mqtt_extra}

[[cameras]]
camera_id = "test"
type = "image"
path = "{images}"
loop = true
""")


def test_nothing_there(tmp_path: Path) -> None:
    """No camera, no TPU, no broker: exit 1, and each problem is named with its fix."""
    if doctor.find_edgetpus():
        pytest.skip("this machine has an Edge TPU")
    port = free_port()
    (tmp_path / "state").mkdir()
    config = write_config(tmp_path / "config.toml", f"""
unit_id = "pole-7"
state_dir = "{tmp_path / 'state'}"
model_dir = "{tmp_path / 'no-models'}"

[detector]
type = "coral-ssd"

[mqtt]
url = "mqtt://127.0.0.1:{port}"

[[cameras]]
camera_id = "front"
type = "v4l2"
device = "/dev/video99"
""")
    creds = tmp_path / "creds"
    creds.mkdir()
    proc = facegate("doctor", "--config", str(config), "--credentials-dir", str(creds),
                    "--broker-timeout", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()

    def line(prefix: str) -> str:
        found = [text for text in lines if text.startswith(prefix)]
        assert found, f"no line starting {prefix!r} in:\n{proc.stdout}"
        return found[0]

    assert line("OK   config").endswith("detector coral-ssd, embedder dlib_tflite")
    camera = line("FAIL camera front: no /dev/video99 — ")
    assert "rpicam-hello --list-cameras" in camera and "group video" in camera
    tpu = line("FAIL tpu: no Edge TPU")
    assert "lsusb" in tpu and "1a6e:089a" in tpu and "/dev/apex_0" in tpu
    # Trusted through the manifest's git blob id, the Coral model is refused as absent, and
    # the fix is to provision it (no hash to find by hand any more).
    coral = line("FAIL model coral-ssd-face")
    assert "is not downloaded" in coral and "--with-coral" in coral and "git blob id" in coral
    assert "facegate models build" in line("FAIL model dlib-resnet-v1")
    assert line(f"FAIL broker mqtt://127.0.0.1:{port}: ") == (
        f"FAIL broker mqtt://127.0.0.1:{port}: connection refused — check the broker is "
        "running and [mqtt] url")
    assert line("WARN gallery: no gallery")
    assert line("OK   state dir")
    assert lines[-1].startswith(f"{len(lines) - 1} checks: 5 failed")
    # Every line that is not OK carries a fix.
    for text in lines[:-1]:
        if not text.startswith("OK "):
            assert " — " in text, text

    as_json = facegate("doctor", "--config", str(config), "--credentials-dir", str(creds),
                       "--broker-timeout", "2", "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert {c["status"] for c in report["checks"]} == {"ok", "warn", "fail"}
    assert all(c["fix"] for c in report["checks"] if c["status"] != "ok")


def test_healthy_unit(tmp_path: Path, model_cache: Path, broker: LocalBroker) -> None:
    config = healthy_unit(tmp_path, model_cache, broker.url)
    proc = facegate("doctor", "--config", str(config), "--credentials-dir",
                    str(tmp_path / "none"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert not [text for text in lines if text.startswith(("FAIL", "WARN"))], proc.stdout
    text = proc.stdout
    assert "OK   camera test: 640x480 frame in " in text
    assert "OK   tpu: not used (detector blazeface, embedder dlib_tflite)" in text
    assert "OK   model blazeface-full: " in text
    assert f"OK   model dlib-resnet-v1: {model_cache}" in text
    assert "OK   gallery: version 0 (0 identities, 0 faces, model dlib-resnet-v1" in text
    assert f"OK   broker {broker.url}: connected in " in text
    assert "OK   clock: " in text
    assert "OK   disk: " in text
    assert f"OK   state dir {tmp_path / 'state'}: writable by " in text
    assert lines[-1] == f"{len(lines) - 1} checks: 0 failed, 0 warnings"


def test_broker_credentials(tmp_path: Path, model_cache: Path) -> None:
    """Refused credentials are named as such; the right ones connect (credential files
    resolved through the credentials directory, as under systemd)."""
    creds = tmp_path / "creds"
    creds.mkdir()
    user = BrokerUser("bench-1", "right horse battery")
    with LocalBroker(workdir=tmp_path / "broker", users=(user,)) as server:
        extra = 'username = "bench-1"\npassword_file = "mqtt-password"'
        config, _ = load_config(healthy_unit(tmp_path, model_cache, server.url, extra))
        options = doctor.DoctorOptions(credentials_dir=creds, broker_timeout_s=5)

        missing = doctor.check_broker(config, options)
        assert missing.status is doctor.Status.FAIL
        assert "cannot read the MQTT password" in missing.message

        (creds / "mqtt-password").write_text("wrong staple\n")
        refused = doctor.check_broker(config, options)
        assert refused.status is doctor.Status.FAIL
        assert refused.message.startswith("the broker refused the credentials (")
        assert "mqtt-password" in refused.fix and "username" in refused.fix

        (creds / "mqtt-password").write_text(user.password + "\n")
        accepted = doctor.check_broker(config, options)
        assert accepted.status is doctor.Status.OK, accepted.line()


def test_a_present_tpu_whose_delegate_cannot_load(tmp_path: Path) -> None:
    """A USB Coral in sysfs but no usable libedgetpu here: presence OK, delegate FAIL."""
    if doctor.find_edgetpus():
        pytest.skip("this machine has an Edge TPU")
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    device = sys_root / "bus/usb/devices/1-1"
    device.mkdir(parents=True)
    for name, value in (("idVendor", "18d1"), ("idProduct", "9302"), ("busnum", "1"),
                        ("devnum", "4")):
        (device / name).write_text(value + "\n")
    node = dev_root / "bus/usb/001/004"
    node.parent.mkdir(parents=True)
    node.write_bytes(b"")
    config, _ = load_config(write_config(tmp_path / "c.toml", """
unit_id = "u"
[detector]
type = "coral-ssd"
device = "usb"
[mqtt]
url = "mqtt://127.0.0.1:1"
[[cameras]]
camera_id = "c"
type = "v4l2"
"""))
    results = doctor.check_tpu(config, doctor.DoctorOptions(sys_root=sys_root, dev_root=dev_root))
    assert [r.name for r in results] == ["tpu", "tpu delegate"]
    assert results[0].status is doctor.Status.OK
    assert f"USB 18d1:9302 at {node}" in results[0].message
    assert results[1].status is doctor.Status.FAIL
    assert "When the Edge TPU delegate fails to load" in results[1].fix
    # Asking for a PCIe Coral ignores the USB one.
    pci_config = config.model_copy(update={"detector": config.detector.model_copy(
        update={"device": "pci"})})
    pci = doctor.check_tpu(pci_config, doctor.DoctorOptions(sys_root=sys_root, dev_root=dev_root))
    assert pci[0].status is doctor.Status.FAIL and "of kind pci" in pci[0].message


def test_sync_keys_as_systemd_passes_them(tmp_path: Path, model_cache: Path) -> None:
    """[sync] trusted_keys = "trusted-keys": systemd flattens the directory credential
    into trusted-keys_<file>; the doctor loads them the way the service does."""
    from device.sync.keys import generate_key

    creds = tmp_path / "creds"
    creds.mkdir()
    extra = '\n[sync]\ntrusted_keys = "trusted-keys"\n'
    config_path = healthy_unit(tmp_path, model_cache, "mqtt://127.0.0.1:1")
    config_path.write_text(config_path.read_text() + extra)
    config, _ = load_config(config_path)
    options = doctor.DoctorOptions(credentials_dir=creds)
    missing = doctor.check_sync_keys(config, options)
    assert missing.status is doctor.Status.FAIL and "--trusted-keys" in missing.fix
    pair = generate_key(tmp_path / "private", "ops")
    (creds / "trusted-keys_ops.pub").write_bytes(pair.public.read_bytes())
    found = doctor.check_sync_keys(config, options)
    assert found.line() == "OK   sync keys: 1 trusted signing key(s), threshold 1"

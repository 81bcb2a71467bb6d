"""provision-unit.sh --root: the same tree twice, with the unit, config, credentials
layout and model manifest; a Coral model that does not match its trusted identity (the
manifest's git blob id), or has none, refused before anything is done."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from device.service.config import load_config
from device.sync.keys import generate_key
from device.vision import models as model_manifest

REPO = Path(__file__).resolve().parents[2]


def provision(root: Path, *args: str, repo: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    return subprocess.run(
        ["bash", str(repo / "provisioning" / "provision-unit.sh"), "--root", str(root),
         "--python", sys.executable, *args],
        capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
        env=env, cwd=repo,  # python -m puts the working directory first on sys.path
    )


def repo_with_coral_identity(tmp_path: Path, git_blob: str | None) -> Path:
    """A copy of the parts of the checkout provisioning uses, whose manifest records
    ``git_blob`` for the Coral model (``None``: no blob id at all)."""
    repo = tmp_path / "repo"
    for part in ("device", "models", "provisioning", "systemd"):
        shutil.copytree(REPO / part, repo / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    manifest = repo / "models" / "manifest.toml"
    text = manifest.read_text()
    shipped = 'git_blob = "026972bf762815ba56f8403b2c9e7ab0bc77f547"\n'
    assert shipped in text
    manifest.write_text(text.replace(shipped, f'git_blob = "{git_blob}"\n' if git_blob else ""))
    return repo


def snapshot(root: Path) -> list[tuple[str, str, str]]:
    """(path, mode, sha256 or link target) of everything under ``root``, sorted."""
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            rows.append((str(path.relative_to(root)), oct(st.st_mode & 0o7777), what))
    return sorted(rows)


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    secrets = tmp_path / "inputs"
    keys = secrets / "keys"
    generate_key(secrets / "private", "ops")
    keys.mkdir(parents=True)
    (keys / "ops.pub").write_bytes((secrets / "private" / "ops.pub").read_bytes())
    (keys / "README.txt").write_text("public keys of the gallery signers\n")
    reviewers = secrets / "reviewers"
    generate_key(secrets / "console", "alice")
    reviewers.mkdir()
    (reviewers / "alice.pub").write_bytes((secrets / "console" / "alice.pub").read_bytes())
    password = secrets / "mqtt-password.txt"
    password.write_text("s3cret\n")
    images = secrets / "images"
    images.mkdir()
    return {"keys": keys, "password": password, "images": images, "reviewers": reviewers}


def unit_args(inputs: dict[str, Path], broker: str = "mqtts://broker.example:8883") -> list[str]:
    return [
        "--unit-id", "door-1", "--broker", broker,
        "--camera", "front=picamera2", "--camera", "usb=v4l2:/dev/video2",
        "--camera", f"test=image:{inputs['images']}",
        "--mqtt-username", "door-1", "--mqtt-password-file", str(inputs["password"]),
        "--trusted-keys", str(inputs["keys"]), "--review-keys", str(inputs["reviewers"]),
    ]


def test_root_mode_is_idempotent_and_complete(tmp_path: Path, inputs: dict[str, Path]) -> None:
    root = tmp_path / "unit"
    first = provision(root, *unit_args(inputs))
    assert first.returncode == 0, first.stderr
    tree = snapshot(root)
    second = provision(root, *unit_args(inputs))
    assert second.returncode == 0, second.stderr
    assert snapshot(root) == tree
    assert "config: unchanged /etc/facegate/config.toml" in second.stderr

    files = {path: (mode, what) for path, mode, what in tree}
    # Units and udev rule: the repository's files, verbatim.
    for src, dst in (("systemd/facegate.service", "etc/systemd/system/facegate.service"),
                     ("systemd/facegate-retry.timer", "etc/systemd/system/facegate-retry.timer"),
                     ("systemd/99-facegate-coral.rules",
                      "etc/udev/rules.d/99-facegate-coral.rules")):
        assert files[dst] == ("0o644", hashlib.sha256((REPO / src).read_bytes()).hexdigest())

    # Credentials: root-only directory, 0600 files, keys without the README.
    assert files["etc/facegate"][0] == "0o750"
    assert files["etc/facegate/credentials"][0] == "0o700"
    assert files["etc/facegate/credentials/mqtt-password"] == (
        "0o600", hashlib.sha256(b"s3cret\n").hexdigest())
    assert files["etc/facegate/credentials/tls-key.pem"] == (
        "0o600", hashlib.sha256(b"").hexdigest())
    assert files["etc/facegate/credentials/trusted-keys"][0] == "0o700"
    assert files["etc/facegate/credentials/trusted-keys/ops.pub"][0] == "0o600"
    # Reviewers' keys: a credential of their own, apart from the gallery signers.
    assert files["etc/facegate/credentials/review-keys"][0] == "0o700"
    assert files["etc/facegate/credentials/review-keys/alice.pub"][0] == "0o600"
    assert "etc/facegate/credentials/trusted-keys/alice.pub" not in files
    assert not any("README" in path for path in files if "credentials" in path)

    # The config: validated by the service's own loader, names the credentials.
    config_path = root / "etc/facegate/config.toml"
    assert files["etc/facegate/config.toml"][0] == "0o640"
    config, _ = load_config(config_path)
    assert config.unit_id == "door-1"
    assert config.mqtt.url == "mqtts://broker.example:8883"
    assert config.mqtt.password_file == "mqtt-password"
    assert config.state_dir == Path("/var/lib/facegate")
    assert config.model_dir == Path("/var/lib/facegate/models")
    assert [(c.camera_id, c.type) for c in config.cameras] == [
        ("front", "picamera2"), ("usb", "v4l2"), ("test", "image")]
    assert config.detector.type == "blazeface"
    assert config.sync is not None and config.sync.trusted_keys == "trusted-keys"
    assert config.review is not None and config.review.trusted_keys == "review-keys"
    assert (root / "etc/facegate/config.example.toml").read_bytes() == (
        REPO / "provisioning/config.example.toml").read_bytes()

    # The model manifest, as the package ships it.
    manifest = root / "var/lib/facegate/models/manifest.toml"
    assert manifest.read_bytes() == (REPO / "models/manifest.toml").read_bytes()
    assert tomllib.loads(manifest.read_text())["schema"] == 1

    # What a live run would do, in order.
    actions = (root / "var/lib/facegate-provision/actions.txt").read_text().splitlines()
    for expected in ("apt-get update", "python3 -m venv --system-site-packages /opt/facegate/venv",
                     "facegate models build --cache-dir /var/lib/facegate/models",
                     "systemctl enable facegate.service facegate-retry.timer",
                     "systemctl restart facegate.service"):
        assert any(expected in line for line in actions), expected
    assert any(line.startswith("id -u facegate") and "useradd --system" in line
               for line in actions)
    assert files["usr/local/bin/facegate"][1] == "-> /opt/facegate/venv/bin/facegate"
    # Nothing secret ended up outside the credentials directory.
    for path in files:
        if not path.startswith("etc/facegate/credentials"):
            target = root / path
            if target.is_file() and not target.is_symlink():
                assert b"s3cret" not in target.read_bytes(), path


def test_coral_without_any_identity_is_refused_before_anything_happens(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    repo = repo_with_coral_identity(tmp_path, None)
    root = tmp_path / "unit"
    proc = provision(root, *unit_args(inputs), "--with-coral", repo=repo)
    assert proc.returncode != 0
    assert "pins no sha256" in proc.stderr
    assert "--coral-sha256" in proc.stderr
    assert list(root.iterdir()) == []


def test_coral_download_is_planned_against_the_manifest_blob_id(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    """No --coral-sha256 is needed: the shipped manifest's git blob id is the identity."""
    root = tmp_path / "unit"
    proc = provision(root, *unit_args(inputs), "--with-coral")
    assert proc.returncode == 0, proc.stderr
    assert "git blob 026972bf762815ba56f8403b2c9e7ab0bc77f547" in proc.stderr
    actions = (root / "var/lib/facegate-provision/actions.txt").read_text()
    assert ("-m device.ops.provision install-model coral-ssd-face "
            "--dest /var/lib/facegate/models") in actions
    assert "libedgetpu1-std" in actions
    # A live run refuses an Edge TPU runtime and interpreter that are not a known pair.
    assert "-m device.ops.provision check-edgetpu-pair" in actions


def test_a_coral_file_that_does_not_match_the_git_blob_is_refused(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    model = tmp_path / "coral.tflite"
    model.write_bytes(b"not really a model, but these exact bytes" * 100)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    root = tmp_path / "unit"
    # Its own sha256 given as --coral-sha256 does not let it in: the blob id is checked too.
    for extra in ([], ["--coral-sha256", digest]):
        proc = provision(root, *unit_args(inputs), "--with-coral", *extra,
                         "--coral-model-file", str(model))
        assert proc.returncode != 0
        assert (f"{model} (4100 bytes) has git blob id "
                f"{model_manifest.git_blob_id(model)}, but the manifest records "
                "026972bf762815ba56f8403b2c9e7ab0bc77f547 for it (google-coral/test_data at "
                "commit 104342d2d3480b3e66203073dac24f4e2dbb4c41); refusing it") in proc.stderr
        assert list(root.iterdir()) == []


def test_coral_with_a_matching_local_copy(tmp_path: Path, inputs: dict[str, Path]) -> None:
    model = tmp_path / "coral.tflite"
    model.write_bytes(b"not really a model, but these exact bytes" * 100)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    repo = repo_with_coral_identity(tmp_path, model_manifest.git_blob_id(model))
    root = tmp_path / "unit"
    # One byte changed: refused before anything is written.
    changed = tmp_path / "changed.tflite"
    data = bytearray(model.read_bytes())
    data[2000] ^= 0x20
    changed.write_bytes(bytes(data))
    wrong = provision(root, *unit_args(inputs), "--with-coral", "--coral-model-file",
                      str(changed), repo=repo)
    assert wrong.returncode != 0
    assert f"{changed} (4100 bytes) has git blob id" in wrong.stderr
    assert list(root.iterdir()) == []
    # A disagreeing --coral-sha256 is refused even though the blob id matches.
    other = provision(root, *unit_args(inputs), "--with-coral", "--coral-sha256", "0" * 64,
                      "--coral-model-file", str(model), repo=repo)
    assert other.returncode != 0
    assert f"has sha256 {digest}, expected {'0' * 64}" in other.stderr
    assert list(root.iterdir()) == []
    args = [*unit_args(inputs), "--with-coral", "--coral-model-file", str(model),
            "--coral-device", "usb"]
    good = provision(root, *args, repo=repo)
    assert good.returncode == 0, good.stderr
    models = root / "var/lib/facegate/models"
    name = "ssd_mobilenet_v2_face_quant_postprocess_edgetpu.tflite"
    assert (models / name).read_bytes() == model.read_bytes()
    # The sha256 recorded as the installer pin is the verified file's.
    assert (models / f"{name}.sha256").read_text() == f"{digest}  {name}\n"
    config, _ = load_config(root / "etc/facegate/config.toml")
    assert config.detector.type == "coral-ssd"
    assert config.detector.device == "usb"
    assert "signed-by=" in (root / "etc/apt/sources.list.d/coral-edgetpu.list").read_text()
    actions = (root / "var/lib/facegate-provision/actions.txt").read_text()
    assert "libedgetpu1-std" in actions
    tree = snapshot(root)
    assert provision(root, *args, repo=repo).returncode == 0
    assert snapshot(root) == tree


@pytest.mark.skipif(not os.environ.get("FACEGATE_CORAL_FILE"),
                    reason="set FACEGATE_CORAL_FILE to a copy of Coral's Edge TPU face model")
def test_the_real_coral_file_is_taken_by_the_shipped_manifest(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    model = Path(os.environ["FACEGATE_CORAL_FILE"])
    root = tmp_path / "unit"
    proc = provision(root, *unit_args(inputs), "--with-coral", "--coral-model-file", str(model))
    assert proc.returncode == 0, proc.stderr
    name = "ssd_mobilenet_v2_face_quant_postprocess_edgetpu.tflite"
    installed = root / "var/lib/facegate/models" / name
    assert model_manifest.git_blob_id(installed) == "026972bf762815ba56f8403b2c9e7ab0bc77f547"
    assert model_manifest.verified_path("coral-ssd-face", cache_dir=installed.parent) == installed


def test_a_hand_edited_config_is_kept_unless_forced(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    root = tmp_path / "unit"
    assert provision(root, *unit_args(inputs)).returncode == 0
    config = root / "etc/facegate/config.toml"
    edited = config.read_text().replace("[detector]", "# tuned by hand\n[detector]")
    config.write_text(edited)
    other = provision(root, *unit_args(inputs, broker="mqtt://10.0.0.9"))
    assert other.returncode == 0, other.stderr
    assert "was kept" in other.stderr
    assert config.read_text() == edited
    assert 'url = "mqtt://10.0.0.9"' in (root / "etc/facegate/config.toml.new").read_text()
    forced = provision(root, *unit_args(inputs, broker="mqtt://10.0.0.9"), "--force-config")
    assert forced.returncode == 0, forced.stderr
    assert 'url = "mqtt://10.0.0.9"' in config.read_text()
    assert not (root / "etc/facegate/config.toml.new").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--camera", "front"], "write NAME=SPEC"),
        (["--camera", "front=webcam"], "unknown source"),
        (["--broker", "http://x"], "mqtt:// or mqtts://"),
        (["--unit-id", "bad id"], "unit_id"),
        (["--detector", "coral-ssd"], "needs --with-coral"),
    ],
)
def test_bad_options_are_refused(
    tmp_path: Path, inputs: dict[str, Path], args: list[str], message: str
) -> None:
    base = ["--unit-id", "door-1", "--broker", "mqtt://h", "--camera", "c=picamera2"]
    proc = provision(tmp_path / "unit", *base, *args)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr

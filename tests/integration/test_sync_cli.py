"""``facegate keys`` and ``facegate sync`` on real files and a real broker."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from click.testing import CliRunner, Result
from paho.mqtt.enums import CallbackAPIVersion

from device.cli import main
from device.ops.localbroker import LocalBroker
from device.vision.dlib_tflite import DLIB_MODEL_ID
from tests.support.gallery import DIM, MODEL
from tests.support.sync import World


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def out(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def keys(tmp_path: Path, name: str) -> dict[str, str]:
    info = out(run("keys", "generate", "-o", str(tmp_path / "keys"), "--name", name, "--json"))
    trusted = tmp_path / "trusted"
    trusted.mkdir(exist_ok=True)
    (trusted / f"{name}.pub").write_bytes(Path(info["public"]).read_bytes())
    return info


def test_keys_generate_and_id(tmp_path: Path) -> None:
    info = keys(tmp_path, "ops")
    assert stat.S_IMODE(Path(info["private"]).stat().st_mode) == 0o600
    assert run("keys", "id", info["public"]).stdout.strip() == info["keyid"]
    assert run("keys", "id", info["private"]).stdout.strip() == info["keyid"]
    again = run("keys", "generate", "-o", str(tmp_path / "keys"), "--name", "ops")
    assert again.exit_code == 2 and "exists already" in again.output
    text = run("keys", "generate", "-o", str(tmp_path / "keys"), "--name", "other").stdout
    assert "mode 0600" in text


def test_build_sign_apply_status(tmp_path: Path) -> None:
    world = World(tmp_path / "world")
    a, b = keys(tmp_path, "alice"), keys(tmp_path, "bob")
    unit_db = tmp_path / "unit" / "gallery.db"
    bundles = tmp_path / "bundles"
    v1 = out(run("sync", "build", "--gallery", str(world.central), "--version", "1",
                 "--key", a["private"], "-o", str(bundles / "v1"), "--chunk-size", "4096",
                 "--json"))
    assert (v1["kind"], v1["identities"], v1["signed_by"]) == ("full", 6, [a["keyid"]])
    common = ("--db", str(unit_db), "--trusted-keys", str(tmp_path / "trusted"))

    # Threshold 2: one signature is refused (exit 3), a second signature makes it.
    refused = run("sync", "apply", str(bundles / "v1"), *common, "--threshold", "2",
                  "--model-id", MODEL, "--dim", str(DIM))
    assert refused.exit_code == 3 and "refused (threshold)" in refused.output
    signed = out(run("sync", "sign", str(bundles / "v1"), "--key", b["private"], "--json"))
    assert sorted(signed["signed_by"]) == sorted([a["keyid"], b["keyid"]])
    applied = out(run("sync", "apply", str(bundles / "v1"), *common, "--threshold", "2",
                      "--model-id", MODEL, "--dim", str(DIM), "--json"))
    assert (applied["outcome"], applied["version"], applied["identities"]) == ("ok", 1, 6)
    again = run("sync", "apply", str(bundles / "v1"), *common)
    assert again.exit_code == 0 and "already live: version 1" in again.stdout

    world.edit()
    v2 = out(run("sync", "build", "--gallery", str(world.central), "--version", "2",
                 "--key", a["private"], "-o", str(bundles / "v2"),
                 "--delta-from", str(bundles / "v1"), "--json"))
    assert (v2["kind"], v2["base_version"], v2["added"], v2["removed"]) == ("delta", 1, 1, 1)
    audit = tmp_path / "audit.db"
    text = run("sync", "apply", str(bundles / "v2"), *common, "--audit-log", str(audit))
    assert text.exit_code == 0 and "applied version 2" in text.stdout, text.output
    old = run("sync", "apply", str(bundles / "v1"), *common, "--json")
    assert old.exit_code == 3 and json.loads(old.stdout)["reason"] == "rollback"

    status = out(run("sync", "status", "--db", str(unit_db), "--json"))
    assert (status["version"], status["floor"], status["status"]) == (2, 2, "active")
    assert status["last_refusal"]["message"].startswith("refused (rollback)")
    assert status["bundle_sha256"] == v2["bundle_sha256"] and status["expires"]
    assert "version     2 (floor 2)" in run("sync", "status", "--db", str(unit_db)).stdout
    assert audit.exists()


def test_publish_retains_chunks_and_manifest(tmp_path: Path, broker: LocalBroker) -> None:
    world = World(tmp_path / "world")
    a = keys(tmp_path, "alice")
    bundle = tmp_path / "b1"
    built = out(run("sync", "build", "--gallery", str(world.central), "--version", "1",
                    "--key", a["private"], "-o", str(bundle), "--chunk-size", "4096",
                    "--json"))
    report = out(run("sync", "publish", str(bundle), "--broker", broker.url, "--json"))
    assert report == {"manifest_topic": "facegate/fleet/gallery/manifest",
                      "chunks": built["chunks"], "version": 1,
                      "bundle_sha256": built["bundle_sha256"]}
    got: dict[str, bytes] = {}
    cond = threading.Condition()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with cond:
            got[msg.topic] = bytes(msg.payload)
            cond.notify_all()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe("facegate/fleet/gallery/#", qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    with cond:
        assert cond.wait_for(lambda: len(got) == built["chunks"] + 1, 10), sorted(got)
    client.disconnect()
    client.loop_stop()
    assert got["facegate/fleet/gallery/manifest"] == (bundle / "manifest.json").read_bytes()
    payload = b"".join(got[f"facegate/fleet/gallery/v1/chunk/{i}"]
                       for i in range(built["chunks"]))
    assert payload == (bundle / "payload").read_bytes()


def _facegate(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed console entry point, in a fresh process, with its own state directory."""
    env = {**os.environ, "STATE_DIRECTORY": str(state)}
    return subprocess.run([sys.executable, "-c", "from device.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_first_apply_on_a_new_unit_takes_the_model_from_the_unit(tmp_path: Path) -> None:
    """The README's `sync apply DIR --trusted-keys …` on an empty state directory: the
    unit's model is its embedder's (dimension from the model manifest), so a bundle for
    it applies and a bundle for another model is refused."""
    a = keys(tmp_path, "alice")
    state = tmp_path / "state"
    ours = World(tmp_path / "ours", model=DLIB_MODEL_ID, dim=128)
    other = World(tmp_path / "other")  # test-embedder-v1
    for name, world in (("ours", ours), ("other", other)):
        out(run("sync", "build", "--gallery", str(world.central), "--version", "1",
                "--key", a["private"], "-o", str(tmp_path / "bundles" / name), "--json"))

    refused = _facegate(state, "sync", "apply", str(tmp_path / "bundles" / "other"),
                        "--trusted-keys", str(tmp_path / "trusted"))
    assert refused.returncode == 3, refused.stderr
    assert f"this unit runs {DLIB_MODEL_ID} (dimension 128)" in refused.stderr
    assert refused.stderr.count("refused (model_mismatch)") == 1, refused.stderr

    applied = _facegate(state, "sync", "apply", str(tmp_path / "bundles" / "ours"),
                        "--trusted-keys", str(tmp_path / "trusted"))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == "applied version 1 (6 identities)\n"
    assert f"facegate: state directory {state}" in applied.stderr
    status = json.loads(_facegate(state, "sync", "status", "--json").stdout)
    assert (status["version"], status["identities"]) == (1, 6)


def test_first_apply_with_the_unit_config(tmp_path: Path) -> None:
    """--config names the unit's gallery, audit log and embedder."""
    a = keys(tmp_path, "alice")
    world = World(tmp_path / "world", model=DLIB_MODEL_ID, dim=128)
    out(run("sync", "build", "--gallery", str(world.central), "--version", "1",
            "--key", a["private"], "-o", str(tmp_path / "v1"), "--json"))
    unit = tmp_path / "unit"
    config = tmp_path / "config.toml"
    config.write_text(f'unit_id = "unit-7"\nstate_dir = "{unit}"\n'
                      '[[cameras]]\ntype = "video"\ncamera_id = "c"\npath = "x.mp4"\n'
                      '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n', encoding="utf-8")
    applied = out(run("sync", "apply", str(tmp_path / "v1"), "--config", str(config),
                      "--trusted-keys", str(tmp_path / "trusted"), "--json"))
    assert (applied["outcome"], applied["identities"]) == ("ok", 6)
    assert (unit / "gallery.db").exists()
    verified = run("audit", "verify", "--config", str(config), "--json")
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["records"] >= 1


def test_a_failed_apply_is_said_once_with_one_prefix(tmp_path: Path) -> None:
    """A model the manifest does not describe, no --dim and no gallery: one line,
    ``error (config): …``, not ``error: error (config): …`` after a log line saying it too."""
    a = keys(tmp_path, "alice")
    world = World(tmp_path / "world")
    out(run("sync", "build", "--gallery", str(world.central), "--version", "1",
            "--key", a["private"], "-o", str(tmp_path / "v1"), "--json"))
    failed = _facegate(tmp_path / "state", "sync", "apply", str(tmp_path / "v1"),
                       "--trusted-keys", str(tmp_path / "trusted"), "--model-id", MODEL)
    assert failed.returncode == 2
    assert failed.stderr.count("model id and dimension are unknown") == 1, failed.stderr
    assert "error: error" not in failed.stderr
    assert failed.stderr.splitlines()[-1].startswith("error (config): ")

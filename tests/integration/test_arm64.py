"""The unit's own platform, emulated: the real install on Debian bookworm arm64 agrees with x86.

``provisioning/arm64-root.sh`` builds a bookworm arm64 root (debootstrap, run under
qemu-user-static) and provisions facegate into it with ``provision-unit.sh`` itself,
from the hash-locked dependency set. These tests run the installed ``facegate`` inside
that root and compare what it computes with this machine's run of the same inputs:
model sha256 after ``models build``, detections within 0.5 px, embeddings with cosine
>= 0.99999; and they run enrolment, identification, a sync apply and the demo (its
own arm64 mosquitto) there. ``.ci/run`` builds the root; without it they skip.
The short form uses a handful of images; ``slow`` runs the whole boxes set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("FACEGATE_ARM64_ROOT", "/var/cache/facegate-arm64/root"))
SCRIPT = REPO / "provisioning" / "arm64-root.sh"
FACEGATE_IN_ROOT = "/opt/facegate/venv/bin/facegate"
MODELS_IN_ROOT = "/var/lib/facegate/models"
# Emulated aarch64 runs a few times slower than native; generous, bounded.
TIMEOUT = 1800

pytestmark = pytest.mark.arm64


@pytest.fixture(scope="module")
def arm64_root() -> Path:
    if os.geteuid() != 0:
        pytest.skip("the arm64 root is entered with chroot, which needs root")
    if not (ROOT / ".facegate-base").is_file():
        pytest.skip(f"no arm64 root at {ROOT}: build it with "
                    f"`sudo bash {SCRIPT.relative_to(REPO)}` (.ci/run does)")
    # Brings the root's install up to this checkout (a no-op when it already is).
    proc = subprocess.run(["bash", str(SCRIPT), "--root", str(ROOT)], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"arm64-root.sh failed:\n{proc.stderr[-4000:]}"
    return ROOT


def in_root(*cmd: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), "--root", str(ROOT), "--run", *cmd],
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc.stdout


def host_facegate(*args: str) -> str:
    exe = str(Path(sys.executable).with_name("facegate"))
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=TIMEOUT)
    return ok(proc)


def json_lines(text: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _by_image(rows: Sequence[dict[str, object]]) -> dict[str, list[dict[str, object]]]:
    grouped: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        grouped.setdefault(Path(str(row["image"])).name, []).append(row)
    return grouped


def test_the_install_runs_on_aarch64(arm64_root: Path) -> None:
    assert ok(in_root("uname", "-m")).strip() == "aarch64"
    version = ok(in_root(FACEGATE_IN_ROOT, "--version"))
    assert "facegate" in version
    # provision-unit.sh installed every dependency from the lock, nothing else.
    frozen = ok(in_root("/opt/facegate/venv/bin/python", "-m", "pip", "freeze", "--all"))
    assert "numpy==1." in frozen


def test_models_build_gives_the_same_bytes_as_x86(arm64_root: Path, tmp_path: Path) -> None:
    from device.vision import models as manifest

    spec = manifest.get_spec("dlib-resnet-v1")
    host_file = manifest.resolve(spec)
    assert host_file.is_file(), "build the models first (facegate models build)"
    host_sha = manifest.sha256_file(host_file)
    rebuilt = ok(in_root("bash", "-c", f"rm -rf /tmp/mb && {FACEGATE_IN_ROOT} models build "
                         "--cache-dir /tmp/mb >&2 && sha256sum /tmp/mb/*.tflite"))
    shas = dict(reversed(line.split()) for line in rebuilt.splitlines() if line.strip())
    root_sha = next(v for k, v in shas.items() if Path(k).name == host_file.name)
    assert root_sha == host_sha == spec.sha256


def _images(datasets: Path, slow: bool) -> list[Path]:
    boxes = sorted((datasets / "boxes").glob("*.jpg"))
    return boxes if slow else boxes[:4]


def _compare_detections(datasets: Path, images: list[Path]) -> float:
    rel = [str(p.relative_to(datasets)) for p in images]
    host = _by_image(json_lines(host_facegate("detect", "--json", *map(str, images))))
    root = _by_image(json_lines(ok(in_root(FACEGATE_IN_ROOT, "detect", "--json",
                                           *[f"/opt/datasets/{r}" for r in rel]))))
    assert host.keys() == root.keys()
    worst = 0.0
    for name, (h,) in ((k, v) for k, v in host.items()):
        (r,) = root[name]
        hf, rf = h["faces"], r["faces"]
        assert isinstance(hf, list) and isinstance(rf, list)
        assert len(hf) == len(rf), f"{name}: {len(hf)} faces on x86, {len(rf)} on arm64"
        for a, b in zip(hf, rf, strict=True):
            diff = np.abs(np.array(a["box"]) - np.array(b["box"]))
            kp = np.abs(np.array(a["keypoints"]) - np.array(b["keypoints"]))
            worst = max(worst, float(diff.max()), float(kp.max()) if kp.size else 0.0)
    return worst


@pytest.mark.dataset
def test_detections_agree_within_half_a_pixel(arm64_root: Path, datasets: Path) -> None:
    worst = _compare_detections(datasets, _images(datasets, slow=False))
    print(f"\narm64 vs x86 detections: largest box/keypoint difference {worst:.3f} px")
    assert worst <= 0.5


@pytest.mark.dataset
@pytest.mark.slow
def test_detections_agree_on_the_whole_boxes_set(arm64_root: Path, datasets: Path) -> None:
    worst = _compare_detections(datasets, _images(datasets, slow=True))
    print(f"\narm64 vs x86 detections (all boxes images): largest difference {worst:.3f} px")
    assert worst <= 0.5


def _embedding_images(datasets: Path, count: int) -> list[Path]:
    people = sorted((datasets / "lfw" / "people").iterdir())
    picked = [sorted(p.glob("*.jpg"))[0] for p in people[:: max(1, len(people) // count)]]
    return picked[:count]


@pytest.mark.dataset
def test_embeddings_agree_with_x86(arm64_root: Path, datasets: Path) -> None:
    images = _embedding_images(datasets, 8)
    rel = [str(p.relative_to(datasets)) for p in images]
    host = {Path(str(r["image"])).name: r
            for r in json_lines(host_facegate("embed", "--json", *map(str, images)))}
    root = {Path(str(r["image"])).name: r
            for r in json_lines(ok(in_root(FACEGATE_IN_ROOT, "embed", "--json",
                                           *[f"/opt/datasets/{x}" for x in rel])))}
    assert host.keys() == root.keys() and len(host) == len(images)
    cosines = []
    for name, h in host.items():
        a, b = np.array(h["embedding"], dtype=np.float64), np.array(root[name]["embedding"])
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    print(f"\narm64 vs x86 embeddings on {len(cosines)} faces: min cosine {min(cosines):.8f}")
    assert min(cosines) >= 0.99999


@pytest.mark.dataset
def test_enrol_identify_and_sync_apply_in_the_root(arm64_root: Path, datasets: Path,
                                                   tmp_path: Path) -> None:
    person = next(p for p in sorted((datasets / "lfw" / "people").iterdir())
                  if len(list(p.glob("*.jpg"))) >= 4)
    photos = sorted(person.glob("*.jpg"))[:3]
    probe = sorted(person.glob("*.jpg"))[3]
    rel = [f"/opt/datasets/{p.relative_to(datasets)}" for p in photos]
    ok(in_root("bash", "-c", "rm -rf /tmp/fg && mkdir -p /tmp/fg"))
    ok(in_root(FACEGATE_IN_ROOT, "gallery", "enroll", "--skip-rejected", "--db", "/tmp/fg/g.db",
               "--label", "Probe Person", *rel))
    out = ok(in_root(FACEGATE_IN_ROOT, "identify", "--db", "/tmp/fg/g.db", "--json",
                     f"/opt/datasets/{probe.relative_to(datasets)}"))
    faces = json.loads(out)["faces"]
    assert [(f["decision"], f["label"]) for f in faces] == [("match", "Probe Person")], out

    # The operator builds and signs a bundle here; the unit applies it there.
    host_facegate("gallery", "enroll", "--skip-rejected", "--db", str(tmp_path / "central.db"),
                  "--label", "Probe Person", *map(str, photos))
    host_facegate("keys", "generate", "-o", str(tmp_path / "keys"), "--name", "ops")
    bundle = ROOT / "tmp" / "fg" / "v1"
    host_facegate("sync", "build", "--gallery", str(tmp_path / "central.db"), "--version", "1",
                  "--key", str(tmp_path / "keys" / "ops.key"), "-o", str(bundle))
    shutil.copy(tmp_path / "keys" / "ops.pub", ROOT / "tmp" / "fg" / "ops.pub")
    os.makedirs(ROOT / "tmp" / "fg" / "trusted", exist_ok=True)
    shutil.copy(tmp_path / "keys" / "ops.pub", ROOT / "tmp" / "fg" / "trusted" / "ops.pub")
    applied = ok(in_root(FACEGATE_IN_ROOT, "sync", "apply", "/tmp/fg/v1", "--db",
                         "/tmp/fg/unit.db", "--trusted-keys", "/tmp/fg/trusted",
                         "--model-id", "dlib-resnet-v1", "--dim", "128", "--json"))
    result = json.loads(applied)
    assert result["outcome"] == "ok" and result["version"] == 1


def test_demo_runs_end_to_end_on_arm64(arm64_root: Path) -> None:
    """``facegate demo``: enrol, replay, publish through the root's own (arm64) mosquitto."""
    proc = in_root(FACEGATE_IN_ROOT, "demo")
    out = ok(proc)
    assert "Eileen Collins" in out, out[-3000:]

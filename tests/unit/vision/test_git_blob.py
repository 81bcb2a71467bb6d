"""Git blob ids of model files: the same as ``git hash-object``, carried by the manifest and
checked by the runtime beside the sha256 pin."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from device.errors import ModelError
from device.vision import models as model_manifest

REPO = Path(__file__).resolve().parents[3]


def git_hash_object(path: Path) -> str:
    proc = subprocess.run(["git", "hash-object", "--no-filters", str(path)], capture_output=True,
                          text=True, check=True, timeout=60)
    return proc.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_blob_ids_are_what_git_hash_object_prints(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    files = {
        "empty": b"",
        "text": b"hello\n",
        "nul": b"\x00" * 17,
        # Crosses the 1 MiB read block: the header carries the whole size, not a block's.
        "random": rng.integers(0, 256, (1 << 20) + 12345, dtype=np.uint8).tobytes(),
    }
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        expected = git_hash_object(path)
        assert model_manifest.git_blob_id(path) == expected, name
        assert model_manifest.git_blob_id_of(data) == expected, name
        sha256, blob = model_manifest.file_digests(path)
        assert blob == expected
        assert sha256 == model_manifest.sha256_file(path)
    shipped_files = (REPO / "models" / "manifest.toml",
                     model_manifest.verified_path("blazeface-full"))
    for shipped in shipped_files:
        assert model_manifest.git_blob_id(shipped) == git_hash_object(shipped)
    # git's own well-known ids.
    assert model_manifest.git_blob_id_of(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert model_manifest.git_blob_id_of(b"hello\n") == (
        "ce013625030ba8dba906f756967f9e9ca394464a")


def test_the_manifest_carries_both_coral_files_with_their_commit() -> None:
    specs = model_manifest.load_manifest()
    commit = "104342d2d3480b3e66203073dac24f4e2dbb4c41"
    edgetpu, cpu = specs["coral-ssd-face"], specs["coral-ssd-face-cpu"]
    assert edgetpu.git_blob == "026972bf762815ba56f8403b2c9e7ab0bc77f547"
    assert cpu.git_blob == "1a36d6c963890c1fd3f1e386d8bd5970e872b38c"
    for spec, name in ((edgetpu, "ssd_mobilenet_v2_face_quant_postprocess_edgetpu.tflite"),
                       (cpu, "ssd_mobilenet_v2_face_quant_postprocess.tflite")):
        assert spec.git_commit == commit
        assert spec.extra["git_repo"] == "google-coral/test_data"
        assert spec.path == name
        # The download is the file at that commit, not whatever master holds later.
        assert spec.url == f"https://github.com/google-coral/test_data/raw/{commit}/{name}"
        assert spec.source == "url"
    assert edgetpu.extra["edgetpu"] is True
    assert cpu.extra["edgetpu"] is False


def _manifest(tmp_path: Path, blob: str, sha256: str = "") -> dict[str, model_manifest.ModelSpec]:
    toml = tmp_path / "manifest.toml"
    toml.write_text(
        'schema = 1\n[models.m]\nkind = "detector"\nsource = "url"\n'
        'url = "https://example.invalid/m.tflite"\npath = "m.tflite"\n'
        f'sha256 = "{sha256}"\ngit_repo = "example/models"\ngit_commit = "{"c" * 40}"\n'
        f'git_blob = "{blob}"\n',
        encoding="utf-8",
    )
    return model_manifest.load_manifest(toml)


def test_a_malformed_blob_id_is_refused_when_the_manifest_is_read(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"\[models.m\] git_blob 'xyz' is not a git object id"):
        _manifest(tmp_path, "xyz")


def test_the_runtime_checks_the_blob_id_and_refuses_a_one_byte_change(tmp_path: Path) -> None:
    data = os.urandom(4096)
    cache = tmp_path / "cache"
    cache.mkdir()
    model = cache / "m.tflite"
    model.write_bytes(data)
    manifest = _manifest(tmp_path, model_manifest.git_blob_id_of(data))
    # No sha256 anywhere: the blob id alone identifies the file.
    assert model_manifest.verified_path("m", cache_dir=cache, manifest=manifest) == model
    changed = bytearray(data)
    changed[-1] ^= 0x80
    model.write_bytes(bytes(changed))
    with pytest.raises(ModelError, match=r"has git blob id .* but the manifest records"):
        model_manifest.verified_path("m", cache_dir=cache, manifest=manifest)
    # A matching installer pin does not excuse a wrong blob id (both are checked).
    (cache / "m.tflite.sha256").write_text(model_manifest.sha256_file(model) + "  m.tflite\n")
    with pytest.raises(ModelError, match="git blob id"):
        model_manifest.verified_path("m", cache_dir=cache, manifest=manifest)
    # The right bytes with a stale installer pin: refused on the sha256.
    model.write_bytes(data)
    with pytest.raises(ModelError, match="but the manifest pins"):
        model_manifest.verified_path("m", cache_dir=cache, manifest=manifest)
    (cache / "m.tflite.sha256").write_text(model_manifest.sha256_file(model) + "  m.tflite\n")
    assert model_manifest.verified_path("m", cache_dir=cache, manifest=manifest) == model


def test_a_missing_coral_file_is_reported_as_not_downloaded(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is not downloaded"):
        model_manifest.verified_path("coral-ssd-face", cache_dir=tmp_path)

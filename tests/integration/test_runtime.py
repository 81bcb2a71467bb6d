"""The model runtime with real BlazeFace files: loading, lifecycle, refusing bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from device.errors import ModelError
from device.vision import models as model_manifest
from device.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector
from device.vision.runtime import ModelRuntime


def _manifest(tmp_path: Path, file_name: str, sha256: str, model_id: str = "blazeface-full"
              ) -> dict[str, model_manifest.ModelSpec]:
    toml = tmp_path / "manifest.toml"
    toml.write_text(
        f'schema = 1\n[models.{model_id}]\nkind = "detector"\nsource = "url"\n'
        f'url = "https://example.invalid/{file_name}"\npath = "{file_name}"\n'
        f'sha256 = "{sha256}"\n'
        "input = { width = 192, height = 192, mean = 127.5, std = 127.5 }\n",
        encoding="utf-8",
    )
    return model_manifest.load_manifest(toml)


@pytest.fixture
def full_model() -> Path:
    return model_manifest.verified_path("blazeface-full")


def test_loads_describes_and_runs_the_full_range_model() -> None:
    with ModelRuntime("blazeface-full", num_threads=1) as rt:
        assert [i.shape for i in rt.inputs] == [(1, 192, 192, 3)]
        assert rt.inputs[0].dtype == "float32"
        assert sorted(o.shape for o in rt.outputs) == [(1, 2304, 1), (1, 2304, 16)]
        outs = rt.run(np.zeros((1, 192, 192, 3), np.float32))
        assert sorted(o.shape for o in outs) == [(1, 2304, 1), (1, 2304, 16)]
        with pytest.raises(ModelError, match="wants float32"):
            rt.run(np.zeros((1, 128, 128, 3), np.float32))
    assert rt.closed
    rt.close()  # idempotent
    with pytest.raises(ModelError, match="closed"):
        rt.run(np.zeros((1, 192, 192, 3), np.float32))


def test_one_changed_byte_is_refused(tmp_path: Path, full_model: Path) -> None:
    copy = tmp_path / "model.tflite"
    shutil.copyfile(full_model, copy)
    manifest = _manifest(tmp_path, copy.name, model_manifest.sha256_file(full_model))
    with ModelRuntime("blazeface-full", cache_dir=tmp_path, manifest=manifest):
        pass  # the intact copy loads
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        ModelRuntime("blazeface-full", cache_dir=tmp_path, manifest=manifest)


def test_a_truncated_file_is_refused(tmp_path: Path, full_model: Path) -> None:
    copy = tmp_path / "model.tflite"
    copy.write_bytes(full_model.read_bytes()[:4096])
    manifest = _manifest(tmp_path, copy.name, model_manifest.sha256_file(full_model))
    with pytest.raises(ModelError, match="truncated"):
        BlazeFaceDetector(cache_dir=tmp_path, manifest=manifest)


def test_a_pinned_file_that_is_not_a_model_gives_a_model_error(tmp_path: Path) -> None:
    junk = tmp_path / "model.tflite"
    junk.write_bytes(b"this is not a flatbuffer" * 100)
    manifest = _manifest(tmp_path, junk.name, model_manifest.sha256_file(junk))
    with pytest.raises(ModelError, match="passed its hash check but the interpreter"):
        ModelRuntime("blazeface-full", cache_dir=tmp_path, manifest=manifest)


def test_an_empty_pin_is_refused(tmp_path: Path, full_model: Path) -> None:
    shutil.copyfile(full_model, tmp_path / "model.tflite")
    manifest = _manifest(tmp_path, "model.tflite", "")
    with pytest.raises(ModelError, match="pins no sha256"):
        ModelRuntime("blazeface-full", cache_dir=tmp_path, manifest=manifest)


def test_an_installer_pin_unlocks_an_unpinned_url_model(tmp_path: Path, full_model: Path) -> None:
    """provision-unit.sh --coral-sha256 records <file>.sha256 in the cache; the runtime honours
    it only where the manifest has no pin, and still checks the bytes against it."""
    shutil.copyfile(full_model, tmp_path / "model.tflite")
    manifest = _manifest(tmp_path, "model.tflite", "")
    pin = tmp_path / "model.tflite.sha256"
    pin.write_text(model_manifest.sha256_file(full_model) + "  model.tflite\n")
    with ModelRuntime("blazeface-full", cache_dir=tmp_path, manifest=manifest) as rt:
        assert rt is not None
    pin.write_text("0" * 64 + "\n")
    with pytest.raises(ModelError, match="truncated, corrupted"):
        ModelRuntime("blazeface-full", cache_dir=tmp_path, manifest=manifest)
    pin.write_text("not a hash\n")
    with pytest.raises(ModelError, match="pins no sha256"):
        ModelRuntime("blazeface-full", cache_dir=tmp_path, manifest=manifest)


def test_a_manifest_pin_wins_over_an_installer_pin(tmp_path: Path, full_model: Path) -> None:
    shutil.copyfile(full_model, tmp_path / "model.tflite")
    manifest = _manifest(tmp_path, "model.tflite", "1" * 64)
    (tmp_path / "model.tflite.sha256").write_text(model_manifest.sha256_file(full_model))
    with pytest.raises(ModelError, match="truncated, corrupted"):
        ModelRuntime("blazeface-full", cache_dir=tmp_path, manifest=manifest)


def test_the_wrong_blazeface_variant_is_refused(tmp_path: Path) -> None:
    short = model_manifest.verified_path("blazeface-short")
    shutil.copyfile(short, tmp_path / "model.tflite")
    manifest = _manifest(tmp_path, "model.tflite", model_manifest.sha256_file(short))
    with pytest.raises(ModelError, match="not BlazeFace full"):
        BlazeFaceDetector(BlazeFaceConfig(model="full"), cache_dir=tmp_path, manifest=manifest)


def test_xnnpack_banner_dropped_other_native_stderr_kept(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """LiteRT's INFO banner is journal noise; anything else written to fd 2 survives."""
    import os

    from device.vision.runtime import _XNNPACK_BANNER, _native_stderr_filtered

    with _native_stderr_filtered(_XNNPACK_BANNER):
        os.write(2, _XNNPACK_BANNER + b"\n")
        os.write(2, b"something else\n")
    with ModelRuntime("blazeface-full"):
        pass
    err = capfd.readouterr().err
    assert "XNNPACK delegate" not in err
    assert "something else" in err

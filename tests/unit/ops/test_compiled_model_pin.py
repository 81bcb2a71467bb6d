"""The Edge TPU build of the int8 encoder: refused unless provisioning pinned it, and then
refused when one byte changes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from device.errors import ModelError
from device.ops.model_trust import ModelIdentity
from device.ops.provision import install_model
from device.vision import models as model_manifest

COMPILED = "dlib-resnet-v1-int8-edgetpu"


def test_the_manifest_declares_a_compiled_unpinned_edge_tpu_embedder() -> None:
    spec = model_manifest.get_spec(COMPILED)
    assert spec.source == "compiled" and spec.sha256 == ""
    assert spec.kind == "embedder" and spec.extra["edgetpu"] is True
    assert spec.extra["compiled_from"] == "dlib-resnet-v1-int8"


def test_not_compiled_yet_names_the_script(tmp_path: Path) -> None:
    (tmp_path / (model_manifest.get_spec(COMPILED).path + ".sha256")).write_text("0" * 64 + "\n")
    with pytest.raises(ModelError, match=r"compile-edgetpu\.sh"):
        model_manifest.verified_path(COMPILED, cache_dir=tmp_path)


def test_an_unpinned_compiled_model_is_refused(tmp_path: Path) -> None:
    spec = model_manifest.get_spec(COMPILED)
    (tmp_path / spec.path).write_bytes(b"any bytes: a fake compiled model")
    with pytest.raises(ModelError, match=r"pins no sha256.*compile-edgetpu\.sh"):
        model_manifest.verified_path(COMPILED, cache_dir=tmp_path)


def test_a_pinned_compiled_model_passes_and_one_changed_byte_is_refused(tmp_path: Path) -> None:
    spec = model_manifest.get_spec(COMPILED)
    compiled = tmp_path / "out" / spec.path
    compiled.parent.mkdir()
    data = b"fake edgetpu-custom-op model bytes " * 10
    compiled.write_bytes(data)
    pin = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    installed = install_model(COMPILED, ModelIdentity(COMPILED, pin), cache,
                              source_file=compiled)
    assert (cache / (spec.path + ".sha256")).read_text() == f"{pin}  {spec.path}\n"
    assert model_manifest.verified_path(COMPILED, cache_dir=cache) == installed
    changed = bytearray(data)
    changed[3] ^= 0x20
    installed.write_bytes(bytes(changed))
    with pytest.raises(ModelError, match="has sha256"):
        model_manifest.verified_path(COMPILED, cache_dir=cache)


def test_install_needs_the_compiled_file_and_its_hash(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="--file"):
        install_model(COMPILED, ModelIdentity(COMPILED, "0" * 64), tmp_path)
    other = tmp_path / "x.tflite"
    other.write_bytes(b"not what was compiled")
    with pytest.raises(ModelError, match="refusing it"):
        install_model(COMPILED, ModelIdentity(COMPILED, "0" * 64), tmp_path / "cache",
                      source_file=other)
    assert not (tmp_path / "cache" / model_manifest.get_spec(COMPILED).path).exists()
